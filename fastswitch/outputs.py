"""The records `LLM.generate` returns: one RequestOutput per prompt, with its timing metrics.

Times are `time.monotonic()` seconds. TTFT is first token minus arrival; the TBTs are the gaps
between consecutive output tokens, so a request with n tokens has n - 1 of them.

Swap stall: the time a request lost to KV copies, `swap_stall_total` = the time the engine was blocked
on copies (synchronous swaps, or nothing to run until a copy lands) while the request was live, plus
the time the request waited for its own swap-ins that the engine did not wait for (asynchronous ones,
overlapped with other requests' steps). Its own synchronous swap-ins are inside the first term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastswitch.models.logprobs import Logprob


@dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # when each output token was sampled
    num_preemptions: int = 0
    swap_stall_time: float = 0.0  # seconds the request waited on its own swap-ins (both kinds)
    sync_swap_in_time: float = 0.0  # ... of which the engine waited for synchronously
    engine_swap_wait_time: float = 0.0  # seconds the engine was blocked on copies while the request was live

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tbts(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.token_times, self.token_times[1:])]

    @property
    def swap_stall_total(self) -> float:
        """Seconds of this request's life lost to swaps (see the module docstring)."""
        return self.engine_swap_wait_time + self.swap_stall_time - self.sync_swap_in_time

    @property
    def e2e_latency(self) -> float | None:
        if self.finish_time is None:
            return None
        return self.finish_time - self.arrival_time

    def record_token(self, now: float) -> None:
        if self.first_token_time is None:
            self.first_token_time = now
        self.token_times.append(now)


@dataclass
class RequestOutput:
    """One completion of one prompt; it fills in as the engine steps.

    With SamplingParams(n=k), a prompt has k completions, each its own request in the engine: the
    output `generate` returns (or `add_request` hands back) is completion 0, and once its prefill
    has run, `forked` holds completions 1..k-1 (request ids "<id>:1" ...), so `samples` lists all k
    in index order. vLLM's one RequestOutput with k CompletionOutputs maps to `samples` here; the
    prompt's fields (and prompt_logprobs, shared) are the same on each. `finished` is one
    completion's; `all_finished` is the prompt's.
    """

    request_id: str
    prompt: str | None  # None when the caller gave token ids
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated tokens, including the stop/EOS token that ended the request
    text: str | None  # generated text without the stop token; None without a tokenizer
    # "stop" (EOS or a stop token), "length" (max_tokens), "abort", "error" (see `error`), None while running
    finish_reason: str | None
    metrics: RequestMetrics
    error: str | None = None  # why the engine failed this request (finish_reason "error")
    stop_reason: int | str | None = None  # as vLLM: the stop string or stop token id that ended it (None for EOS)
    logprobs: list[dict[int, Logprob]] | None = None  # per output token (SamplingParams.logprobs)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None  # per prompt token, None first
    index: int = 0  # which of the prompt's n completions
    forked: list[RequestOutput] = field(default_factory=list)  # completions 1..n-1, on completion 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def samples(self) -> list[RequestOutput]:
        """All of the prompt's completions forked so far, this one (completion 0) first."""
        return [self, *self.forked]

    @property
    def all_finished(self) -> bool:
        """Every completion of the prompt is done (n > 1: the forks exist once the prefill has run)."""
        return self.finished and all(sample.finished for sample in self.forked)
