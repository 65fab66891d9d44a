"""Copy engines: who moves KV blocks between the device pool and the host pool, and when.

This is the second seam of the engine (the executor is the first). The swap manager decides which
blocks move where and hands a `CopyJob` to a `CopyEngine`, which returns a `CopyHandle` to poll or
wait on. Implementations:

- `TorchCopyEngine` (here): real copies between two `KVCache` tensors. Synchronous; or on a worker
  thread (CPU); or on a dedicated CUDA stream with an event per job (GPU), so that copies overlap
  the forward pass on the default stream.
- the simulator's virtual-clock engine (fastswitch/sim), which prices a job from its calls and bytes.

Both also estimate what a copy would take (`estimated_seconds`), which the swap manager turns into
the estimate of a sequence's next swap for the adaptive wait-or-overlap rule (sched/adaptive_swap.py):
the simulator exactly from its cost model, `TorchCopyEngine` from the copies it has timed
(`CopyTimeModel`).

A job's granularity follows the config: `per_layer=False` moves each (source run, destination run)
pair in one call (block groups, block-major layout); `per_layer=True` issues one call per block per
layer per K/V, as vLLM 0.3.3 does. A `packed` job is a fragmented device side against one contiguous
host range: the pack kernel gathers the device runs into a staging tensor (or unpack scatters it)
and a single call crosses the link. `CopyJob.num_calls` counts link calls in every case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from fastswitch.cache.kv_cache import KVCache
from fastswitch.kernels import pack_blocks, unpack_blocks


@dataclass(frozen=True)
class CopyPair:
    src: int  # first source block
    dst: int  # first destination block
    length: int  # blocks; both ranges are contiguous


@dataclass(frozen=True)
class CopyJob:
    direction: Literal["out", "in"]  # out: device -> host (swap-out); in: host -> device
    pairs: tuple[CopyPair, ...]
    per_layer: bool
    num_layers: int
    block_bytes: int  # one block, all layers, K and V
    packed: bool = False  # device runs gathered/scattered by the pack kernel around one host copy

    @property
    def num_blocks(self) -> int:
        return sum(p.length for p in self.pairs)

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def num_calls(self) -> int:
        if self.packed:
            return 1
        return self.num_blocks * self.num_layers * 2 if self.per_layer else len(self.pairs)

    @property
    def device_runs(self) -> list[tuple[int, int]]:
        return [(p.src if self.direction == "out" else p.dst, p.length) for p in self.pairs]

    @property
    def host_start(self) -> int:
        """First host block of a packed job, whose host side is one contiguous range."""
        first = self.pairs[0]
        return first.dst if self.direction == "out" else first.src


class CopyHandle(Protocol):
    def done(self) -> bool:
        """True once the copy has completed (never blocks)."""

    def wait(self) -> None:
        """Blocks until the copy has completed; re-raises a failure of the copy."""


class CopyEngine(Protocol):
    def submit(self, job: CopyJob) -> CopyHandle: ...

    def estimated_seconds(self, direction: str, num_bytes: int, num_calls: int) -> float | None:
        """Seconds a copy of num_bytes in num_calls calls should take ("out" or "in"); None: no idea yet."""

    def close(self) -> None: ...


class CopyTimeModel:
    """Learns seconds = per_call * calls + per_byte * bytes from timed copies of one direction.

    An exponentially weighted least-squares fit (every copy's weight decays by 1 - `weight` per newer
    copy, so the newest carries about a `weight` share of the fit), so the estimate follows a link
    whose speed drifts (a busy CPU, a shared PCIe switch). Thread-safe: copies are timed on the copy
    worker while the scheduler reads estimates on the stepping thread.
    """

    def __init__(self, weight: float = 0.2) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight={weight!r} must lie in (0, 1]")
        self.weight = weight
        self.num_observed = 0
        self.seconds_per_call = 0.0
        self.seconds_per_byte = 0.0
        # Weighted sums of x x^T and x t, with x = (calls, bytes) and t = seconds.
        self._cc = self._cb = self._bb = self._ct = self._bt = 0.0
        self._lock = threading.Lock()

    def observe(self, num_calls: int, num_bytes: int, seconds: float) -> None:
        if num_calls <= 0 or num_bytes < 0 or seconds < 0:
            raise ValueError(f"a timed copy needs num_calls > 0, num_bytes >= 0, seconds >= 0: got "
                             f"{num_calls}, {num_bytes}, {seconds}")  # fmt: skip
        keep, c, b = 1.0 - self.weight, float(num_calls), float(num_bytes)
        with self._lock:
            self._cc = keep * self._cc + c * c
            self._cb = keep * self._cb + c * b
            self._bb = keep * self._bb + b * b
            self._ct = keep * self._ct + c * seconds
            self._bt = keep * self._bt + b * seconds
            self.num_observed += 1
            self.seconds_per_call, self.seconds_per_byte = self._fit()

    def estimate(self, num_calls: int, num_bytes: int) -> float | None:
        with self._lock:
            if self.num_observed == 0:
                return None
            return self.seconds_per_call * num_calls + self.seconds_per_byte * num_bytes

    def _fit(self) -> tuple[float, float]:
        det = self._cc * self._bb - self._cb * self._cb
        # Copies all of one shape (bytes proportional to calls) cannot tell the two costs apart; any
        # split predicts such copies equally well, so charge it all to bytes, the one that scales
        # (or to calls, for copies that moved no bytes).
        if det > 1e-9 * self._cc * self._bb:
            per_call = (self._bb * self._ct - self._cb * self._bt) / det
            per_byte = (self._cc * self._bt - self._cb * self._ct) / det
            if per_call >= 0 and per_byte >= 0:
                return per_call, per_byte
            if per_byte < 0:  # a negative cost is noise around zero: refit with the other alone
                return self._ct / self._cc, 0.0
        return (0.0, self._bt / self._bb) if self._bb > 0 else (self._ct / self._cc, 0.0)


class _DoneHandle:
    def done(self) -> bool:
        return True

    def wait(self) -> None:
        pass


class _FutureHandle:
    def __init__(self, future: Future) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def wait(self) -> None:
        self.future.result()


class _EventHandle:
    """A copy on the side stream between two timing events; reports its duration once it is done."""

    def __init__(self, start: torch.cuda.Event, end: torch.cuda.Event, on_done: Callable[[float], None]) -> None:
        self.start, self.end = start, end
        self._on_done: Callable[[float], None] | None = on_done

    def done(self) -> bool:
        if not self.end.query():
            return False
        self._report()
        return True

    def wait(self) -> None:
        self.end.synchronize()
        self._report()

    def _report(self) -> None:
        if self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done(self.start.elapsed_time(self.end) / 1e3)  # elapsed_time is in milliseconds


class TorchCopyEngine:
    """Copies between a device KVCache and a host KVCache of the same block shape."""

    def __init__(self, device_cache: KVCache, host_cache: KVCache, asynchronous: bool = False) -> None:
        if device_cache.data.shape[1:] != host_cache.data.shape[1:] or device_cache.dtype != host_cache.dtype:
            raise ValueError(
                f"device and host pools differ in block shape or dtype: {tuple(device_cache.data.shape[1:])} "
                f"{device_cache.dtype} vs {tuple(host_cache.data.shape[1:])} {host_cache.dtype}"
            )
        self.device_cache = device_cache
        self.host_cache = host_cache
        self.asynchronous = asynchronous
        on_cuda = device_cache.data.is_cuda
        self._stream = torch.cuda.Stream(device_cache.device) if asynchronous and on_cuda else None
        # One worker keeps jobs in submission order, as one CUDA stream would.
        self._worker = ThreadPoolExecutor(1, "fastswitch-swap") if asynchronous and not on_cuda else None
        self.timing = {"out": CopyTimeModel(), "in": CopyTimeModel()}  # learnt per direction of the link

    def submit(self, job: CopyJob) -> CopyHandle:
        if self._stream is not None:
            # The side stream must see every KV write the forward has queued so far.
            self._stream.wait_stream(torch.cuda.current_stream(self.device_cache.device))
            with torch.cuda.stream(self._stream):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(self._stream)
                self._run(job, non_blocking=True)
                end.record(self._stream)
            return _EventHandle(start, end, lambda seconds: self._observe(job, seconds))
        if self._worker is not None:
            return _FutureHandle(self._worker.submit(self._run_timed, job))
        self._run_timed(job)
        return _DoneHandle()

    def estimated_seconds(self, direction: str, num_bytes: int, num_calls: int) -> float | None:
        if direction not in self.timing:
            raise ValueError(f"direction={direction!r} is not one of {tuple(self.timing)}")
        return self.timing[direction].estimate(num_calls, num_bytes)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        if self._stream is not None:
            self._stream.synchronize()

    def _run_timed(self, job: CopyJob) -> None:
        started = time.perf_counter()
        self._run(job, non_blocking=False)
        self._observe(job, time.perf_counter() - started)

    def _observe(self, job: CopyJob, seconds: float) -> None:
        if job.num_calls:
            self.timing[job.direction].observe(job.num_calls, job.num_bytes, seconds)

    def _run(self, job: CopyJob, non_blocking: bool) -> None:
        if job.packed:
            self._run_packed(job, non_blocking)
            return
        src, dst = (self.device_cache.data, self.host_cache.data)
        if job.direction == "in":
            src, dst = dst, src
        for pair in job.pairs:
            if not job.per_layer:
                source = src[pair.src : pair.src + pair.length]
                dst[pair.dst : pair.dst + pair.length].copy_(source, non_blocking=non_blocking)
                continue
            for b in range(pair.length):
                for layer in range(job.num_layers):
                    for kv in (0, 1):
                        dst[pair.dst + b, layer, kv].copy_(src[pair.src + b, layer, kv], non_blocking=non_blocking)

    def _run_packed(self, job: CopyJob, non_blocking: bool) -> None:
        # Staging tensors are made on the stream that uses them, so the allocator never hands their
        # memory out again before that stream is past them.
        device, host = self.device_cache.data, self.host_cache.data
        backend = "auto" if device.is_cuda else "torch"
        host_range = host[job.host_start : job.host_start + job.num_blocks]
        if job.direction == "out":
            host_range.copy_(pack_blocks(device, job.device_runs, backend=backend), non_blocking=non_blocking)
        else:
            staged = host_range.to(device.device, non_blocking=non_blocking)
            unpack_blocks(staged, device, job.device_runs, backend=backend)
