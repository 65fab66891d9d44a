"""The swap manager: the copies that move sequences' KV between the device and the host pool.

It implements the scheduler's `KVSpace` (fastswitch/sched/kv_space.py) over a `SequenceTable`
(cache/sequence_table.py: where each sequence lives, its device blocks, every device allocation),
the host pool's `HostReuseTracker` (cache/reuse.py: the host blocks, what a swap-out may skip, and
whether the host can take a swap-out at all) and a `CopyEngine` (cache/copy_engine.py), which copies
and estimates what a copy takes. Each sequence has at most one copy in flight. Blocks under an
in-flight copy are never handed out again before it completes: a swap-out's device blocks are freed
by `poll` once its copy is done, and a sequence dropped (aborted, recomputed) mid-copy gives its
blocks back only when the copy lands. A request is runnable only once its swap-in has landed
(`is_ready`), and a sequence is swapped in again only once its swap-out is whole.

Whether the scheduler waits for a copy (`blocking=True`) or overlaps it is the adaptive rule of
fastswitch/sched/adaptive_swap.py, which reads `estimated_swap_time` from here; with
`asynchronous=False` every copy is waited for.

KV reuse (`kv_reuse=True`): the tracker keeps the host copy after a swap-in; its full blocks stay
identical to the device's (tokens are only appended), so the next swap-out of the sequence copies
only the blocks after them. Under host-memory pressure the tracker drops kept copies, least
recently used first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal

from fastswitch.cache.block_manager import BlockManager, copy_runs
from fastswitch.cache.copy_engine import CopyEngine, CopyHandle, CopyJob, CopyPair
from fastswitch.cache.reuse import HostReuseTracker
from fastswitch.cache.sequence_table import SequenceKV, SequenceTable, Stay
from fastswitch.sched.kv_space import KVLocation


@dataclass
class PendingCopy:
    handle: CopyHandle
    seq_id: Hashable
    direction: Literal["out", "in"]
    num_full_blocks: int = 0  # a swap-out's full blocks: reusable once it lands
    free_device: list[Stay] = field(default_factory=list)  # device stays freed when it lands
    drop_host: bool = False  # the sequence was dropped meanwhile: forget its host copy on landing


@dataclass
class SwapStats:
    swap_out_count: int = 0
    swap_in_count: int = 0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    copy_calls: int = 0
    reused_blocks: int = 0  # blocks a swap-out skipped because the host already held them unchanged
    reused_bytes: int = 0
    host_copies_dropped: int = 0  # kept host copies dropped to make room
    blocking_swaps: int = 0
    swap_wait_time: float = 0.0  # time spent waiting on copies (blocking swaps)


class SwapManager:
    def __init__(
        self,
        device: BlockManager,
        host: BlockManager,
        copy_engine: CopyEngine,
        num_layers: int,
        block_bytes: int,
        asynchronous: bool,
        kv_reuse: bool,
        clock: Callable[[], float] = time.perf_counter,
        pack_min_runs: int | None = None,
    ) -> None:
        """pack_min_runs: a swap whose device side is at least this many runs, against one contiguous
        host range, goes through the pack kernel and one link copy (None: never). Worth it where a
        copy call costs microseconds (a GPU: 2-7 us per cudaMemcpyAsync, docs/references.md) and the
        gather runs at HBM speed; on a CPU it would only add a pass over the bytes."""
        if pack_min_runs is not None and pack_min_runs < 2:
            raise ValueError(f"pack_min_runs={pack_min_runs!r} must be at least 2 (or None)")
        if device.block_size != host.block_size:
            raise ValueError(f"device block_size={device.block_size} differs from host block_size={host.block_size}")
        self.device = device
        self.host = host
        self.sequences = SequenceTable(device)
        self.host_copies = HostReuseTracker(host, keep_after_swap_in=kv_reuse)
        self.copy_engine = copy_engine
        self.num_layers = num_layers
        self.block_bytes = block_bytes
        self.asynchronous = asynchronous
        self.per_layer = not device.block_groups  # vLLM's granularity: one call per block per layer per K/V
        self.clock = clock
        self.pack_min_runs = pack_min_runs
        self.block_size = device.block_size
        self.stats = SwapStats()
        self._pending: list[PendingCopy] = []

    # ---- what the scheduler reads -----------------------------------------------------------

    @property
    def num_free_device_blocks(self) -> int:
        return self.device.num_free

    @property
    def num_device_blocks(self) -> int:
        return self.device.num_blocks

    @property
    def num_pending_free_blocks(self) -> int:
        return sum(self.device.num_blocks_of(stay) for p in self._pending for stay in p.free_device)

    @property
    def num_in_flight(self) -> int:
        return len(self._pending)

    def location(self, seq_id: Hashable) -> KVLocation:
        return self.sequences.location(seq_id)

    def is_ready(self, seq_id: Hashable) -> bool:
        return self.sequences.is_ready(seq_id)

    def num_blocks_of(self, seq_id: Hashable) -> int:
        return self.sequences.num_blocks_of(seq_id)

    def device_blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        return self.sequences.device_blocks_needed(seq_id, num_tokens)

    def estimated_swap_time(self, seq_id: Hashable) -> float | None:
        """Seconds the next swap of seq_id (out from the device, or in from the host) should take, by
        the copy engine's estimate; None while the copy engine has nothing to estimate from."""
        entry = self.sequences.record(seq_id)
        if entry.stay is not None:
            blocks = self.device.block_table(entry.stay)
            blocks = blocks[min(self.host_copies.reusable_blocks(seq_id), len(blocks)) :]  # kept on the host
            direction = "out"
        else:
            blocks = self.host.block_table(seq_id)[: self.host.blocks_for_tokens(entry.num_tokens)]
            direction = "in"
        if not blocks:
            return 0.0
        return self.copy_engine.estimated_seconds(direction, len(blocks) * self.block_bytes, self._num_calls(blocks))

    # ---- what the scheduler does ------------------------------------------------------------

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        return self.sequences.allocate(seq_id, num_tokens)

    def fork(self, parent: Hashable, child: Hashable, num_tokens: int) -> tuple[list[int], list[int]] | None:
        """See SequenceTable.fork: the caller copies the blocks (n > 1 samples of one prompt)."""
        return self.sequences.fork(parent, child, num_tokens)

    def can_swap_out(self, seq_id: Hashable, num_tokens: int) -> bool:
        entry = self.sequences.record(seq_id)
        if entry.stay is None or entry.in_flight is not None:
            return False
        return self.host_copies.can_begin_swap_out(seq_id, self.device.blocks_for_tokens(num_tokens))

    def swap_out(self, seq_id: Hashable, num_tokens: int, blocking: bool) -> None:
        entry = self.sequences.record(seq_id)
        if not self.can_swap_out(seq_id, num_tokens):
            raise ValueError(
                f"cannot swap out {seq_id!r}: location={entry.location}, copy in flight={entry.in_flight is not None}, "
                f"host num_free={self.host.num_free}"
            )
        num_blocks = self.device.blocks_for_tokens(num_tokens)
        plan = self.host_copies.begin_swap_out(seq_id, num_blocks)
        src = self.sequences.block_table(seq_id)[plan.first_block : num_blocks]
        job = self._job("out", src, plan.host_blocks)
        self.stats.swap_out_count += 1
        self.stats.swap_out_blocks += job.num_blocks
        self.stats.swap_out_bytes += job.num_bytes
        self.stats.reused_blocks += plan.first_block
        self.stats.reused_bytes += plan.first_block * self.block_bytes
        self.stats.host_copies_dropped += len(plan.evicted)
        submitted_at = self.clock()  # a synchronous engine copies inside submit: time it from here
        handle = self.copy_engine.submit(job)
        left = self.sequences.leave_device(entry, num_tokens)
        pending = PendingCopy(handle, seq_id, "out", num_full_blocks=num_tokens // self.block_size, free_device=[left])
        self._track(entry, pending, blocking, submitted_at)

    def swap_in(self, seq_id: Hashable, blocking: bool) -> None:
        entry = self.sequences.record(seq_id)
        if entry.location != "host" or entry.in_flight is not None:
            raise ValueError(
                f"cannot swap in {seq_id!r}: location={entry.location}, copy in flight={entry.in_flight is not None}"
            )
        device_blocks = self.sequences.enter_device(entry)
        host_blocks = self.host_copies.begin_swap_in(seq_id)
        job = self._job("in", host_blocks[: len(device_blocks)], device_blocks)
        self.stats.swap_in_count += 1
        self.stats.swap_in_blocks += job.num_blocks
        self.stats.swap_in_bytes += job.num_bytes
        submitted_at = self.clock()
        pending = PendingCopy(self.copy_engine.submit(job), seq_id, "in")
        self._track(entry, pending, blocking, submitted_at)

    def drop(self, seq_id: Hashable) -> None:
        entry = self.sequences.remove(seq_id)
        if entry is None:
            return
        if entry.in_flight is not None:
            pending = self._pending_of(entry.in_flight)
            if entry.stay is not None:
                pending.free_device.append(entry.stay)
            pending.drop_host = True
            return
        if entry.stay is not None:
            self.sequences.free_stay(entry.stay)
        copy = self.host_copies.record(seq_id)
        if copy is not None and not copy.in_flight:  # in flight: an earlier stay's copy drops it on landing
            self.host_copies.drop(seq_id)

    def poll(self) -> list[Hashable]:
        landed: list[Hashable] = []
        for pending in [p for p in self._pending if p.handle.done()]:
            landed += self._retire(pending)
        return landed

    def wait_any(self) -> list[Hashable]:
        """Blocks until the oldest in-flight copy completes (nothing to run meanwhile); retires what is done."""
        if self._pending:
            start = self.clock()
            self._pending[0].handle.wait()
            self.stats.swap_wait_time += self.clock() - start
        return self.poll()

    def close(self) -> None:
        for pending in list(self._pending):
            pending.handle.wait()
        self.poll()
        self.copy_engine.close()

    # ---- helpers ------------------------------------------------------------------------------

    def _job(self, direction: Literal["out", "in"], src_blocks: list[int], dst_blocks: list[int]) -> CopyJob:
        pairs = tuple(CopyPair(*piece) for piece in copy_runs(src_blocks, dst_blocks))
        host_blocks = dst_blocks if direction == "out" else src_blocks
        packed = (
            self.pack_min_runs is not None
            and not self.per_layer
            and len(pairs) >= self.pack_min_runs
            and host_blocks == list(range(host_blocks[0], host_blocks[0] + len(host_blocks)))
        )
        job = CopyJob(direction, pairs, self.per_layer, self.num_layers, self.block_bytes, packed)
        self.stats.copy_calls += job.num_calls
        return job

    def _num_calls(self, blocks: list[int]) -> int:
        """Copy calls to move blocks, counted on the side already placed (the other is allocated at the
        swap itself and, with block groups, mostly as contiguous)."""
        if self.per_layer:
            return len(blocks) * self.num_layers * 2
        runs = 1 + sum(b != a + 1 for a, b in zip(blocks, blocks[1:]))
        return 1 if self.pack_min_runs is not None and runs >= self.pack_min_runs else runs

    def _track(self, entry: SequenceKV, pending: PendingCopy, blocking: bool, submitted_at: float) -> None:
        self._pending.append(pending)
        entry.in_flight = pending.handle
        if blocking or not self.asynchronous:
            pending.handle.wait()
            self.stats.swap_wait_time += self.clock() - submitted_at
            self.stats.blocking_swaps += 1
            self._retire(pending)

    def _retire(self, pending: PendingCopy) -> list[Hashable]:
        pending.handle.wait()  # done already; surfaces a failed copy
        self._pending.remove(pending)
        for stay in pending.free_device:
            self.sequences.free_stay(stay)
        if pending.direction == "out":
            self.host_copies.finish_swap_out(pending.seq_id, pending.num_full_blocks)
        else:
            self.host_copies.finish_swap_in(pending.seq_id)  # keeps full blocks with kv_reuse, else frees
        if pending.drop_host:
            self.host_copies.drop(pending.seq_id)
            return []
        self.sequences.record(pending.seq_id).in_flight = None
        return [pending.seq_id] if pending.direction == "in" else []

    def _pending_of(self, handle: CopyHandle) -> PendingCopy:
        return next(p for p in self._pending if p.handle is handle)
