"""The OpenAI wire format: request models (validated strictly), error bodies, response pieces.

Requests follow the OpenAI API with vLLM's extra sampling fields (``top_k``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``); unknown fields are ignored, as OpenAI-compatible servers
do. Types are strict: ``"max_tokens": "5"`` is a 400 naming ``max_tokens``, not a 5. Fields we
do not implement are rejected when set to anything but their default, never silently ignored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "StreamOptions",
    "error_body",
    "parse_request",
]

Int = Annotated[int, Field(strict=True)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
TokenIds = list[NonNegInt]


class ApiError(Exception):
    """An error the client caused (or a server state it must know of), as an HTTP answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type, code, headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Base):
    include_usage: bool = False


class _Sampling(_Base):
    """The fields completions and chat share."""

    model: str
    temperature: Annotated[float, Field(ge=0.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: PosInt = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, lt=2**64)] | None = None
    user: str | None = None
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    # vLLM's extra sampling parameters
    top_k: Annotated[int, Field(strict=True, ge=-1)] = 0
    min_tokens: NonNegInt = 0
    ignore_eos: bool = False
    stop_token_ids: TokenIds | None = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a string, a list of token ids, or a list of
    either (a batch: choice ``i * n + j`` is sample ``j`` of prompt ``i``)."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    max_tokens: PosInt | None = 16
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None
    best_of: Literal[1] | None = None


class TextPart(_Base):
    type: Literal["text"]
    text: str


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: the messages go through the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PosInt | None = None
    max_completion_tokens: PosInt | None = None
    logprobs: Literal[False] = False
    top_logprobs: None = None
    tools: None = None
    response_format: None = None

    def max_new_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


_UNSUPPORTED = {
    "echo": "echo is not supported",
    "logprobs": "logprobs are not supported yet",
    "top_logprobs": "logprobs are not supported yet",
    "suffix": "suffix is not supported",
    "best_of": "best_of other than 1 is not supported",
    "presence_penalty": "presence_penalty is not supported (must be 0)",
    "frequency_penalty": "frequency_penalty is not supported (must be 0)",
    "logit_bias": "logit_bias is not supported",
    "tools": "tools are not supported",
    "response_format": "response_format is not supported",
}


def parse_request(model: type[_Sampling], body: bytes) -> Any:
    """``body`` (JSON) as ``model``; :class:`ApiError` 400 naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise ApiError(400, f"malformed JSON body: {err['msg']}") from None
        if err["type"] == "model_type":
            raise ApiError(400, "the request body must be a JSON object") from None
        field = _field_path(err["loc"])
        top = field.split(".")[0] if field else None
        if top in _UNSUPPORTED:
            raise ApiError(400, _UNSUPPORTED[top], param=top) from None
        shape = _SHAPES.get(field.rsplit(".", 1)[-1] if field else "")
        if shape is not None:
            raise ApiError(400, f"{field}: {shape}", param=field) from None
        got = err.get("input")
        shown = repr(got) if len(repr(got)) < 60 else type(got).__name__
        raise ApiError(400, f"{field or 'body'}: {err['msg']} (got {shown})", param=field) from None


_SHAPES = {
    "prompt": "must be a string, a list of token ids (ints >= 0), or a non-empty list of either",
    "stop": "must be a string or a list of strings",
    "content": "must be a string or a list of {'type': 'text', 'text': ...} parts",
}
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after"}


def _field_path(loc: tuple[int | str, ...]) -> str | None:
    """``("messages", 0, "role")`` -> ``"messages.0.role"``; a union's branch labels
    (``"str"``, ``"list[int]"``) and what follows them are left out."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and (p in _TYPE_NAMES or "[" in p or "-" in p):
            break
        parts.append(str(p))
    return ".".join(parts) or None


def now_s() -> int:
    return int(time.time())
