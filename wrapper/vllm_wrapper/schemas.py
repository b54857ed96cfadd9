"""Request/response models for /chat and the OpenAPI description of the
passthrough bodies (those are forwarded unchanged; vLLM validates them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (lone surrogate escape found)") from None
        return value


class ChatRequest(BaseModel):
    """The guide's simple form; omitted fields take the configured defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Defaults to VLLM_DEFAULT_MAX_TOKENS."
    )
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description="Defaults to VLLM_DEFAULT_TEMPERATURE."
    )
    stream: bool = False
    model: str | None = Field(default=None, description="Defaults to the served model.")

    @field_validator("model")
    @classmethod
    def _model_encodable(cls, value: str | None) -> str | None:
        return None if value is None else ChatMessage._encodable(value)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str


def _messages(*roles: str) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": list(roles)},
                "content": {"type": "string"},
            },
        },
    }


_MESSAGES = _messages("system", "user", "assistant")
# The Messages API takes the system prompt as a field of its own, not as a message.
_ANTHROPIC_MESSAGES = _messages("user", "assistant")
_COMMON: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "stream": {"type": "boolean"},
}
_CHAT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {"messages": _MESSAGES, **_COMMON},
}
_COMPLETION_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {"prompt": {"type": "string"}, **_COMMON},
}
PASSTHROUGH_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": _CHAT_BODY,
    "/v1/completions": _COMPLETION_BODY,
    # vLLM's render routes (the fleet edge's vllm-router asks them for a prompt's token
    # ids): the same body as the generating route, answered without generating.
    "/v1/chat/completions/render": _CHAT_BODY,
    "/v1/completions/render": _COMPLETION_BODY,
    "/v1/embeddings": {
        "type": "object",
        "required": ["input"],
        "properties": {"input": {"type": "string"}, "model": {"type": "string"}},
    },
    "/v1/responses": {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"type": "string"},
            "model": {"type": "string"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "temperature": _COMMON["temperature"],
            "stream": {"type": "boolean"},
            "background": {"type": "boolean"},
        },
    },
    "/tokenize": {
        "type": "object",
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string"}, "model": {"type": "string"}},
    },
    "/detokenize": {
        "type": "object",
        "required": ["tokens"],
        "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                       "model": {"type": "string"}},
    },
    # vLLM's Anthropic-compatible Messages API (a generative model only).
    "/v1/messages": {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "properties": {"messages": _ANTHROPIC_MESSAGES, **_COMMON},
    },
    "/v1/messages/count_tokens": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {"messages": _ANTHROPIC_MESSAGES, "model": {"type": "string"}},
    },
}
# vLLM names a response resp_<hex>, or after the request's own request_id: one
# path segment that is neither "." nor "..".
RESPONSE_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._:@+=-]*$"


def passthrough_openapi(path: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PASSTHROUGH_BODIES[path]}},
        }
    }
