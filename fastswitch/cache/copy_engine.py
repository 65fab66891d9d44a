"""Copy engines: who moves KV blocks between the device pool and the host pool, and when.

This is the second seam of the engine (the executor is the first). The swap manager decides which
blocks move where and hands a `CopyJob` to a `CopyEngine`, which returns a `CopyHandle` to poll or
wait on. Implementations:

- `TorchCopyEngine` (here): real copies between two `KVCache` tensors. Synchronous; or on a worker
  thread (CPU); or on a dedicated CUDA stream with an event per job (GPU), so that copies overlap
  the forward pass on the default stream.
- the simulator's virtual-clock engine (fastswitch/sim), which prices a job from its calls and bytes.

A job's granularity follows the config: `per_layer=False` moves each (source run, destination run)
pair in one call (block groups, block-major layout); `per_layer=True` issues one call per block per
layer per K/V, as vLLM 0.3.3 does. A `packed` job is a fragmented device side against one contiguous
host range: the pack kernel gathers the device runs into a staging tensor (or unpack scatters it)
and a single call crosses the link. `CopyJob.num_calls` counts link calls in every case.
"""

from __future__ import annotations

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

    def close(self) -> None: ...


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
    def __init__(self, event: "torch.cuda.Event") -> None:
        self.event = event

    def done(self) -> bool:
        return self.event.query()

    def wait(self) -> None:
        self.event.synchronize()


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

    def submit(self, job: CopyJob) -> CopyHandle:
        if self._stream is not None:
            # The side stream must see every KV write the forward has queued so far.
            self._stream.wait_stream(torch.cuda.current_stream(self.device_cache.device))
            with torch.cuda.stream(self._stream):
                self._run(job, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            return _EventHandle(event)
        if self._worker is not None:
            return _FutureHandle(self._worker.submit(self._run, job, False))
        self._run(job, non_blocking=False)
        return _DoneHandle()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        if self._stream is not None:
            self._stream.synchronize()

    def _run(self, job: CopyJob, non_blocking: bool) -> None:
        if job.packed:
            self._run_packed(job, non_blocking)
            return
        src, dst = (self.device_cache.data, self.host_cache.data)
        if job.direction == "in":
            src, dst = dst, src
        for pair in job.pairs:
            if not job.per_layer:
                dst[pair.dst : pair.dst + pair.length].copy_(src[pair.src : pair.src + pair.length], non_blocking=non_blocking)
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
            unpack_blocks(host_range.to(device.device, non_blocking=non_blocking), device, job.device_runs, backend=backend)
