"""What a request carries beside its tokens, from its SamplingParams, and the text it ends with.

The engine (fastswitch/engine.py) equips each request when it is added: lists for the logprobs the
executor fills (`logprobs`, `prompt_logprobs`), a `StopStringMatcher` for `stop` strings, and the
number of further samples to fork when its prefill ends (`n - 1`). Sample i of a seeded request
uses seed + i, as vLLM's parallel sampling does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.request import Request
from fastswitch.stop_strings import StopStringMatcher


def equip(request: Request, detokenize: Callable[[list[int]], str] | None) -> None:
    params: SamplingParams = request.params
    if params.logprobs is not None:
        request.logprobs = []
    if params.prompt_logprobs is not None:
        request.prompt_logprobs = [None]  # the first prompt token has nothing before it
    if params.stop:
        assert detokenize is not None, "check_request refuses stop strings without a tokenizer"
        request.stop_strings = StopStringMatcher(
            detokenize, params.stop, params.min_tokens, params.include_stop_str_in_output
        )
    request.num_forks = params.n - 1


def sample_params(params: SamplingParams, index: int) -> SamplingParams:
    """The params of sample `index` (1..n-1) of an n-sample request: one sample, seed + index."""
    seed = None if params.seed is None else params.seed + index
    return dataclasses.replace(params, n=1, seed=seed)


def final_text(request: Request, detokenize: Callable[[list[int]], str] | None) -> tuple[str | None, int | str | None]:
    """(text, stop_reason) of a finished request, as vLLM gives them: the text is cut at a stop string,
    and a stop token (or EOS) is left out unless include_stop_str_in_output; stop_reason is the stop
    string or stop token id that ended the request (None for EOS, length, abort)."""
    params: SamplingParams = request.params
    matcher = request.stop_strings
    if matcher is not None and matcher.match is not None:
        return matcher.final_text, matcher.match[1]
    tokens = request.output_token_ids
    by_token = request.finish_reason == "stop" and bool(tokens)
    stop_reason = None
    if by_token and not (tokens[-1] in request.eos_token_ids and not params.ignore_eos):
        stop_reason = tokens[-1]  # a stop token id; EOS, checked first, gives None
    if detokenize is None:
        return None, stop_reason
    kept = tokens[:-1] if by_token and not params.include_stop_str_in_output else tokens
    return detokenize(kept), stop_reason
