"""A request as the scheduler sees it: token ids, where its KV lives, and what it has produced.

A request is one generation: a prompt (for a conversation turn, the whole context so far plus the
new user message) and the tokens sampled for it. `seq_id` names its KV cache: for a lone request it
is the request id; every turn of a conversation shares the conversation's id, so a new turn appends
to the KV that the previous turns left behind instead of computing the context again.

Its status is read, never stored: where its KV lives is the swap manager's to say (`KVSpace.location`,
the one source of truth for residency), and a request is finished once it has a finish reason.

`num_computed_tokens` counts the leading tokens whose K/V exist (on the device or, while swapped,
on the host). Preemption by swap keeps it; preemption by recompute resets it to 0, and the request
is prefilled again from its prompt plus the tokens it already generated, which for greedy decoding
gives back exactly the same continuation.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from fastswitch.outputs import RequestMetrics
from fastswitch.sched.kv_space import KVSpace


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # no KV anywhere: needs (re)prefill from num_computed_tokens == 0
    RUNNING = "running"  # KV on the device (or being swapped in); schedulable when ready
    SWAPPED = "swapped"  # KV on the host (or being swapped out)
    FINISHED = "finished"


STATUS_OF_LOCATION = {"none": RequestStatus.WAITING, "device": RequestStatus.RUNNING, "host": RequestStatus.SWAPPED}


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: Any  # SamplingParams: max_tokens, stop_token_ids, ignore_eos (temperature etc. for the sampler)
    arrival_time: float
    seq_id: Hashable = None
    priority: int = 0  # 0 is the most urgent level, as in vLLM; larger values wait behind smaller ones
    client_id: Hashable = "default"
    eos_token_ids: tuple[int, ...] = ()
    prompt: str | None = None
    keep_kv: bool = False  # a conversation turn: leave the KV behind for the next turn
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    finish_reason: str | None = None
    metrics: RequestMetrics = None  # type: ignore[assignment]
    first_scheduled_time: float | None = None
    swap_in_issued_at: float | None = None  # set while a swap-in of this request is in flight
    # What the engine and executor fill beside the tokens (see fastswitch/engine.py):
    logprobs: list | None = None  # per output token {token id: Logprob}, when params.logprobs is set
    prompt_logprobs: list | None = None  # per prompt token (None first), when params.prompt_logprobs is set
    stop_strings: Any = None  # a StopStringMatcher when params.stop is set (and text can be decoded)
    num_forks: int = 0  # further samples (params.n - 1) forked from this one when its prefill ends
    kv: KVSpace | None = field(default=None, repr=False, compare=False)  # set by Scheduler.add_request

    def __post_init__(self) -> None:
        if self.seq_id is None:
            self.seq_id = self.request_id
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose K/V the next forward passes must still produce (1 while decoding)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def status(self) -> RequestStatus:
        """FINISHED once it has a finish reason; else where its KV lives, as the scheduler's KV space says."""
        if self.finish_reason is not None:
            return RequestStatus.FINISHED
        if self.kv is None:
            return RequestStatus.WAITING  # not added to a scheduler yet
        return STATUS_OF_LOCATION[self.kv.location(self.seq_id)]

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def token_slice(self, start: int, stop: int) -> list[int]:
        prompt_len = len(self.prompt_token_ids)
        if stop <= prompt_len:
            return self.prompt_token_ids[start:stop]
        head = self.prompt_token_ids[start:] if start < prompt_len else []
        return head + self.output_token_ids[max(0, start - prompt_len) : stop - prompt_len]


@dataclass
class ScheduledChunk:
    """One sequence's share of a step: the tokens to run and where its KV lives."""

    request: Request
    token_ids: list[int]
    num_cached: int  # tokens already in the cache before this chunk
    block_table: list[int]
    sample: bool  # the chunk reaches the end of the sequence, so its last logits give the next token


@dataclass
class SchedulerOutput:
    """What one step does, as data. The scheduler has issued the step's swaps and drops itself (through
    its `KVSpace`, the swap manager) and lists them here by id; the engine hands the chunks to the
    executor and feeds the sampled tokens back through `Scheduler.update`."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    swapped_out: list[str] = field(default_factory=list)  # request ids (an idle context: its seq_id)
    swapped_in: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)  # preempted by dropping their KV
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.chunks

    @property
    def moved_kv(self) -> bool:
        """Whether the step swapped or dropped any KV (a step can do only that: in vLLM 0.3.3 mode a
        step that swaps out to make room swaps nothing in, so the request it makes room for waits)."""
        return bool(self.swapped_out or self.swapped_in or self.recomputed)
