"""The tensor-parallel worker process: one rank's model shard, KV shard, host pool and copies.

Started by `WorkerGroup` with the spawn method. It joins the process group, loads its slice of the
model, allocates its caches when told how many blocks rank 0 has, then handles messages in order
until `Stop` (or until the engine's end of the pipe closes: the engine is gone, so is the worker).
Its copies go through its own `TorchCopyEngine` between its own device shard and host pool, so a
block group moves in one copy call on every rank. Any exception is sent back as `Failed` before the
process exits, so the engine can name it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from fastswitch.cache.copy_engine import CopyHandle, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.models.loader import load_model
from fastswitch.models.runner import ModelRunner
from fastswitch.parallel.group import connect
from fastswitch.parallel.messages import Build, Failed, Ready, StatsRequest, Step, Stop
from fastswitch.parallel.partition import Partition


@dataclass(frozen=True)
class WorkerSettings:
    source: str | Path | PreTrainedModel  # what load_model takes: a checkpoint folder or a transformers model
    dtype: str | torch.dtype
    device_type: str  # "cpu" or "cuda"; rank r uses cuda:r
    num_threads: int

    def device(self, rank: int) -> torch.device:
        return torch.device("cuda", rank) if self.device_type == "cuda" else torch.device("cpu")


class WorkerState:
    """What one worker holds once built, and how it handles a step."""

    def __init__(self, model, build: Build) -> None:
        self.device_cache = KVCache(
            build.num_gpu_blocks, model.num_layers, build.block_size, model.num_kv_heads, model.head_dim,
            model.dtype, model.device,
        )  # fmt: skip
        self.host_cache = KVCache.host_pool_for(self.device_cache, build.num_cpu_blocks)
        self.runner = ModelRunner(model, self.device_cache, backend=build.attention_backend)
        self.copies = TorchCopyEngine(self.device_cache, self.host_cache, asynchronous=build.async_swap)
        self.in_flight: dict[int, CopyHandle] = {}
        self.stats = {"steps": 0, "copy_jobs": 0, "copy_calls": 0, "copy_blocks": 0, "forked_blocks": 0}

    @torch.inference_mode()
    def step(self, message: Step) -> None:
        for src, dst in message.block_copies:
            self.device_cache.copy_blocks(src, dst)
            self.stats["forked_blocks"] += len(dst)
        for job_id, job in message.copies:
            self.in_flight[job_id] = self.copies.submit(job)
            self.stats["copy_jobs"] += 1
            self.stats["copy_calls"] += job.num_calls
            self.stats["copy_blocks"] += job.num_blocks
        for job_id in message.completed:
            self.in_flight.pop(job_id).wait()
        if message.chunks:
            self.runner.run(message.chunks)  # rank 0 alone computes logits
            self.stats["steps"] += 1

    def close(self) -> None:
        for handle in self.in_flight.values():
            handle.wait()
        self.copies.close()


def worker_main(rank: int, size: int, port: int, settings: WorkerSettings, conn) -> None:
    """Entry point of rank `rank` (1 .. size-1); conn is its end of the pipe to rank 0."""
    try:
        torch.set_num_threads(settings.num_threads)
        device = settings.device(rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        group = connect(None, rank, size, port, device)
        partition = Partition(rank, size, group)
        loaded = load_model(settings.source, settings.dtype, device, progress=False, partition=partition)
        conn.send(Ready())
        state = WorkerState(loaded.model, conn.recv())
        conn.send(Ready())
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the engine's process is gone
                break
            if isinstance(message, Step):
                state.step(message)
            elif isinstance(message, StatsRequest):
                conn.send(dict(state.stats))
            elif isinstance(message, Stop):
                break
            else:
                raise TypeError(f"unexpected message {message!r}")
        state.close()
    except BaseException:  # every failure is reported, then the process exits non-zero
        try:
            conn.send(Failed(rank, traceback.format_exc()))
        except (OSError, EOFError):
            pass
        raise SystemExit(1) from None
