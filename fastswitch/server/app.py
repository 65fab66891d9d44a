"""The OpenAI-compatible HTTP server: /v1/models, /v1/completions, /v1/chat/completions (streaming or not),
plus /metrics (Prometheus), /version, /tokenize, /detokenize, /health and /stats.

Every prompt of a request becomes one engine request (n samples of it share one prefill, see
generation.py), tagged with its client (the `X-Client-Id` header, else the
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
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastswitch.server import protocol as p
from fastswitch.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from fastswitch.server.engine_thread import EngineThread
from fastswitch.server.generation import Generation, sampling_params
from fastswitch.server.info_routes import add_info_routes, check_model, model_card
from fastswitch.server.metrics import add_metrics_route
from fastswitch.server.responses import Shape, sse_events, whole_answer
from fastswitch.server.serving_engine import ServingEngine

log = logging.getLogger(__name__)

CLIENT_ID_HEADER = "x-client-id"
MAX_CLIENT_ID_CHARS = 64  # longer client ids are stored by their digest: the policy keeps one entry per client
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": p.ErrorBody} for status in (400, 404, 413, 500, 503)
}
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}, **ERROR_RESPONSES}


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
        if isinstance(cause, p.FieldError):
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
        return {"object": "list", "data": [model_card(model_id, serving.max_model_len)]}

    add_info_routes(app, serving, model_id, ERROR_RESPONSES)
    add_metrics_route(app, engine_thread)

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
        check_model(body.model, model_id)
        add_special = body.add_special_tokens is not False
        prompts = [await _prompt_ids(serving, prompt, add_special) for prompt in body.prompts()]
        echo = None
        if body.echo:
            texts = zip(body.prompts(), prompts)
            echo = [prompt if isinstance(prompt, str) else serving.decode(ids) for prompt, ids in texts]
        # echo with logprobs shows the prompt's too, as vLLM does
        prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else body.prompt_logprobs
        return await _generate(request, body, prompts, p.DEFAULT_COMPLETION_MAX_TOKENS, False, echo, prompt_logprobs)

    @app.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        check_model(body.model, model_id)
        messages = [m.for_template() for m in body.messages]
        try:
            token_ids = await asyncio.to_thread(
                serving.encode_chat, messages, body.add_generation_prompt, body.continue_final_message,
                body.chat_template_kwargs or {}, bool(body.add_special_tokens),
            )  # fmt: skip
        except ValueError as exc:
            raise p.OpenAIError(str(exc), param="messages") from exc
        return await _generate(request, body, [token_ids], p.DEFAULT_CHAT_MAX_TOKENS, True, None, body.prompt_logprobs)

    async def _generate(request: Request, body: p.CompletionRequest | p.ChatCompletionRequest, prompts: list[list[int]],
                        default_max: int, chat: bool, echo: list[str] | None, prompt_logprobs: int | None):  # fmt: skip
        if body.truncate_prompt_tokens is not None:
            prompts = [ids[-body.truncate_prompt_tokens :] for ids in prompts]
        lens = [len(ids) for ids in prompts]
        params = sampling_params(body, lens, serving.max_model_len, default_max, prompt_logprobs)
        client_id = client_key(request.headers.get(CLIENT_ID_HEADER) or body.user or "anonymous")
        generation = Generation(engine_thread, prompts, params, body.priority, client_id, serving.decode)
        await generation.submit()
        token_text = serving.token_text_fn(body.return_tokens_as_token_ids)
        shape = Shape(
            chat, p.new_id("chatcmpl" if chat else "cmpl"), model_id, token_text, body.logprobs_wanted(), echo,
            body.prompt_logprobs is not None, body.include_usage, body.continuous_usage,
        )  # fmt: skip
        if body.stream:
            return StreamingResponse(sse_events(shape, generation, request), media_type="text/event-stream",
                                     background=BackgroundTask(generation.abort))  # fmt: skip
        async for _ in generation.updates(request):
            pass
        if not generation.finished:  # the client left; nobody reads this
            return OpenAIJSONResponse({}, status_code=499)
        return whole_answer(shape, generation)

    return app


async def _prompt_ids(serving: ServingEngine, prompt: str | list[int], add_special_tokens: bool) -> list[int]:
    """The prompt's token ids, as they are or encoded; the engine checks them (Engine.check_request)."""
    if isinstance(prompt, str):
        return await asyncio.to_thread(serving.encode, prompt, add_special_tokens)
    return list(prompt)
