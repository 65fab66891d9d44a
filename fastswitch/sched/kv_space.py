"""The seam between deciding and moving: what the scheduler needs to know about KV memory.

The scheduler never touches tensors. It asks this interface where a sequence's KV lives and how
many device blocks a step would take, and it tells it which sequences to swap out, swap in or
drop. `fastswitch.cache.swap_manager.SwapManager` implements it over a `SequenceTable` (each
sequence's place and device blocks), the host pool's `HostReuseTracker` and a copy engine; the
simulator keeps that implementation and only swaps the copy engine. `location` is the one source of
truth for residency: a request's status is read from it (sched/request.py).

A sequence's KV is in one of three places:
- "none": nothing cached (new, recomputed, or dropped);
- "device": on the device; `is_ready` is False while a swap-in is still copying it there;
- "host": on the host only (a swap-out may still be copying it; its device blocks are then
  freed when the copy completes, which `num_pending_free_blocks` counts).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, Protocol

from fastswitch.sched.adaptive_swap import SwapEstimates

KVLocation = Literal["none", "device", "host"]


class KVSpace(SwapEstimates, Protocol):
    """Adds to what the adaptive swap rule reads (free and pending device blocks, sizes and estimated
    times of swaps, whether swaps are asynchronous) what the scheduler reads and does."""

    block_size: int

    @property
    def num_device_blocks(self) -> int: ...

    def location(self, seq_id: Hashable) -> KVLocation: ...

    def is_ready(self, seq_id: Hashable) -> bool:
        """True when seq_id's KV is on the device and no copy into it is in flight."""

    def device_blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        """New device blocks for seq_id to hold num_tokens tokens, wherever its KV is now."""

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """Grows seq_id's device KV to num_tokens tokens and returns its block table."""

    def can_swap_out(self, seq_id: Hashable, num_tokens: int) -> bool:
        """Whether the host can take seq_id (possibly by dropping other sequences' kept copies)."""

    def swap_out(self, seq_id: Hashable, num_tokens: int, blocking: bool) -> None:
        """Moves seq_id's first num_tokens tokens of KV to the host and frees its device blocks."""

    def swap_in(self, seq_id: Hashable, blocking: bool) -> None:
        """Allocates device blocks for seq_id and copies its KV back from the host."""

    def drop(self, seq_id: Hashable) -> None:
        """Forgets seq_id's KV everywhere; blocks under an in-flight copy are freed when it completes."""

    def poll(self) -> list[Hashable]:
        """Retires completed copies; returns the sequences whose swap-in has just completed."""
