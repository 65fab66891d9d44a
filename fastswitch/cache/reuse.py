"""Host-copy reuse across swaps: which of a sequence's blocks the host already holds unchanged.

A conversation swapped out, resumed and preempted again would copy its whole context again, though
the host still holds most of it. FastSwitch keeps the host copy after swap-in; a later swap-out then
copies only the blocks that are new since. A block is safe to reuse only once it is *full*: tokens
are appended, never rewritten, so a full block's K/V never changes, while the last, partial block
changes with every decoded token.

`HostReuseTracker` is the single owner of the host pool's `BlockManager` (keyed by seq_id, a
conversation's id for every turn of it): every host allocation goes through it, so it can make room
by evicting the least recently used host copies. It never evicts a copy that a swap in flight still
reads or writes (pinned), nor one that is the only copy of a swapped-out sequence. It is also the one
place that says whether the host can take a swap-out (`can_begin_swap_out`).

The swap manager's calls, per sequence:

    tracker.can_begin_swap_out(seq, num_blocks)      # admission: fits in free + evictable blocks
    plan = tracker.begin_swap_out(seq, num_blocks)   # phase swapping_out: pinned
    ... copy device_table[plan.first_block:] -> plan.host_blocks (copy_runs pairs them) ...
    tracker.finish_swap_out(seq, num_full_blocks)    # swapped_out: the host holds the only copy
    host_blocks = tracker.begin_swap_in(seq)         # swapping_in: pinned; its blocks in logical order
    ... copy host_blocks -> the new device blocks ...
    tracker.finish_swap_in(seq)                      # resident: full blocks kept for reuse, LRU-evictable
    tracker.drop(seq)                                # forget it and free its host blocks

Reuse assumes the sequence's tokens before `first_block` are the ones the host copy was made from:
tokens are only appended while a sequence lives, and the swap manager drops the copy of a sequence
whose KV it forgets (a finished, aborted or recomputed one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from fastswitch.cache.block_manager import BlockManager

SWAPPING_OUT, SWAPPED_OUT, SWAPPING_IN, RESIDENT = "swapping_out", "swapped_out", "swapping_in", "resident"


@dataclass
class HostCopy:
    """The host's copy of one sequence's KV; its blocks are `host.block_table(seq_id)`."""

    seq_id: Hashable
    num_valid_blocks: int = 0  # leading host blocks equal to the sequence's blocks, reusable
    # "swapping_out" / "swapping_in": a copy in flight writes / reads these host blocks (pinned);
    # "swapped_out": the host holds the only copy; "resident": a spare copy that LRU may evict.
    phase: str = RESIDENT

    @property
    def in_flight(self) -> bool:
        return self.phase in (SWAPPING_OUT, SWAPPING_IN)

    @property
    def evictable(self) -> bool:
        return self.phase == RESIDENT


@dataclass
class SwapOutPlan:
    """What a swap-out must copy: the sequence's logical blocks first_block.. into host_blocks."""

    first_block: int  # blocks before this one are on the host already (reused, not copied)
    host_blocks: list[int]  # destination of logical blocks first_block, first_block + 1, ...
    evicted: list[Hashable] = field(default_factory=list)  # host copies dropped to make room


class HostReuseTracker:
    def __init__(self, host: BlockManager, keep_after_swap_in: bool = True) -> None:
        """host: the host pool's BlockManager, owned by this tracker from now on.
        keep_after_swap_in=False turns reuse off (the `kv_reuse` switch): host copies are freed as
        soon as their swap-in completes, and every swap-out copies every block."""
        self.host = host
        self.keep_after_swap_in = keep_after_swap_in
        self._copies: OrderedDict[Hashable, HostCopy] = OrderedDict()  # least recently used first

    def record(self, seq_id: Hashable) -> HostCopy | None:
        return self._copies.get(seq_id)

    def reusable_blocks(self, seq_id: Hashable) -> int:
        copy = self._copies.get(seq_id)
        return copy.num_valid_blocks if copy else 0

    def evictable_blocks(self, keep: Hashable | None = None) -> int:
        """Host blocks that eviction could free (resident copies: not in flight, not swapped out), except keep's."""
        return sum(self.host.num_blocks_of(c.seq_id) for c in self._evictable() if c.seq_id != keep)

    def can_begin_swap_out(self, seq_id: Hashable, num_blocks: int) -> bool:
        """The swap-out admission rule: no swap of seq_id is in flight, it is not swapped out already,
        and its new blocks fit in the free host blocks plus those that evicting other sequences' spare
        copies would free (begin_swap_out(seq_id, num_blocks) succeeds exactly when this holds)."""
        copy = self._copies.get(seq_id)
        if copy is not None and not copy.evictable:
            return False
        return self._host_shortfall(seq_id, num_blocks) <= self.evictable_blocks(keep=seq_id)

    def begin_swap_out(self, seq_id: Hashable, num_blocks: int) -> SwapOutPlan:
        """Reserves host blocks for a swap-out of num_blocks blocks and pins them.

        Reuses the leading valid blocks already on the host, frees any stale ones after them, and
        evicts least recently used copies when the host pool is short. Raises ValueError, changing
        nothing, when can_begin_swap_out does not hold.
        """
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks!r} must be a non-negative integer")
        copy = self._copies.get(seq_id)
        reused = min(self.reusable_blocks(seq_id), num_blocks)
        short = self._host_shortfall(seq_id, num_blocks)
        if not self.can_begin_swap_out(seq_id, num_blocks):
            if copy is not None and not copy.evictable:
                raise ValueError(f"sequence {seq_id!r} cannot swap out: it is {copy.phase.replace('_', ' ')}")
            raise ValueError(
                f"host pool cannot hold sequence {seq_id!r}: it needs {num_blocks - reused} new blocks, "
                f"num_free={num_blocks - reused - short} of {self.host.num_blocks} (counting its stale blocks) "
                f"and {self.evictable_blocks(keep=seq_id)} more could be evicted"
            )
        if copy is None:
            copy = self._copies[seq_id] = HostCopy(seq_id)
        if self.host.has(seq_id):
            self.host.truncate(seq_id, reused)
        evicted = self._evict(short, keep=seq_id) if short > 0 else []
        self.host.ensure_capacity(seq_id, num_blocks * self.host.block_size)
        copy.num_valid_blocks = reused
        copy.phase = SWAPPING_OUT
        self._copies.move_to_end(seq_id)
        return SwapOutPlan(reused, self.host.block_table(seq_id)[reused:], evicted)

    def finish_swap_out(self, seq_id: Hashable, num_full_blocks: int) -> None:
        """The swap-out's copies completed; num_full_blocks of its blocks are full (reusable later)."""
        copy = self._in_phase(seq_id, SWAPPING_OUT)
        held = self.host.num_blocks_of(seq_id)
        if not isinstance(num_full_blocks, int) or not 0 <= num_full_blocks <= held:
            raise ValueError(f"num_full_blocks={num_full_blocks!r} must lie in 0..{held} for {seq_id!r}")
        copy.phase = SWAPPED_OUT
        copy.num_valid_blocks = num_full_blocks

    def begin_swap_in(self, seq_id: Hashable) -> list[int]:
        """Pins a swapped-out sequence's host copy for reading; returns its host block table."""
        copy = self._in_phase(seq_id, SWAPPED_OUT)
        copy.phase = SWAPPING_IN
        self._copies.move_to_end(seq_id)
        return self.host.block_table(seq_id)

    def finish_swap_in(self, seq_id: Hashable) -> None:
        """The swap-in's copies completed: keep the full blocks as a reusable (evictable) copy."""
        copy = self._in_phase(seq_id, SWAPPING_IN)
        copy.phase = RESIDENT
        if not self.keep_after_swap_in or copy.num_valid_blocks == 0:
            self.drop(seq_id)
            return
        # The partial last block changes with the next decoded token: only full blocks stay valid.
        self.host.truncate(seq_id, copy.num_valid_blocks)

    def drop(self, seq_id: Hashable) -> None:
        """Forgets the sequence's host copy and frees its blocks (also a swapped-out sole copy,
        e.g. for an aborted request); raises while a swap of it is in flight."""
        copy = self._copies.get(seq_id)
        if copy is None:
            return
        if copy.in_flight:
            raise ValueError(f"cannot drop sequence {seq_id!r}: a swap of it is in flight ({copy.phase})")
        del self._copies[seq_id]
        if self.host.has(seq_id):
            self.host.free(seq_id)

    def _host_shortfall(self, seq_id: Hashable, num_blocks: int) -> int:
        """Host blocks that must be evicted before seq_id can hold num_blocks (<= 0: none)."""
        reused = min(self.reusable_blocks(seq_id), num_blocks)
        held = self.host.num_blocks_of(seq_id) if self.host.has(seq_id) else 0
        # Its blocks after the reused ones are stale and are freed first.
        return (num_blocks - reused) - (self.host.num_free + held - reused)

    def _evict(self, num_blocks: int, keep: Hashable | None = None) -> list[Hashable]:
        evicted = []
        for copy in list(self._evictable()):
            if num_blocks <= 0:
                break
            if copy.seq_id == keep:
                continue
            freed = self.host.num_blocks_of(copy.seq_id)
            self.drop(copy.seq_id)
            evicted.append(copy.seq_id)
            num_blocks -= freed
        return evicted

    def _evictable(self):
        return (c for c in self._copies.values() if c.evictable)

    def _in_phase(self, seq_id: Hashable, phase: str) -> HostCopy:
        copy = self._copies.get(seq_id)
        if copy is None or copy.phase != phase:
            now = copy.phase if copy else "not on the host"
            raise ValueError(f"sequence {seq_id!r} is {now}, not {phase}")
        return copy
