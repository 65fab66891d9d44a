"""The engine's front door: what a request must be before any state changes.

`Engine.check_request` (and so `Engine.add_request`) runs `check_request` with the engine's limits;
a front end that adds a batch all-or-nothing runs it on every request first. Each refusal is a
ValueError naming the bad value and its limit; a prompt too long for the engine is a
`ContextTooLong`, which carries the numbers for a front end's own wording (the server's is vLLM's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastswitch.models.sampling import SamplingParams


class ContextTooLong(ValueError):
    """A prompt (plus, when asked, its max_tokens) longer than the engine serves."""

    def __init__(self, message: str, num_prompt_tokens: int, num_output_tokens: int, limit: int) -> None:
        super().__init__(message)
        self.num_prompt_tokens, self.num_output_tokens, self.limit = num_prompt_tokens, num_output_tokens, limit


@dataclass(frozen=True)
class EngineLimits:
    """What an engine can serve, as check_request reads it."""

    max_seq_len: int  # the longest sequence: max_model_len, cut to what the device KV cache holds
    max_model_len: int
    vocab_size: int | None  # None: a model-free engine, any id >= 0
    detokenize: Callable[[list[int]], str] | None  # None: no tokenizer, so no stop strings
    can_fork: bool  # the executor forks samples (n > 1)


def check_request(
    limits: EngineLimits,
    prompt_token_ids: list[int],
    params: SamplingParams,
    priority: int = 0,
    *,
    conversation: bool = False,
    reserve_output: bool = False,
) -> list[int]:
    """Returns the prompt's token ids as a list, or raises ValueError naming what is wrong.

    Checks the priority (an integer >= 0), the params (a SamplingParams the engine can honour:
    vocabulary, stop strings, n, prompt logprobs), the prompt (a non-empty list of token ids in the
    vocabulary) and its length: at most limits.max_seq_len tokens. reserve_output: the prompt plus
    max_tokens (1 with max_tokens=None) must fit too, so a request that could never complete is
    refused up front rather than cut short ("length") later, as `LLM` and vLLM's server do.
    conversation: the request continues a kept KV context (a conversation turn)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise ValueError(f"priority={priority!r} must be an integer >= 0")
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params={params!r} is not a SamplingParams")
    if not isinstance(prompt_token_ids, (list, tuple)):
        raise ValueError(f"prompt_token_ids must be a list of token ids, got {type(prompt_token_ids).__name__}")
    token_ids = list(prompt_token_ids)
    if not token_ids:
        raise ValueError("prompt is empty: at least 1 token is needed")
    vocab = limits.vocab_size
    bad = [t for t in token_ids if isinstance(t, bool) or not isinstance(t, int) or t < 0
           or (vocab is not None and t >= vocab)]  # fmt: skip
    if bad:
        allowed = f"the vocabulary 0..{vocab - 1}" if vocab is not None else "the token ids (integers >= 0)"
        raise ValueError(f"prompt token ids {bad[:5]} lie outside {allowed}")
    if vocab is not None:
        params.check_vocab(vocab)
    _check_params(params, limits, conversation)
    limit = limits.max_seq_len
    room = (1 if params.max_tokens is None else params.max_tokens) if reserve_output else 0
    if len(token_ids) + room > limit:
        asked = f"prompt of {len(token_ids)} tokens"
        if reserve_output:
            asked += f" + max_tokens={params.max_tokens} = {len(token_ids) + room}"
        named = f"max_model_len={limit}"
        if limit != limits.max_model_len:
            named = f"max_seq_len={limit} (max_model_len={limits.max_model_len} cut to what the device cache holds)"
        raise ContextTooLong(f"{asked} exceeds {named}", len(token_ids), room, limit)
    return token_ids


def _check_params(params: SamplingParams, limits: EngineLimits, conversation: bool) -> None:
    """ValueError for what the engine cannot honour for this request's params."""
    if params.stop and limits.detokenize is None:
        raise ValueError(f"stop={list(params.stop)!r} needs a tokenizer to decode the output; this engine has none")
    if conversation and params.n > 1:
        raise ValueError(f"n={params.n} is for a lone request: a conversation turn continues one context")
    if conversation and params.prompt_logprobs is not None:
        raise ValueError(
            f"prompt_logprobs={params.prompt_logprobs} is for a lone request: a conversation turn does not "
            "compute its cached context again"
        )
    if params.n > 1 and not limits.can_fork:
        raise ValueError(f"n={params.n} needs an executor that forks samples (the ModelExecutor)")
