"""A Generation's choices as OpenAI's answers: whole, or as server-sent events.

Logprobs come in OpenAI's two shapes. /v1/completions: `tokens`, `token_logprobs`, `top_logprobs`
(token -> logprob, the chosen token and the top k) and `text_offset` (each token's start in the
text, echoed prompt included); with `echo` the prompt's tokens come first, the first one's logprob
null, as in vLLM. /v1/chat/completions: `content`, one {token, logprob, bytes, top_logprobs} per
token, top_logprobs the k most likely. vLLM's `prompt_logprobs` field is added to a choice when asked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request

from fastswitch.server import protocol as p
from fastswitch.server.generation import Choice, Generation


@dataclass
class Shape:
    """What a request asks of its answer's form."""

    chat: bool
    response_id: str
    model_id: str
    token_text: Callable[[int], str]  # one token's text in logprobs
    num_top: int | None  # top logprobs shown per token; None: no logprobs
    echo: list[str] | None = None  # completions with echo: each prompt's text
    prompt_logprobs: bool = False  # vLLM's prompt_logprobs field asked for
    include_usage: bool = False
    continuous_usage: bool = False


def _completion_logprobs(shape: Shape, token_ids: list[int], entries: list, offset: int) -> dict:
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict | None] = []
    offsets: list[int] = []
    for token, entry in zip(token_ids, entries):
        text = shape.token_text(token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None:  # the prompt's first token
            values.append(None)
            tops.append(None)
            continue
        values.append(entry[token].logprob)
        tops.append({shape.token_text(t): lp.logprob for t, lp in entry.items()})
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(shape: Shape, token_ids: list[int], entries: list) -> dict:
    def item(token: int, logprob: float) -> dict:
        text = shape.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, entry in zip(token_ids, entries):
        best = sorted(entry.items(), key=lambda kv: kv[1].rank)[: shape.num_top]
        content.append({**item(token, entry[token].logprob), "top_logprobs": [item(t, lp.logprob) for t, lp in best]})
    return {"content": content}


def _prompt_logprobs(shape: Shape, prompt: list[int], entries: list | None) -> list | None:
    """vLLM's shape: per prompt token None (the first) or {token id: {logprob, rank, decoded_token}}."""
    if entries is None:
        return None
    def entry(token: int, lp) -> dict:
        return {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": shape.token_text(token)}

    return [None if e is None else {str(t): entry(t, lp) for t, lp in e.items()} for e in entries]


def _logprobs(shape: Shape, generation: Generation, choice: Choice, token_ids: list[int], entries: list,
              offset: int) -> dict | None:  # fmt: skip
    if shape.num_top is None:
        return None
    if shape.chat:
        return _chat_logprobs(shape, token_ids, entries)
    return _completion_logprobs(shape, token_ids, entries, offset)


def whole_answer(shape: Shape, generation: Generation) -> dict:
    choices = []
    for choice in generation.choices:
        tokens = choice.text.token_ids
        if shape.chat:
            body = {"index": choice.index, "message": {"role": "assistant", "content": choice.text.sent}}
            logprobs = _logprobs(shape, generation, choice, tokens, choice.logprobs, 0)
        else:
            prompt_text = shape.echo[choice.prompt] if shape.echo is not None else ""
            body = {"index": choice.index, "text": prompt_text + choice.text.sent}
            token_ids, entries = tokens, choice.logprobs
            if shape.echo is not None and shape.num_top is not None:
                token_ids = generation.prompts[choice.prompt] + tokens
                entries = (choice.prompt_logprobs or []) + choice.logprobs
            logprobs = _logprobs(shape, generation, choice, token_ids, entries, 0)
        body.update(logprobs=logprobs, finish_reason=choice.finish_reason, stop_reason=choice.stop_reason)
        if shape.prompt_logprobs:
            body["prompt_logprobs"] = _prompt_logprobs(shape, generation.prompts[choice.prompt], choice.prompt_logprobs)
        choices.append(body)
    make = p.chat_object if shape.chat else p.completion_object
    return make(shape.response_id, shape.model_id, choices, generation.usage())


async def sse_events(shape: Shape, generation: Generation, request: Request) -> AsyncIterator[str]:
    """The answer as server-sent events: one chunk per choice per update, each choice's echoed prompt
    first (completions) or its role (chat), usage at the end (include_usage) or in every chunk
    (continuous_usage_stats), then [DONE]. An engine error is sent as an error event."""

    def event(choice_body: dict | None, usage: dict | None = None) -> str:
        make = p.chat_object if shape.chat else p.completion_object
        obj = make(shape.response_id, shape.model_id, [] if choice_body is None else [choice_body], usage, chunk=True)
        return f"data: {json.dumps(obj, ensure_ascii=True)}\n\n"

    def running_usage() -> dict | None:
        return generation.usage() if shape.continuous_usage else None

    offsets = {}
    for choice in generation.choices:
        if shape.chat:
            yield event({"index": choice.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}, running_usage())  # fmt: skip
        elif shape.echo is not None:
            prompt_text = shape.echo[choice.prompt]
            yield event({"index": choice.index, "text": prompt_text, "logprobs": None, "finish_reason": None},
                        running_usage())  # fmt: skip
        offsets[choice.index] = len(shape.echo[choice.prompt]) if shape.echo is not None else 0
    try:
        async for choice, piece, entries in generation.updates(request):
            if not piece and not entries and choice.finish_reason is None:
                continue
            new_tokens = choice.text.token_ids[len(choice.text.token_ids) - len(entries) :] if entries else []
            logprobs = _logprobs(shape, generation, choice, new_tokens, entries, offsets[choice.index])
            if logprobs is not None and not shape.chat:
                offsets[choice.index] += sum(len(t) for t in logprobs["tokens"])
            body = {"index": choice.index, "logprobs": logprobs, "finish_reason": choice.finish_reason}
            if shape.chat:
                body["delta"] = {"content": piece} if piece else {}
            else:
                body["text"] = piece
            if choice.finish_reason is not None:
                body["stop_reason"] = choice.stop_reason
            yield event(body, running_usage())
    except p.OpenAIError as exc:
        yield f"data: {json.dumps(exc.body(), ensure_ascii=True)}\n\n"
        return
    if not generation.finished:  # the client left
        return
    if shape.include_usage:
        yield event(None, generation.usage())
    yield "data: [DONE]\n\n"
