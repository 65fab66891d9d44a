"""One generation request of the HTTP server: its prompts as engine requests, and the choices they fill.

Each prompt is one engine request with SamplingParams.n samples (the prompt is prefilled once, its
KV copied for the others); choice i * n + j is sample j of prompt i, as in vLLM. The engine thread
sends every sample's tokens, logprobs and, at the end, its final text (cut at a stop string by the
engine) to one asyncio queue; `updates` turns them into text pieces (TextStream) per choice until
every choice is done, and aborts the requests when the client goes away first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from fastswitch.models.sampling import SamplingParams
from fastswitch.request_check import ContextTooLong
from fastswitch.server import protocol as p
from fastswitch.server.engine_thread import EngineFailed, EngineThread, TokenUpdate
from fastswitch.server.text_stream import TextStream


@dataclass
class Choice:
    index: int
    prompt: int  # the prompt's place in the batch
    text: TextStream
    logprobs: list = field(default_factory=list)  # the output tokens' {token id: Logprob}
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list | None = None


def sampling_params(body: p.CompletionRequest | p.ChatCompletionRequest, prompt_lens: list[int], max_model_len: int,
                    default_max: int, prompt_logprobs: int | None) -> SamplingParams:  # fmt: skip
    """An omitted max_tokens is the endpoint's default cut to the room the longest prompt leaves (at
    least 1: the engine then refuses a prompt that leaves none, see context_length_error)."""
    room = max_model_len - max(prompt_lens)
    max_tokens = body.max_tokens if body.max_tokens is not None else max(1, min(default_max, room))
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
            min_p=body.min_p, seed=body.seed, stop_token_ids=tuple(body.stop_token_ids), ignore_eos=body.ignore_eos,
            n=body.n, stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            include_stop_str_in_output=body.include_stop_str_in_output,
            min_tokens=body.min_tokens, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, repetition_penalty=body.repetition_penalty,
            # SamplingParams reads the JSON's string keys as token ids.
            logit_bias=cast("Mapping[int, float] | None", body.logit_bias),
            logprobs=body.logprobs_wanted(), prompt_logprobs=prompt_logprobs,
        )  # fmt: skip
    except ValueError as exc:
        raise p.OpenAIError(str(exc), param=param_named_in(str(exc))) from exc


def context_length_error(exc: ContextTooLong) -> p.OpenAIError:
    """vLLM's answer to a prompt plus max_tokens beyond the context the engine serves."""
    total = exc.num_prompt_tokens + exc.num_output_tokens
    return p.OpenAIError(
        f"This model's maximum context length is {exc.limit} tokens. However, you requested {total} tokens "
        f"({exc.num_prompt_tokens} in the prompt, {exc.num_output_tokens} in the completion). Please reduce the "
        "prompt or max_tokens.",
        param="max_tokens", code="context_length_exceeded",
    )  # fmt: skip


def param_named_in(message: str) -> str | None:
    """The library's ValueErrors start with the offending field's name (`name=value ...`, `name ...`)."""
    head = message.replace("=", " ").split(" ", 1)[0]
    return head if head.isidentifier() else None


class Generation:
    def __init__(self, engine_thread: EngineThread, prompts: list[list[int]], params: SamplingParams,
                 priority: int, client_id: str, decode) -> None:  # fmt: skip
        self.engine_thread = engine_thread
        self.prompts = prompts
        self.params = params
        self.priority, self.client_id = priority, client_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices = [Choice(i * params.n + j, i, TextStream(decode, params.stop))
                        for i in range(len(prompts)) for j in range(params.n)]  # fmt: skip
        self.request_ids: list[str] = []  # the engine requests, in prompt order
        self._prompt_of: dict[str, int] = {}
        self.finished = False

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(choice.text.token_ids) for choice in self.choices)

    def usage(self) -> dict:
        return p.usage(self.num_prompt_tokens, self.num_completion_tokens)

    async def submit(self) -> None:
        """Hands every prompt to the engine thread; the engine's ValueError (or its failure) for any of
        them aborts those already added and becomes the error answer."""
        loop = asyncio.get_running_loop()
        futures = [self.engine_thread.submit(ids, self.params, loop, self.queue, self.priority, self.client_id)
                   for ids in self.prompts]  # fmt: skip
        try:
            for position, future in enumerate(futures):
                subscription = await asyncio.wrap_future(future)
                self.request_ids.append(subscription.request_id)
                self._prompt_of[subscription.request_id] = position
        except (ValueError, EngineFailed, asyncio.CancelledError) as exc:
            for future in futures:
                _abort_once_added(self.engine_thread, future)
            if isinstance(exc, ContextTooLong):
                raise context_length_error(exc) from exc
            if isinstance(exc, ValueError):
                raise p.OpenAIError(str(exc), param=param_named_in(str(exc))) from exc
            if isinstance(exc, EngineFailed):
                raise p.OpenAIError(
                    f"the engine failed: {exc}", 503, type="server_error", code="engine_failed"
                ) from exc
            raise

    def abort(self) -> None:
        """Stops what is still running (a no-op for finished requests)."""
        for request_id in self.request_ids:
            self.engine_thread.abort(request_id)

    async def updates(self, request: Request) -> AsyncIterator[tuple[Choice, str, list]]:
        """(choice, its new text, its new tokens' logprobs) as tokens arrive, until every choice has a
        finish reason; stops, and aborts the requests, when the client disconnects or the consumer
        stops early."""
        gone = asyncio.ensure_future(_client_gone(request))
        remaining = len(self.choices)
        try:
            while remaining:
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                update: TokenUpdate = getter.result()
                if update.error is not None:
                    raise p.OpenAIError(f"the engine failed this request: {update.error}", 500, type="server_error")
                choice = self.choices[self._prompt_of[update.request_id] * self.params.n + update.index]
                piece = choice.text.push(update.new_token_ids, update.finish_reason, update.text)
                choice.logprobs += update.logprobs
                if update.finish_reason is not None:
                    choice.finish_reason, choice.stop_reason = update.finish_reason, update.stop_reason
                    choice.prompt_logprobs = update.prompt_logprobs
                    remaining -= 1
                    self.finished = remaining == 0
                yield choice, piece, update.logprobs
        finally:
            gone.cancel()
            if not self.finished:  # the client left, or the consumer stopped early: free the KV
                self.abort()


def _abort_once_added(engine_thread: EngineThread, submitted: Future) -> None:
    def abort(future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            engine_thread.abort(future.result().request_id)

    submitted.add_done_callback(abort)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: the next ASGI message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
