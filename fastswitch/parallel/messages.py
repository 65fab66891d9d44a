"""What the engine's process (rank 0) sends its tensor-parallel workers, and what they answer.

One `Step` per engine step carries everything a worker must do for it, in order: copy the blocks of
the samples forked since the last step (SamplingParams.n > 1), submit the swap copies the scheduler
issued since the last step, wait for the copies rank 0 has seen complete (the
scheduler now relies on them: freed blocks get rewritten, swapped-in sequences run), then run its
shard of the forward over the same chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastswitch.cache.copy_engine import CopyJob


@dataclass(frozen=True)
class StepChunk:
    """One chunk of a step as a worker needs it: the fields of `fastswitch.models.runner.Chunk`,
    without the scheduler's request, which stays on rank 0."""

    token_ids: list[int]
    num_cached: int
    block_table: list[int]


@dataclass(frozen=True)
class Build:
    """Allocate the rank's KV shard and host pool (as many blocks as rank 0's) and its copy engine."""

    num_gpu_blocks: int
    num_cpu_blocks: int
    block_size: int
    async_swap: bool
    attention_backend: str


@dataclass
class Step:
    copies: list[tuple[int, CopyJob]] = field(default_factory=list)  # (job id, job), in submission order
    completed: list[int] = field(default_factory=list)  # job ids to wait for before the forward
    chunks: list[StepChunk] = field(default_factory=list)  # empty: copies only (at close)
    block_copies: list[tuple[list[int], list[int]]] = field(default_factory=list)  # forks: (src, dst) blocks


@dataclass(frozen=True)
class StatsRequest:
    """Asks for the worker's counters; answered after every earlier message has been handled."""


@dataclass(frozen=True)
class Stop:
    """Finish the copies in flight and exit."""


@dataclass(frozen=True)
class Ready:
    """The worker has loaded its shard (answer to start-up) or built its caches (answer to Build)."""


@dataclass(frozen=True)
class Failed:
    """The worker raised; it exits after sending this."""

    rank: int
    traceback: str
