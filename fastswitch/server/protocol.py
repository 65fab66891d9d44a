"""The OpenAI wire format: request bodies (validated by pydantic), response objects and error bodies.

Only what the engine can honour is accepted: one choice (n=1), no logprobs, no echo, no penalties.
Anything else is refused with a 400 that names the field, as OpenAI does, rather than silently
ignored. vLLM's extra fields are accepted too: `priority` (0 most urgent), `top_k`, `ignore_eos`,
`stop_token_ids`.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_MAX_TOKENS = 256  # OpenAI runs to the context's end; on a CPU that is minutes, so cap it


class OpenAIError(Exception):
    """An error the client caused (or a missing route/model), sent as OpenAI's error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.status, self.param, self.type, self.code = message, status, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error body: every 4xx and 5xx answer of this server has this shape."""

    error: ErrorDetail


class LoneSurrogate(ValueError):
    """A request string holds a lone UTF-16 surrogate; `param` is the top-level field that holds it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} holds a lone UTF-16 surrogate, which is not valid Unicode text")
        self.param = path.split(".", 1)[0]


def lone_surrogate_path(value, path: str = "") -> str | None:
    """Where in a parsed JSON value a string holds a lone UTF-16 surrogate (JSON's "\\ud800" escapes
    decode to one), which no UTF-8 text can hold; None when there is none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and lone_surrogate_path(key) is not None:
            return f"{path}.<key>" if path else "<key>"
        found = lone_surrogate_path(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    logprobs: bool | int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's extras.
    priority: int = 0
    top_k: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        where = lone_surrogate_path(data)
        if where is not None:
            raise LoneSurrogate(where)
        return data

    def check_supported(self) -> None:
        if self.n != 1:
            raise OpenAIError(f"n={self.n} is not supported; this server returns exactly one choice (n=1)", param="n")
        if self.logprobs not in (None, False, 0):
            raise OpenAIError("logprobs are not supported by this server", param="logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise OpenAIError(f"{name}={getattr(self, name)} is not supported; only 0 is", param=name)

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(not s for s in stops):
            raise OpenAIError("stop strings must not be empty", param="stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise OpenAIError("echo is not supported by this server", param="echo")
        if self.suffix:
            raise OpenAIError("suffix is not supported by this server", param="suffix")
        if self.best_of not in (None, 1):
            raise OpenAIError(f"best_of={self.best_of} is not supported; only 1 is", param="best_of")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]

    def text(self) -> str:
        """The message's text; content parts other than text (images, audio) are refused."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(f"content part of type {part.get('type')!r} is not supported; only text is",
                                  param="messages")  # fmt: skip
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if not self.messages:
            raise OpenAIError("messages must hold at least one message", param="messages")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


def completion_object(request_id: str, model: str, text: str, finish_reason: str | None, usage_: dict | None,
                      chunk: bool = False) -> dict:  # fmt: skip
    body = {
        "id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }  # fmt: skip
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body


def chat_object(request_id: str, model: str, text: str, finish_reason: str | None, usage_: dict) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": usage_,
    }  # fmt: skip


def chat_chunk(request_id: str, model: str, delta: dict, finish_reason: str | None, usage_: dict | None = None,
               choices: bool = True) -> dict:  # fmt: skip
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}] if choices else []}  # fmt: skip
    if usage_ is not None:
        body["usage"] = usage_
    return body
