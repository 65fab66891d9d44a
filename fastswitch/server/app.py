"""The OpenAI-compatible HTTP server: /v1/models, /v1/completions, /v1/chat/completions (streaming or not).

Every request becomes one engine request, tagged with its client (the `X-Client-Id` header, else the
body's `user`, else "anonymous"; an id longer than MAX_CLIENT_ID_CHARS is kept as its SHA-256) and
priority (the body's `priority`, 0 most urgent), so the engine's policy (fcfs, priority, or vtc's
per-client fair share) decides among concurrent clients.

A request is validated completely (fields, model, stop strings, Unicode, tokenization, sampling
values, context length) before it is handed to the engine, so a request answered 4xx never runs.
The event loop never waits for the engine: submissions and aborts go through the engine thread's
inbox, /health and /stats read what that thread publishes, and tokenization and chat templating
run on worker threads. A client that goes away, mid-stream or while waiting for a whole answer, is
noticed by its `http.disconnect` event and has its request aborted, which frees its KV blocks.
Every error is OpenAI's JSON error body with its status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastswitch.models.sampling import SamplingParams
from fastswitch.server import protocol as p
from fastswitch.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from fastswitch.server.engine_thread import EngineFailed, EngineThread, Subscription
from fastswitch.server.serving_engine import ServingEngine
from fastswitch.server.text_stream import TextStream

log = logging.getLogger(__name__)

CLIENT_ID_HEADER = "x-client-id"
MAX_CLIENT_ID_CHARS = 64  # longer client ids are stored by their digest: the policy keeps one entry per client
ERROR_RESPONSES = {status: {"model": p.ErrorBody} for status in (400, 404, 413, 500, 503)}
GENERATION_RESPONSES = {200: {"content": {"text/event-stream": {}}}, **ERROR_RESPONSES}


class OpenAIJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so any text (a lone surrogate echoed in a message) always encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def client_key(client_id: str) -> str:
    """The id the engine's policy keys the client by: the id itself, or the SHA-256 of a long one."""
    if len(client_id) <= MAX_CLIENT_ID_CHARS:
        return client_id
    return "sha256:" + hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


def create_app(serving: ServingEngine, model_id: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:  # fmt: skip
    """max_body_bytes: larger request bodies get a 413 before they are read."""
    BodySizeLimit.check(max_body_bytes)
    model_id = model_id or serving.model_name
    engine_thread = EngineThread(serving.engine)

    running = 0  # lifespans entered and not left: a test client may nest one inside a server's

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal running
        if running == 0:
            engine_thread.start()  # RuntimeError once stopped: an app serves one engine's life
        running += 1
        try:
            yield
        finally:
            running -= 1
            if running == 0:
                await asyncio.to_thread(engine_thread.stop)

    app = FastAPI(title="FastSwitch", description="OpenAI-compatible server on the FastSwitch engine",
                  lifespan=lifespan, default_response_class=OpenAIJSONResponse)  # fmt: skip
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    app.state.serving, app.state.engine_thread, app.state.model_id = serving, engine_thread, model_id

    def error_response(error: p.OpenAIError) -> OpenAIJSONResponse:
        return OpenAIJSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(p.OpenAIError)
    async def openai_error(request: Request, exc: p.OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, p.LoneSurrogate):
            return error_response(p.OpenAIError(str(cause), param=cause.param))
        param = ".".join(str(x) for x in first["loc"] if x != "body") or None
        return error_response(p.OpenAIError(f"{param or 'body'}: {first['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        code = "request_too_large" if exc.status_code == 413 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(p.OpenAIError(message, exc.status_code, type=kind, code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(p.OpenAIError(f"internal error: {type(exc).__name__}", 500, type="server_error"))

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def models() -> dict:
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "fastswitch",
                "max_model_len": serving.max_model_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/health", responses=ERROR_RESPONSES)
    async def health():
        """200 while the engine can serve; 503, with the reason, once it cannot go on."""
        if engine_thread.failure is not None:
            error = p.OpenAIError(f"the engine failed: {engine_thread.failure}", 503, type="server_error",
                                  code="engine_failed")  # fmt: skip
            return OpenAIJSONResponse({"status": "failed", **error.body()}, status_code=503)
        return {"status": "ok", "last_error": engine_thread.last_error}

    @app.get("/stats", responses=ERROR_RESPONSES)
    async def stats() -> dict:
        """The engine's counters as last published (swaps, blocks, latency percentiles), plus the server's."""
        values = {**engine_thread.stats, "num_aborted": engine_thread.num_aborted,
                  "num_live_requests": engine_thread.num_live}  # fmt: skip
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}

    @app.post("/v1/completions", responses=GENERATION_RESPONSES)
    async def completions(body: p.CompletionRequest, request: Request):
        body.check_supported()
        _check_model(body.model, model_id)
        stops = body.stop_strings
        token_ids = await _completion_prompt(serving, body.prompt)
        return await _respond(request, body, token_ids, stops, p.DEFAULT_COMPLETION_MAX_TOKENS, chat=False)

    @app.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        body.check_supported()
        _check_model(body.model, model_id)
        stops = body.stop_strings
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            token_ids = await asyncio.to_thread(serving.encode_chat, messages)
        except ValueError as exc:
            raise p.OpenAIError(str(exc), param="messages") from exc
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        return await _respond(request, body, token_ids, stops, p.DEFAULT_CHAT_MAX_TOKENS, chat=True)

    async def _respond(request: Request, body: p.SamplingFields, token_ids: list[int], stops: list[str],
                       default_max: int, chat: bool):  # fmt: skip
        params = _sampling_params(body, len(token_ids), serving.max_model_len, default_max)
        client_id = client_key(request.headers.get(CLIENT_ID_HEADER) or body.user or "anonymous")
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        submitted = engine_thread.submit(token_ids, params, loop, queue, body.priority, client_id)
        try:
            subscription = await asyncio.wrap_future(submitted)
        except ValueError as exc:
            raise p.OpenAIError(str(exc), param=_param_named_in(str(exc))) from exc
        except EngineFailed as exc:
            raise p.OpenAIError(f"the engine failed: {exc}", 503, type="server_error", code="engine_failed") from exc
        except asyncio.CancelledError:  # the client left while the engine thread was adding it
            _abort_once_added(engine_thread, submitted)
            raise
        text = TextStream(serving.decode, stops)
        response_id = p.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            events = _sse_events(engine_thread, subscription, queue, text, response_id, model_id, chat,
                                 body.include_usage, request)  # fmt: skip
            abort_if_live = BackgroundTask(engine_thread.abort, subscription.request_id)
            return StreamingResponse(events, media_type="text/event-stream", background=abort_if_live)
        pieces, finish_reason = [], None
        async for piece, finish_reason in _text_pieces(engine_thread, subscription, queue, text, request):
            pieces.append(piece)
        if finish_reason is None:  # the client left; nobody reads this
            return OpenAIJSONResponse({}, status_code=499)
        usage = p.usage(subscription.num_prompt_tokens, len(text.token_ids))
        if chat:
            return p.chat_object(response_id, model_id, "".join(pieces), finish_reason, usage)
        return p.completion_object(response_id, model_id, "".join(pieces), finish_reason, usage)

    return app


def _check_model(requested: str, served: str) -> None:
    if requested != served:
        raise p.OpenAIError(f"The model `{requested}` does not exist; this server serves `{served}`", 404,
                            param="model", code="model_not_found")  # fmt: skip


async def _completion_prompt(serving: ServingEngine, prompt) -> list[int]:
    if isinstance(prompt, str):
        token_ids = await asyncio.to_thread(serving.encode, prompt)
        if not token_ids:
            raise p.OpenAIError("prompt is empty: it encodes to no tokens", param="prompt")
        return token_ids
    if prompt and isinstance(prompt[0], int):
        return list(prompt)
    if len(prompt) == 1:  # a batch of one
        return await _completion_prompt(serving, prompt[0])
    raise p.OpenAIError(f"a batch of {len(prompt)} prompts is not supported; send one prompt per request",
                        param="prompt")  # fmt: skip


def _sampling_params(body: p.SamplingFields, num_prompt_tokens: int, max_model_len: int, default_max: int):
    """vLLM's check: prompt + max_tokens must fit max_model_len; an omitted max_tokens is the endpoint's
    default cut to the room the prompt leaves."""
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


def _abort_once_added(engine_thread: EngineThread, submitted: Future) -> None:
    def abort(future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            engine_thread.abort(future.result().request_id)

    submitted.add_done_callback(abort)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next ASGI message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _text_pieces(
    engine_thread: EngineThread, subscription: Subscription, queue: asyncio.Queue, text: TextStream,
    request: Request,
) -> AsyncIterator[tuple[str, str | None]]:
    """(text piece, finish reason or None) as tokens arrive; stops, and aborts the request, when the
    client disconnects or the consumer stops early."""
    finished = False
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        while not finished:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return
            update = getter.result()
            if update.error is not None:
                raise p.OpenAIError(f"the engine failed this request: {update.error}", 500, type="server_error")
            piece = text.push(update.new_token_ids, update.finish_reason)
            finish_reason = update.finish_reason
            if text.stopped and finish_reason is None:
                finish_reason = "stop"  # a stop string: end the request here
                engine_thread.abort(subscription.request_id)
            finished = finish_reason is not None
            yield piece, finish_reason
    finally:
        gone.cancel()
        if not finished:  # the client left, or the consumer stopped early: free the request's KV
            engine_thread.abort(subscription.request_id)


async def _sse_events(
    engine_thread: EngineThread, subscription: Subscription, queue: asyncio.Queue, text: TextStream,
    response_id: str, model_id: str, chat: bool, include_usage: bool, request: Request,
) -> AsyncIterator[str]:
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=True)}\n\n"

    if chat:
        yield event(p.chat_chunk(response_id, model_id, {"role": "assistant", "content": ""}, None))
    finish_reason = None
    try:
        async for piece, finish_reason in _text_pieces(engine_thread, subscription, queue, text, request):
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
    if finish_reason is None:  # the client left
        return
    if include_usage:
        usage = p.usage(subscription.num_prompt_tokens, len(text.token_ids))
        if chat:
            yield event(p.chat_chunk(response_id, model_id, {}, None, usage, choices=False))
        else:
            yield event({**p.completion_object(response_id, model_id, "", None, usage, chunk=True), "choices": []})
    yield "data: [DONE]\n\n"
