"""vLLM's utility endpoints: /version, /tokenize, /detokenize and /v1/models/{id}, in vLLM's shapes."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from fastswitch.server import protocol as p
from fastswitch.server.serving_engine import ServingEngine


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None  # a plain prompt ...
    messages: list[p.ChatMessage] | None = None  # ... or a chat, rendered by the model's template
    add_special_tokens: bool | None = None  # default: True for a prompt, False for a chat
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int] = Field(min_length=0)


def model_card(model_id: str, max_model_len: int) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "fastswitch", "max_model_len": max_model_len}


def check_model(requested: str | None, served: str) -> None:
    """A request may name the served model or none (one model is served); another name is a 404."""
    if requested is not None and requested != served:
        raise p.OpenAIError(f"The model `{requested}` does not exist; this server serves `{served}`", 404,
                            param="model", code="model_not_found")  # fmt: skip


def add_info_routes(app: FastAPI, serving: ServingEngine, model_id: str, responses: dict) -> None:

    @app.get("/version", responses=responses)
    async def server_version() -> dict:
        try:
            return {"version": version("fastswitch")}
        except PackageNotFoundError:  # run from a source tree that was never installed
            return {"version": "unknown"}

    @app.get("/v1/models/{model:path}", responses=responses)
    async def model(model: str) -> dict:
        if model != model_id:
            raise p.OpenAIError(f"The model `{model}` does not exist", 404, param="model", type="invalid_request_error",
                                code="model_not_found")  # fmt: skip
        return model_card(model_id, serving.max_model_len)

    @app.post("/tokenize", responses=responses)
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model, model_id)
        if (body.prompt is None) == (body.messages is None):
            raise p.OpenAIError("give exactly one of prompt and messages", param="prompt")
        if body.prompt is not None:
            tokens = await asyncio.to_thread(serving.encode, body.prompt, body.add_special_tokens is not False)
        else:
            assert body.messages is not None  # exactly one of prompt and messages, checked above
            messages = [m.for_template() for m in body.messages]
            try:
                tokens = await asyncio.to_thread(serving.encode_chat, messages, body.add_generation_prompt, False, None,
                                                 bool(body.add_special_tokens))  # fmt: skip
            except ValueError as exc:
                raise p.OpenAIError(str(exc), param="messages") from exc
        return {"count": len(tokens), "max_model_len": serving.max_model_len, "tokens": tokens}

    @app.post("/detokenize", responses=responses)
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model, model_id)
        vocab = serving.engine.vocab_size
        bad = [t for t in body.tokens if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise p.OpenAIError(f"tokens {bad[:5]} lie outside the vocabulary", param="tokens")
        return {"prompt": await asyncio.to_thread(serving.decode, body.tokens)}
