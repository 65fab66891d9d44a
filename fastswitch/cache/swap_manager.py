"""The swap manager: where each sequence's KV lives, and the copies that move it.

It implements the scheduler's `KVSpace` (fastswitch/sched/kv_space.py) over the device pool's
`BlockManager`, the host pool's `HostReuseTracker` (cache/reuse.py, which owns the host blocks and
decides what a swap-out may skip) and a `CopyEngine`. Each sequence is on the device or on the host,
with at most one copy in flight. Blocks under an in-flight copy are never handed out again before it
completes: a swap-out's device blocks are freed by `poll` once its copy is done, and a sequence
dropped (aborted, recomputed) mid-copy gives its blocks back only when the copy lands. A request is
runnable only once its swap-in has landed (`is_ready`), and a sequence is swapped in again only once
its swap-out is whole.

Device blocks are keyed by (seq_id, epoch) in the block manager: a sequence that comes back to the
device while blocks of its previous stay still await a copy gets a fresh key, so the two never mix.

KV reuse (`kv_reuse=True`): the tracker keeps the host copy after a swap-in; its full blocks stay
identical to the device's (tokens are only appended), so the next swap-out of the sequence copies
only the blocks after them. Under host-memory pressure the tracker drops kept copies, least
recently used first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from fastswitch.cache.block_manager import BlockManager, copy_runs
from fastswitch.cache.copy_engine import CopyEngine, CopyHandle, CopyJob, CopyPair
from fastswitch.cache.reuse import HostReuseTracker


@dataclass
class SequenceKV:
    location: str  # "device" or "host"
    device_key: tuple | None = None
    num_tokens: int = 0  # tokens the host copy holds, set at swap-out
    in_flight: CopyHandle | None = None


@dataclass
class PendingCopy:
    handle: CopyHandle
    seq_id: Hashable
    direction: str  # "out" or "in"
    num_full_blocks: int = 0  # a swap-out's full blocks: reusable once it lands
    free_device: list[tuple] = field(default_factory=list)
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
        self.host_copies = HostReuseTracker(host, keep_after_swap_in=kv_reuse)
        self.copy_engine = copy_engine
        self.num_layers = num_layers
        self.block_bytes = block_bytes
        self.asynchronous = asynchronous
        self.kv_reuse = kv_reuse
        self.per_layer = not device.block_groups  # vLLM's granularity: one call per block per layer per K/V
        self.clock = clock
        self.pack_min_runs = pack_min_runs
        self.block_size = device.block_size
        self.stats = SwapStats()
        self._seqs: dict[Hashable, SequenceKV] = {}
        self._pending: list[PendingCopy] = []
        self._epoch = 0

    # ---- what the scheduler reads -----------------------------------------------------------

    @property
    def num_free_device_blocks(self) -> int:
        return self.device.num_free

    @property
    def num_device_blocks(self) -> int:
        return self.device.num_blocks

    @property
    def num_pending_free_blocks(self) -> int:
        return sum(self.device.num_blocks_of(key) for p in self._pending for key in p.free_device)

    @property
    def num_in_flight(self) -> int:
        return len(self._pending)

    def location(self, seq_id: Hashable) -> str:
        entry = self._seqs.get(seq_id)
        return "none" if entry is None else entry.location

    def is_ready(self, seq_id: Hashable) -> bool:
        entry = self._seqs.get(seq_id)
        return entry is not None and entry.in_flight is None

    def num_blocks_of(self, seq_id: Hashable) -> int:
        entry = self._entry(seq_id)
        if entry.location == "device":
            return self.device.num_blocks_of(entry.device_key)
        return self.host.blocks_for_tokens(entry.num_tokens)

    def device_blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        entry = self._seqs.get(seq_id)
        if entry is not None and entry.location == "device":
            return self.device.blocks_needed(entry.device_key, num_tokens)
        return self.device.blocks_for_tokens(num_tokens)

    def estimated_swap_time(self, seq_id: Hashable) -> float | None:
        """Seconds the next swap of seq_id (out from the device, or in from the host) should take, by
        the copy engine's estimate; None while the copy engine has nothing to estimate from."""
        entry = self._entry(seq_id)
        if entry.location == "device":
            blocks = self.device.block_table(entry.device_key)
            blocks = blocks[min(self.host_copies.reusable_blocks(seq_id), len(blocks)) :]  # kept on the host
            direction = "out"
        else:
            blocks = self.host.block_table(seq_id)[: self.host.blocks_for_tokens(entry.num_tokens)]
            direction = "in"
        if not blocks:
            return 0.0
        return self.copy_engine.estimated_seconds(direction, len(blocks) * self.block_bytes, self._num_calls(blocks))

    def block_table(self, seq_id: Hashable) -> list[int]:
        entry = self._entry(seq_id)
        if entry.location != "device":
            raise ValueError(f"sequence {seq_id!r} is not on the device (it is on the {entry.location})")
        return self.device.block_table(entry.device_key)

    # ---- what the scheduler does ------------------------------------------------------------

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        entry = self._seqs.get(seq_id)
        if entry is None:
            needed = self.device.blocks_for_tokens(num_tokens)
            if needed > self.device.num_free:
                raise ValueError(
                    f"sequence {seq_id!r} needs {needed} blocks for {num_tokens} tokens, only {self.device.num_free} free"
                )
            entry = self._seqs[seq_id] = SequenceKV("device", device_key=self._new_key(seq_id))
        elif entry.location != "device" or entry.in_flight is not None:
            raise ValueError(f"sequence {seq_id!r} is not ready on the device (location={entry.location})")
        self.device.ensure_capacity(entry.device_key, num_tokens)
        return self.device.block_table(entry.device_key)

    def fork(self, parent: Hashable, child: Hashable, num_tokens: int) -> tuple[list[int], list[int]] | None:
        """Gives child, a new sequence, device blocks for parent's first num_tokens tokens (parent must
        be on the device, ready). Returns (parent's blocks, child's blocks) for the caller to copy
        block for block, or None, changing nothing, when too few device blocks are free."""
        entry = self._entry(parent)
        if entry.location != "device" or entry.in_flight is not None:
            raise ValueError(f"cannot fork {parent!r}: location={entry.location}, copy in flight={entry.in_flight is not None}")
        if child in self._seqs:
            raise ValueError(f"cannot fork into {child!r}: it already holds KV")
        needed = self.device.blocks_for_tokens(num_tokens)
        if needed > self.device.num_blocks_of(entry.device_key):
            raise ValueError(f"{parent!r} holds {self.device.num_blocks_of(entry.device_key)} blocks, fewer than {num_tokens} tokens need")
        if needed > self.device.num_free:
            return None
        key = self._new_key(child)
        self.device.ensure_capacity(key, num_tokens)
        self._seqs[child] = SequenceKV("device", device_key=key)
        return self.device.block_table(entry.device_key)[:needed], self.device.block_table(key)

    def can_swap_out(self, seq_id: Hashable, num_tokens: int) -> bool:
        entry = self._entry(seq_id)
        if entry.location != "device" or entry.in_flight is not None:
            return False
        copy = self.host_copies.record(seq_id)
        if copy is not None and not copy.evictable:
            return False  # an earlier stay's copy is still landing (the sequence was dropped meanwhile)
        # The tracker's own admission rule: new blocks must fit in free + evictable host blocks.
        num_blocks = self.device.blocks_for_tokens(num_tokens)
        reused = min(self.host_copies.reusable_blocks(seq_id), num_blocks)
        held = self.host.num_blocks_of(seq_id) if self.host.has(seq_id) else 0
        short = (num_blocks - reused) - (self.host.num_free + held - reused)
        return short <= self.host_copies.evictable_blocks(keep=seq_id)

    def swap_out(self, seq_id: Hashable, num_tokens: int, blocking: bool) -> None:
        entry = self._entry(seq_id)
        if not self.can_swap_out(seq_id, num_tokens):
            raise ValueError(
                f"cannot swap out {seq_id!r}: location={entry.location}, copy in flight={entry.in_flight is not None}, "
                f"host num_free={self.host.num_free}"
            )
        num_blocks = self.device.blocks_for_tokens(num_tokens)
        plan = self.host_copies.begin_swap_out(seq_id, num_blocks)
        src = self.device.block_table(entry.device_key)[plan.first_block : num_blocks]
        job = self._job("out", src, plan.host_blocks)
        self.stats.swap_out_count += 1
        self.stats.swap_out_blocks += job.num_blocks
        self.stats.swap_out_bytes += job.num_bytes
        self.stats.reused_blocks += plan.first_block
        self.stats.reused_bytes += plan.first_block * self.block_bytes
        self.stats.host_copies_dropped += len(plan.evicted)
        submitted_at = self.clock()  # a synchronous engine copies inside submit: time it from here
        pending = PendingCopy(
            self.copy_engine.submit(job), seq_id, "out",
            num_full_blocks=num_tokens // self.block_size, free_device=[entry.device_key],
        )
        entry.location, entry.device_key, entry.num_tokens = "host", None, num_tokens
        self._track(entry, pending, blocking, submitted_at)

    def swap_in(self, seq_id: Hashable, blocking: bool) -> None:
        entry = self._entry(seq_id)
        if entry.location != "host" or entry.in_flight is not None:
            raise ValueError(f"cannot swap in {seq_id!r}: location={entry.location}, copy in flight={entry.in_flight is not None}")
        needed = self.device.blocks_for_tokens(entry.num_tokens)
        if needed > self.device.num_free:
            raise ValueError(f"swap-in of {seq_id!r} needs {needed} device blocks, only {self.device.num_free} free")
        host_blocks = self.host_copies.begin_swap_in(seq_id)
        entry.device_key = self._new_key(seq_id)
        self.device.ensure_capacity(entry.device_key, entry.num_tokens)
        job = self._job("in", host_blocks[:needed], self.device.block_table(entry.device_key))
        self.stats.swap_in_count += 1
        self.stats.swap_in_blocks += job.num_blocks
        self.stats.swap_in_bytes += job.num_bytes
        submitted_at = self.clock()
        pending = PendingCopy(self.copy_engine.submit(job), seq_id, "in")
        entry.location = "device"
        self._track(entry, pending, blocking, submitted_at)

    def drop(self, seq_id: Hashable) -> None:
        entry = self._seqs.pop(seq_id, None)
        if entry is None:
            return
        if entry.in_flight is not None:
            pending = self._pending_of(entry.in_flight)
            if entry.device_key is not None:
                pending.free_device.append(entry.device_key)
            pending.drop_host = True
            return
        if entry.device_key is not None:
            self.device.free(entry.device_key)
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

    def _job(self, direction: str, src_blocks: list[int], dst_blocks: list[int]) -> CopyJob:
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
        for key in pending.free_device:
            self.device.free(key)
        if pending.direction == "out":
            self.host_copies.finish_swap_out(pending.seq_id, pending.num_full_blocks)
        else:
            self.host_copies.finish_swap_in(pending.seq_id)  # keeps full blocks with kv_reuse, else frees
        if pending.drop_host:
            self.host_copies.drop(pending.seq_id)
            return []
        entry = self._seqs[pending.seq_id]
        entry.in_flight = None
        return [pending.seq_id] if pending.direction == "in" else []

    def _pending_of(self, handle: CopyHandle) -> PendingCopy:
        return next(p for p in self._pending if p.handle is handle)

    def _new_key(self, seq_id: Hashable) -> tuple:
        self._epoch += 1
        return (seq_id, self._epoch)

    def _entry(self, seq_id: Hashable) -> SequenceKV:
        entry = self._seqs.get(seq_id)
        if entry is None:
            raise ValueError(f"unknown sequence {seq_id!r}: it holds no KV")
        return entry
