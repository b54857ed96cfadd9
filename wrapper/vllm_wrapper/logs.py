"""JSON logs on stdout, one object per line. Access-log records carry only
request metadata: never the body (prompt) nor the API key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        if message:
            data["msg"] = message
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def lean_records() -> None:
    """Stop LogRecords collecting what JsonFormatter never writes: the caller's
    file and line, thread, process and process name. That is a stack walk and
    a few lookups saved per access-log line (logging HOWTO, "Optimization")."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_config(level: str) -> dict[str, Any]:
    """dictConfig for our loggers and uvicorn's (whose access log we replace)."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
        },
        "loggers": {
            "vllm_wrapper": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn": {"handlers": ["stdout"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def setup(level: str) -> None:
    import logging.config

    logging.config.dictConfig(log_config(level))


access_log = logging.getLogger("vllm_wrapper.access")
