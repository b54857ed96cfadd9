"""OpenAI-shaped error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_bytes(
    status: int, message: str, *, code: str | None = None, param: str | None = None,
    type_: str | None = None,
) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or _TYPES.get(status, "api_error"),
                "param": param,
                "code": code,
            }
        }
    )


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None,
    headers: dict[str, str] | None = None, type_: str | None = None,
) -> Response:
    return Response(
        error_bytes(status, message, code=code, param=param, type_=type_),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _loc_to_param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


async def _validation_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid body"}
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return error_response(400, message, code="invalid_value", param=param)


async def _http_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        exc.status_code, str(exc.detail), code=_TYPES.get(exc.status_code),
        headers=dict(exc.headers or {}),
    )


async def _unhandled_handler(_: Request, exc: Exception) -> Response:
    return error_response(500, "internal error in vllm-wrapper", code="internal_error")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
