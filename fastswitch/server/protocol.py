"""The OpenAI wire format: request bodies (validated by pydantic), response objects and error bodies.

The request models hold OpenAI's and vLLM's fields that this server honours. Every other field of
vLLM's request models is in REJECTED with the one value that means "not used" (its default): sent
with another value it is a 400 naming it, never accepted and ignored. A field that neither OpenAI nor
vLLM defines is a 400 too (vLLM accepts such fields with a logged warning; here a typo cannot pass
unnoticed). `null` for an optional field means its default.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, ClassVar, Literal, cast

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


class FieldError(ValueError):
    """A request field the server refuses, raised inside validation; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class LoneSurrogate(FieldError):
    """A request string holds a lone UTF-16 surrogate; `param` is the top-level field that holds it."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} holds a lone UTF-16 surrogate, which is not valid Unicode text", path.split(".", 1)[0]
        )


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


# Fields of OpenAI's and vLLM's request models that this server does not implement, with the values
# that mean "not used" (their defaults): such a value is accepted (there is nothing to honour), any
# other is a 400 naming the field.
_NOT_USED = {
    "use_beam_search": (False,), "length_penalty": (1.0,), "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,), "allowed_token_ids": (), "bad_words": ([],),
    "response_format": ({"type": "text"},), "structured_outputs": (), "guided_json": (), "guided_regex": (),
    "guided_choice": (), "guided_grammar": (), "guided_decoding_backend": (), "guided_whitespace_pattern": (),
    "logits_processors": (), "return_token_ids": (False,), "kv_transfer_params": (), "vllm_xargs": (),
    "cache_salt": (), "request_id": (), "mm_processor_kwargs": (), "store": (False,), "metadata": (),
    "service_tier": ("auto",), "prediction": (), "safety_identifier": (), "prompt_cache_key": (),
}  # fmt: skip
_CHAT_NOT_USED = {
    **_NOT_USED, "tools": ([],), "tool_choice": ("none",), "parallel_tool_calls": (True, False), "functions": ([],),
    "function_call": ("none",), "documents": (), "chat_template": (), "echo": (False,), "reasoning_effort": (),
    "include_reasoning": (True,), "modalities": (["text"],), "audio": (), "web_search_options": (),
    "verbosity": (), "structural_tag": (),
}  # fmt: skip
_COMPLETION_NOT_USED = {**_NOT_USED, "suffix": ("",), "prompt_embeds": ()}
REJECTED = {"completions": _COMPLETION_NOT_USED, "chat": _CHAT_NOT_USED}  # for the README's table and tests


def _without_nulls_and_unused(data, model: type[BaseModel], not_used: dict) -> Any:
    """Drops `null` fields (their defaults apply) and not-used fields at their defaults; a FieldError
    for any other field the model does not declare."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, value in data.items():
        if value is None:
            continue
        if name not in model.model_fields:
            if name not in not_used:
                raise FieldError(f"{name}: unknown field; this server refuses fields it does not implement", name)
            if value not in not_used[name]:
                allowed = " or ".join(json.dumps(v) for v in not_used[name]) or "null"
                raise FieldError(
                    f"{name}={json.dumps(value)[:200]} is not supported by this server; only {allowed}", name
                )
            continue
        kept[name] = value
    return kept


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: every chunk carries the usage so far

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class SamplingFields(BaseModel):
    """Fields shared by both endpoints (SamplingParams' meanings; vLLM's extras at the end)."""

    model_config = ConfigDict(extra="allow")  # extras are checked against REJECTED before validation
    NOT_USED: ClassVar[dict] = _NOT_USED

    model: str | None = None  # may be omitted: one model is served
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    best_of: int | None = None  # honoured only as n (the n answers are all returned)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None  # the client id, unless an X-Client-Id header gives one
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None  # token id (a string, as JSON keys are) -> bias
    # vLLM's extras.
    priority: int = 0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)  # keep only the prompt's last k tokens
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:<id>"
    add_special_tokens: bool | None = None  # default: True for a prompt, False for a chat (its template holds them)

    @model_validator(mode="before")
    @classmethod
    def _valid_fields(cls, data):
        where = lone_surrogate_path(data)
        if where is not None:
            raise LoneSurrogate(where)
        return _without_nulls_and_unused(data, cls, cls.NOT_USED)

    @model_validator(mode="after")
    def _consistent(self):
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options: only allowed when stream is true", "stream_options")
        if self.prompt_logprobs is not None and self.stream:
            raise FieldError("prompt_logprobs: not available when stream is true (as in vLLM)", "prompt_logprobs")
        if self.best_of is not None and self.best_of != self.n:
            raise FieldError(f"best_of={self.best_of} is not supported; only best_of == n ({self.n})", "best_of")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.include_usage and self.stream_options.continuous_usage_stats


class CompletionRequest(SamplingFields):
    NOT_USED: ClassVar[dict] = _COMPLETION_NOT_USED

    prompt: str | list[int] | list[str | list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _echo_streamed(self):
        if self.echo and self.logprobs is not None and self.stream:
            raise FieldError("echo: with logprobs, only without stream (prompt logprobs are not streamed)", "echo")
        return self

    def logprobs_wanted(self) -> int | None:
        """The number of top logprobs per output token the response shows, None without logprobs."""
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The batch: a string, a list of token ids, or a list of either."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise OpenAIError("prompt: an empty list holds no prompt", param="prompt")
        if isinstance(prompt[0], int):
            return [prompt]  # one list of token ids
        return cast("list[str | list[int]]", list(prompt))


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None  # None: an assistant turn that made tool calls only
    name: str | None = None
    tool_call_id: str | None = None  # a tool's answer names the call it answers
    tool_calls: list[dict] | None = None

    def text(self) -> str:
        """The message's text; content parts other than text (images, audio) are refused."""
        if self.content is None:
            if self.role != "assistant":
                raise OpenAIError(f"content: null is only allowed for an assistant message, not {self.role!r}",
                                  param="messages")  # fmt: skip
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(f"content part of type {part.get('type')!r} is not supported; only text is",
                                  param="messages")  # fmt: skip
            parts.append(part["text"])
        return "".join(parts)

    def for_template(self) -> dict:
        """The message as a chat template reads it."""
        message = {"role": self.role, "content": self.text()}
        for name in ("name", "tool_call_id", "tool_calls"):
            if getattr(self, name) is not None:
                message[name] = getattr(self, name)
        return message


class ChatCompletionRequest(SamplingFields):
    NOT_USED: ClassVar[dict] = _CHAT_NOT_USED

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_consistent(self):
        if not self.messages:
            raise FieldError("messages must hold at least one message", "messages")
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs: only allowed when logprobs is true", "top_logprobs")
        if self.continue_final_message and self.add_generation_prompt:
            raise FieldError("continue_final_message: needs add_generation_prompt false", "continue_final_message")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise FieldError(
                "continue_final_message: the last message must be the assistant's", "continue_final_message"
            )
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


def completion_object(
    request_id: str, model: str, choices: list[dict], usage_: dict | None, chunk: bool = False
) -> dict:
    """A /v1/completions answer, or one of its stream's chunks (which carry usage only when asked)."""
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body


def chat_object(request_id: str, model: str, choices: list[dict], usage_: dict | None, chunk: bool = False) -> dict:
    """A /v1/chat/completions answer, or one of its stream's chunks."""
    kind = "chat.completion.chunk" if chunk else "chat.completion"
    body = {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body
