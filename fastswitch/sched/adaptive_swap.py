"""The paper's adaptive wait-or-overlap rule for asynchronous swaps, in one place.

With asynchronous swapping (`async_swap`) a copy overlaps the forward passes: a swap-out frees its
device blocks only once its copy completes, and a swapped-in request runs only once its copy has
landed. Overlapping hides the copy but costs the one request involved a whole step (the request the
swap-out makes room for, or the request the swap-in brings back, sits the step out); waiting for the
copy keeps it in the batch but holds up every request of the batch for the copy's duration. So:

- a swap is waited for when the batch would otherwise shrink and the copy is cheap: the swap
  manager's estimate of the copy, times the requests the wait holds up (the last batch), is at most
  `sync_swap_fraction` of the recent step time (an exponential average of the executor's step
  durations, swap waits excluded). Until both are known (no copy or no step timed yet) a swap of at
  most `adaptive_sync_blocks` blocks counts as cheap;
- a request that will get its device blocks from swap-outs already in flight waits for them rather
  than evicting more.

Synchronous swapping (`async_swap=False`) always waits. Both scheduler modes (scheduler.py,
vllm_scheduler.py) ask this rule and nothing else; the estimates come from the swap manager
(fastswitch/cache/swap_manager.py), which prices a copy with its copy engine's timing model.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

STEP_TIME_WEIGHT = 0.2  # weight of the newest step in the step-time average: follows batch growth within a few steps


class SwapEstimates(Protocol):
    """What the rule reads of KV memory (the scheduler's `KVSpace` provides it)."""

    asynchronous: bool  # swaps may complete after the step that issued them

    @property
    def num_free_device_blocks(self) -> int: ...

    @property
    def num_pending_free_blocks(self) -> int:
        """Device blocks that in-flight swap-outs free when their copies complete."""

    def num_blocks_of(self, seq_id: Hashable) -> int:
        """Blocks seq_id holds where its KV lives (the size of its next swap)."""

    def estimated_swap_time(self, seq_id: Hashable) -> float | None:
        """Seconds seq_id's next swap should take; None while nothing is known of the copy speed."""


class AdaptiveSwapRule:
    def __init__(self, kv: SwapEstimates, sync_swap_fraction: float, adaptive_sync_blocks: int) -> None:
        """sync_swap_fraction, adaptive_sync_blocks: EngineConfig fields (validated there)."""
        self.kv = kv
        self.sync_swap_fraction = sync_swap_fraction
        self.adaptive_sync_blocks = adaptive_sync_blocks
        self.step_time: float | None = None  # exponential average of executor step durations (s)
        self.last_batch_size = 0

    def observe_step(self, batch_size: int, seconds: float) -> None:
        """Records one executor step: its batch and its duration without the waits on swaps."""
        self.last_batch_size = batch_size
        if self.step_time is None:
            self.step_time = seconds
        else:
            self.step_time += STEP_TIME_WEIGHT * (seconds - self.step_time)

    def wait_for_swap(self, seq_id: Hashable, num_scheduled: int | None = None) -> bool:
        """Whether to wait for seq_id's swap in this step (blocking) rather than overlap it.

        num_scheduled: for a swap-in whose request could join this step's batch, the chunks scheduled
        so far (the batch shrinks when they are fewer than the last batch's); None when overlapping
        shrinks the batch in any case (a swap-out making room for a request, or a context that a
        prompt must follow)."""
        if not self.kv.asynchronous:
            return True
        if num_scheduled is not None and num_scheduled >= self.last_batch_size:
            return False
        return self._cheap_to_wait_for(seq_id)

    def in_flight_frees_enough(self, need: int, keep_free: int = 0) -> bool:
        """Whether the swap-outs in flight will free enough device blocks for `need` more (leaving
        keep_free free): then the request waits for them instead of evicting more."""
        return self.kv.num_free_device_blocks + self.kv.num_pending_free_blocks - need >= keep_free

    def _cheap_to_wait_for(self, seq_id: Hashable) -> bool:
        """Whether waiting for seq_id's next swap, which every request of the batch pays, costs little
        against the step that overlapping it takes from the one request."""
        estimate = self.kv.estimated_swap_time(seq_id)
        if estimate is None or self.step_time is None:
            return self.kv.num_blocks_of(seq_id) <= self.adaptive_sync_blocks
        return estimate * max(1, self.last_batch_size) <= self.sync_swap_fraction * self.step_time
