"""The swap manager: where each sequence's KV lives, and the copies that move it.

It implements the scheduler's `KVSpace` (fastswitch/sched/kv_space.py) over two `BlockManager`s
(device pool, host pool) and a `CopyEngine`. Each sequence is on the device or on the host, with at
most one copy in flight. Blocks under an in-flight copy are never handed out again before it
completes: a swap-out's device blocks, a swap-in's host blocks when they are not kept, and the
blocks of a sequence dropped (aborted, recomputed) mid-copy are freed by `poll` once the copy is
done. A sequence preempted while its swap-in is in flight simply goes back to its host copy, which
is still whole; the device blocks the swap-in was filling are freed when it lands.

Block ids are keyed by (seq_id, epoch) in the block managers: a sequence that comes back to a pool
while blocks of its previous stay there still await a copy gets a fresh key, so the two never mix.

KV reuse (`kv_reuse=True`): after a swap-in the host copy is kept. Its first
`host_valid_tokens // block_size` blocks stay identical to the device's (tokens are only appended),
so the next swap-out of the sequence copies only the blocks after them. Under host-memory pressure
kept copies are dropped, least recently swapped-in first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyEngine, CopyHandle, CopyJob, pair_runs, slice_runs


@dataclass
class SequenceKV:
    location: str  # "device" or "host"
    device_key: tuple | None = None
    host_key: tuple | None = None
    num_tokens: int = 0  # tokens the host copy holds, set at swap-out
    host_valid_tokens: int = 0  # leading tokens of the kept host copy still equal to the device's
    in_flight: CopyHandle | None = None
    last_swap_in: int = 0  # LRU order of kept host copies


@dataclass
class PendingCopy:
    handle: CopyHandle
    seq_id: Hashable
    direction: str
    free_device: list[tuple] = field(default_factory=list)
    free_host: list[tuple] = field(default_factory=list)


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
    ) -> None:
        if device.block_size != host.block_size:
            raise ValueError(f"device block_size={device.block_size} differs from host block_size={host.block_size}")
        self.device = device
        self.host = host
        self.copy_engine = copy_engine
        self.num_layers = num_layers
        self.block_bytes = block_bytes
        self.asynchronous = asynchronous
        self.kv_reuse = kv_reuse
        self.per_layer = not device.block_groups  # vLLM's granularity: one call per block per layer per K/V
        self.clock = clock
        self.block_size = device.block_size
        self.stats = SwapStats()
        self._seqs: dict[Hashable, SequenceKV] = {}
        self._pending: list[PendingCopy] = []
        self._epoch = 0
        self._swap_in_counter = 0

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

    def can_swap_out(self, seq_id: Hashable, num_tokens: int) -> bool:
        entry = self._entry(seq_id)
        if entry.location != "device":
            return False
        if entry.in_flight is not None:
            return True  # back to its host copy, nothing to copy
        needed = self._host_blocks_needed(entry, num_tokens)
        while needed > self.host.num_free:
            if not self._drop_lru_host_copy(exclude=seq_id):
                return False
        return True

    def swap_out(self, seq_id: Hashable, num_tokens: int, blocking: bool) -> None:
        entry = self._entry(seq_id)
        if entry.location != "device":
            raise ValueError(f"cannot swap out {seq_id!r}: it is on the {entry.location}")
        if entry.in_flight is not None:
            # Preempted while its swap-in lands: the host copy is whole; free the device side later.
            pending = self._pending_of(entry.in_flight)
            pending.free_device.append(entry.device_key)
            entry.location, entry.device_key = "host", None
            return
        if not self.can_swap_out(seq_id, num_tokens):
            raise ValueError(f"host pool has {self.host.num_free} free blocks, too few to swap out {seq_id!r}")
        total = self.device.blocks_for_tokens(num_tokens)
        skip = 0
        if self.kv_reuse and entry.host_key is not None:
            skip = min(entry.host_valid_tokens, num_tokens) // self.block_size
        else:
            self._free_host(entry)
            entry.host_key = self._new_key(seq_id)
        self.host.ensure_capacity(entry.host_key, num_tokens)
        src = slice_runs(self.device.groups(entry.device_key), skip, total)
        dst = slice_runs(self.host.groups(entry.host_key), skip, total)
        job = self._job("out", src, dst)
        self.stats.swap_out_count += 1
        self.stats.swap_out_blocks += job.num_blocks
        self.stats.swap_out_bytes += job.num_bytes
        self.stats.reused_blocks += skip
        self.stats.reused_bytes += skip * self.block_bytes
        pending = PendingCopy(self.copy_engine.submit(job), seq_id, "out", free_device=[entry.device_key])
        entry.location, entry.device_key = "host", None
        entry.num_tokens = entry.host_valid_tokens = num_tokens
        self._track(entry, pending, blocking)

    def swap_in(self, seq_id: Hashable, blocking: bool) -> None:
        entry = self._entry(seq_id)
        if entry.location != "host" or entry.in_flight is not None:
            raise ValueError(f"cannot swap in {seq_id!r}: location={entry.location}, copy in flight={entry.in_flight is not None}")
        needed = self.device.blocks_for_tokens(entry.num_tokens)
        if needed > self.device.num_free:
            raise ValueError(f"swap-in of {seq_id!r} needs {needed} device blocks, only {self.device.num_free} free")
        entry.device_key = self._new_key(seq_id)
        self.device.ensure_capacity(entry.device_key, entry.num_tokens)
        src = self.host.groups(entry.host_key)
        src = slice_runs(src, 0, needed)
        dst = self.device.groups(entry.device_key)
        job = self._job("in", src, dst)
        self.stats.swap_in_count += 1
        self.stats.swap_in_blocks += job.num_blocks
        self.stats.swap_in_bytes += job.num_bytes
        pending = PendingCopy(self.copy_engine.submit(job), seq_id, "in")
        self._swap_in_counter += 1
        entry.last_swap_in = self._swap_in_counter
        entry.location = "device"
        self._track(entry, pending, blocking)

    def drop(self, seq_id: Hashable) -> None:
        entry = self._seqs.pop(seq_id, None)
        if entry is None:
            return
        if entry.in_flight is not None:
            pending = self._pending_of(entry.in_flight)
            pending.free_device += [k for k in (entry.device_key,) if k is not None]
            pending.free_host += [k for k in (entry.host_key,) if k is not None]
            return
        if entry.device_key is not None:
            self.device.free(entry.device_key)
        self._free_host(entry)

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

    def _job(self, direction: str, src: list, dst: list) -> CopyJob:
        job = CopyJob(direction, tuple(pair_runs(src, dst)), self.per_layer, self.num_layers, self.block_bytes)
        self.stats.copy_calls += job.num_calls
        return job

    def _track(self, entry: SequenceKV, pending: PendingCopy, blocking: bool) -> None:
        self._pending.append(pending)
        entry.in_flight = pending.handle
        if blocking or not self.asynchronous:
            start = self.clock()
            pending.handle.wait()
            self.stats.swap_wait_time += self.clock() - start
            self.stats.blocking_swaps += 1
            self._retire(pending)

    def _retire(self, pending: PendingCopy) -> list[Hashable]:
        pending.handle.wait()  # done already; surfaces a failed copy
        self._pending.remove(pending)
        for key in pending.free_device:
            self.device.free(key)
        for key in pending.free_host:
            self.host.free(key)
        entry = self._seqs.get(pending.seq_id)
        if entry is None or entry.in_flight is not pending.handle:
            return []
        entry.in_flight = None
        if pending.direction != "in" or entry.location != "device":
            return []
        if not self.kv_reuse:
            # Without reuse the host copy goes once the device copy is whole. (A request preempted
            # while its swap-in was in flight is back on the host and keeps it.)
            self._free_host(entry)
        return [pending.seq_id]

    def _pending_of(self, handle: CopyHandle) -> PendingCopy:
        return next(p for p in self._pending if p.handle is handle)

    def _host_blocks_needed(self, entry: SequenceKV, num_tokens: int) -> int:
        if self.kv_reuse and entry.host_key is not None:
            return self.host.blocks_needed(entry.host_key, num_tokens)
        return self.host.blocks_for_tokens(num_tokens)

    def _drop_lru_host_copy(self, exclude: Hashable) -> bool:
        kept = [
            (e.last_swap_in, seq_id)
            for seq_id, e in self._seqs.items()
            if seq_id != exclude and e.location == "device" and e.host_key is not None and e.in_flight is None
        ]
        if not kept:
            return False
        _, seq_id = min(kept)
        self._free_host(self._seqs[seq_id])
        self.stats.host_copies_dropped += 1
        return True

    def _free_host(self, entry: SequenceKV) -> None:
        if entry.host_key is not None:
            self.host.free(entry.host_key)
        entry.host_key, entry.host_valid_tokens = None, 0

    def _new_key(self, seq_id: Hashable) -> tuple:
        self._epoch += 1
        return (seq_id, self._epoch)

    def _entry(self, seq_id: Hashable) -> SequenceKV:
        entry = self._seqs.get(seq_id)
        if entry is None:
            raise ValueError(f"unknown sequence {seq_id!r}: it holds no KV")
        return entry
