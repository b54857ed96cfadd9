"""Token usage per API key and model, from vLLM's own `usage` numbers.

A non-streamed answer carries `usage`; a stream carries it in a last chunk (`"choices":[]`) only when
the request asks for it (`stream_options.include_usage`). The wrapper asks for it on every stream it
counts and drops that chunk again for a client that did not ask, so the client sees vLLM's stream
unchanged."""

from __future__ import annotations

from typing import Any

import orjson

from . import metrics
from .requestinfo import RequestInfo

# Routes whose answers carry vLLM's usage; the streamed ones get include_usage.
COUNTED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
STREAMED = frozenset({"/v1/chat/completions", "/v1/completions"})
_USAGE_CHUNK = b'"choices":[]'


def prepare(info: RequestInfo, path: str, parsed: dict[str, Any]) -> bytes:
    """Note the request's model and count its usage; returns the body to send upstream (with
    include_usage added to a stream that lacks it)."""
    if path not in COUNTED:
        return info.body
    info.counted = True
    model = parsed.get("model")
    if isinstance(model, str):
        info.model = model
    options = parsed.get("stream_options")
    if (path in STREAMED and parsed.get("stream") is True and (options is None or isinstance(options, dict))
            and not (options or {}).get("include_usage")):
        parsed["stream_options"] = {**(options or {}), "include_usage": True}
        info.strip_usage = True
        return orjson.dumps(parsed)
    return info.body


def record(info: RequestInfo, answer: Any) -> None:
    """Take prompt and completion tokens (and the model, when the request named none) from an answer."""
    if not isinstance(answer, dict):
        return
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        info.prompt_tokens += prompt
        info.completion_tokens += completion or 0
    if info.model is None and isinstance(answer.get("model"), str):
        info.model = answer["model"]


def record_body(info: RequestInfo, body: bytes) -> None:
    try:
        record(info, orjson.loads(body))
    except orjson.JSONDecodeError:
        pass


def scan_stream(info: RequestInfo, data: bytes) -> tuple[bytes, bytes]:
    """Split DATA (pending bytes plus a new chunk) into the complete SSE events to pass on and the
    incomplete rest; records the usage chunk and leaves it out when the client did not ask for it."""
    if _USAGE_CHUNK not in data and data.endswith(b"\n\n"):
        return data, b""
    end = data.rfind(b"\n\n")
    if end < 0:
        return b"", data
    events, rest = data[:end + 2], data[end + 2:]
    if _USAGE_CHUNK not in events:
        return events, rest
    kept = []
    for event in events.split(b"\n\n")[:-1]:
        if _USAGE_CHUNK in event and event.startswith(b"data: {"):
            try:
                record(info, orjson.loads(event[6:]))
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            if info.strip_usage:
                continue
        kept.append(event)
    return b"".join(e + b"\n\n" for e in kept), rest


def observe(info: RequestInfo) -> None:
    """Count the finished request's usage under its key and model."""
    if info.counted and info.status is not None and info.status < 400:
        metrics.observe_usage(info.key_name, info.model or "-", info.prompt_tokens, info.completion_tokens)
