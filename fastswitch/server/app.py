"""The OpenAI-compatible HTTP server: /v1/models, /v1/completions, /v1/chat/completions (streaming or not).

Every request becomes one engine request, tagged with its client (the `X-Client-Id` header, else the
body's `user`, else "anonymous") and priority (the body's `priority`, 0 most urgent), so the
engine's policy (fcfs, priority, or vtc's per-client fair share) decides among concurrent clients.
A client that goes away, mid-stream or while waiting for a whole answer, has its request aborted,
which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastswitch.models.sampling import SamplingParams
from fastswitch.server import protocol as p
from fastswitch.server.engine_thread import EngineThread, Subscription
from fastswitch.server.serving_engine import ServingEngine
from fastswitch.server.text_stream import TextStream

CLIENT_ID_HEADER = "x-client-id"
DISCONNECT_POLL_S = 0.5  # how often a non-streaming handler checks that its client is still there


def create_app(serving: ServingEngine, model_id: str | None = None) -> FastAPI:
    model_id = model_id or serving.model_name
    engine_thread = EngineThread(serving.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_thread.start()
        yield
        await asyncio.to_thread(engine_thread.stop)

    app = FastAPI(title="FastSwitch", description="OpenAI-compatible server on the FastSwitch engine",
                  lifespan=lifespan)  # fmt: skip
    app.state.serving, app.state.engine_thread, app.state.model_id = serving, engine_thread, model_id

    @app.exception_handler(p.OpenAIError)
    async def openai_error(request: Request, exc: p.OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(x) for x in first["loc"] if x != "body") or None
        error = p.OpenAIError(f"{param or 'body'}: {first['msg']}", param=param)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = p.OpenAIError(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code, type=kind)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "fastswitch",
                "max_model_len": serving.max_model_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "last_error": engine_thread.last_error}

    @app.get("/stats")
    async def stats() -> dict:
        """The engine's counters (swaps, blocks, latency percentiles), plus the server's own."""
        values = await asyncio.to_thread(serving.engine.stats)
        values.update(num_aborted=engine_thread.num_aborted, num_live_requests=engine_thread.num_live)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}

    @app.post("/v1/completions")
    async def completions(body: p.CompletionRequest, request: Request):
        body.check_supported()
        _check_model(body.model, model_id)
        token_ids = _completion_prompt(serving, body.prompt)
        return await _respond(request, body, token_ids, p.DEFAULT_COMPLETION_MAX_TOKENS, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        body.check_supported()
        _check_model(body.model, model_id)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            token_ids = serving.encode_chat(messages)
        except ValueError as exc:
            raise p.OpenAIError(str(exc), param="messages") from exc
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        return await _respond(request, body, token_ids, p.DEFAULT_CHAT_MAX_TOKENS, chat=True)

    async def _respond(request: Request, body: p.SamplingFields, token_ids: list[int], default_max: int, chat: bool):
        params = _sampling_params(body, len(token_ids), serving.max_model_len, default_max)
        client_id = request.headers.get(CLIENT_ID_HEADER) or body.user or "anonymous"
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        try:
            subscription = await asyncio.to_thread(
                engine_thread.submit, token_ids, params, loop, queue, body.priority, client_id
            )
        except ValueError as exc:
            raise p.OpenAIError(str(exc), param=_param_named_in(str(exc))) from exc
        text = TextStream(serving.decode, body.stop_strings)
        response_id = p.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            events = _sse_events(engine_thread, subscription, queue, text, response_id, model_id, chat,
                                 body.include_usage)  # fmt: skip
            abort_if_live = BackgroundTask(engine_thread.abort, subscription.request_id)
            return StreamingResponse(events, media_type="text/event-stream", background=abort_if_live)
        pieces, finish_reason = [], None
        async for piece, finish_reason in _text_pieces(engine_thread, subscription, queue, text, request):
            pieces.append(piece)
        if finish_reason is None:  # the client left; nobody reads this
            return JSONResponse({}, status_code=499)
        usage = p.usage(subscription.num_prompt_tokens, len(text.token_ids))
        if chat:
            return p.chat_object(response_id, model_id, "".join(pieces), finish_reason, usage)
        return p.completion_object(response_id, model_id, "".join(pieces), finish_reason, usage)

    return app


def _check_model(requested: str, served: str) -> None:
    if requested != served:
        raise p.OpenAIError(f"The model `{requested}` does not exist; this server serves `{served}`", 404,
                            param="model", code="model_not_found")  # fmt: skip


def _completion_prompt(serving: ServingEngine, prompt) -> list[int]:
    if isinstance(prompt, str):
        return serving.encode(prompt)
    if prompt and isinstance(prompt[0], int):
        return list(prompt)
    if len(prompt) == 1:  # a batch of one
        return _completion_prompt(serving, prompt[0])
    raise p.OpenAIError(f"a batch of {len(prompt)} prompts is not supported; send one prompt per request",
                        param="prompt")  # fmt: skip


def _sampling_params(body: p.SamplingFields, num_prompt_tokens: int, max_model_len: int, default_max: int):
    room = max_model_len - num_prompt_tokens
    max_tokens = body.max_tokens if body.max_tokens is not None else min(default_max, room)
    if num_prompt_tokens + max_tokens > max_model_len or room < 1:
        raise p.OpenAIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} in the "
            "completion). Please reduce the prompt or max_tokens.",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            seed=body.seed, stop_token_ids=tuple(body.stop_token_ids), ignore_eos=body.ignore_eos,
        )  # fmt: skip
    except ValueError as exc:
        raise p.OpenAIError(str(exc), param=_param_named_in(str(exc))) from exc


def _param_named_in(message: str) -> str | None:
    """The library's ValueErrors start with `name=value`: that name is the offending field."""
    head = message.split("=", 1)[0]
    return head if "=" in message and head.isidentifier() else None


async def _text_pieces(
    engine_thread: EngineThread, subscription: Subscription, queue: asyncio.Queue, text: TextStream,
    request: Request | None = None,
) -> AsyncIterator[tuple[str, str | None]]:
    """(text piece, finish reason or None) as tokens arrive; aborts the request if the consumer stops early."""
    finished = False
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while not finished:
            try:
                update = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                update = None
            # Checked by the clock, not only when tokens stop: a fast stream never times out.
            if request is not None and loop.time() >= next_check:
                if await request.is_disconnected():
                    return
                next_check = loop.time() + DISCONNECT_POLL_S
            if update is None:
                continue
            if update.error is not None:
                raise p.OpenAIError(f"the engine failed: {update.error}", 500, type="server_error")
            piece = text.push(update.new_token_ids, update.finish_reason)
            finish_reason = update.finish_reason
            if text.stopped and finish_reason is None:
                finish_reason = "stop"  # a stop string: end the request here
                await asyncio.to_thread(engine_thread.abort, subscription.request_id)
            finished = finish_reason is not None
            yield piece, finish_reason
    finally:
        if not finished:
            # Cancelled (client gone) or closed early: free the request's KV without waiting here.
            loop.run_in_executor(None, engine_thread.abort, subscription.request_id)


async def _sse_events(
    engine_thread: EngineThread, subscription: Subscription, queue: asyncio.Queue, text: TextStream,
    response_id: str, model_id: str, chat: bool, include_usage: bool,
) -> AsyncIterator[str]:
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    if chat:
        yield event(p.chat_chunk(response_id, model_id, {"role": "assistant", "content": ""}, None))
    try:
        async for piece, finish_reason in _text_pieces(engine_thread, subscription, queue, text):
            if not piece and finish_reason is None:
                continue
            if chat:
                delta = {"content": piece} if piece else {}
                yield event(p.chat_chunk(response_id, model_id, delta, finish_reason))
            else:
                yield event(p.completion_object(response_id, model_id, piece, finish_reason, None, chunk=True))
    except p.OpenAIError as exc:
        yield event(exc.body())
        return
    if include_usage:
        usage = p.usage(subscription.num_prompt_tokens, len(text.token_ids))
        if chat:
            yield event(p.chat_chunk(response_id, model_id, {}, None, usage, choices=False))
        else:
            yield event({**p.completion_object(response_id, model_id, "", None, usage, chunk=True), "choices": []})
    yield "data: [DONE]\n\n"
