"""Tensor-free stand-ins for the engine's two seams, that still catch corrupted KV.

The "KV" of a token is the token id itself, stored in paged slots of a device and a host pool. The
executor writes each chunk's tokens into the slots of its block table, reads the whole context back
from the slots and samples a deterministic function of it; a swap that copied the wrong blocks, or a
block reused before its copy completed, changes what is read back and so the output. Copies run only
when the test completes their handle (in any order it likes), or when the swap manager waits.
"""

from __future__ import annotations

import random

from fastswitch.cache.copy_engine import CopyJob

VOCAB = 97


def next_token(context: list[int]) -> int:
    return sum((i + 1) * t for i, t in enumerate(context)) * 2654435761 % VOCAB


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


class TokenPools:
    def __init__(self, num_device_blocks: int, num_host_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.device = [-1] * (num_device_blocks * block_size)
        self.host = [-1] * (num_host_blocks * block_size)


class ManualHandle:
    def __init__(self, engine: ManualCopyEngine, job: CopyJob) -> None:
        self.engine, self.job, self.completed = engine, job, False

    def done(self) -> bool:
        return self.completed

    def wait(self) -> None:
        if not self.completed:
            self.engine.complete(self)


class ManualCopyEngine:
    def __init__(self, pools: TokenPools, seconds_per_byte: float | None = None) -> None:
        self.pools = pools
        self.seconds_per_byte = seconds_per_byte  # None: no estimate, the scheduler's block-count fallback
        self.in_flight: list[ManualHandle] = []
        self.jobs: list[CopyJob] = []

    def submit(self, job: CopyJob) -> ManualHandle:
        handle = ManualHandle(self, job)
        self.in_flight.append(handle)
        self.jobs.append(job)
        return handle

    def estimated_seconds(self, direction: str, num_bytes: int, num_calls: int) -> float | None:
        return None if self.seconds_per_byte is None else num_bytes * self.seconds_per_byte

    def complete(self, handle: ManualHandle) -> None:
        bs = self.pools.block_size
        src, dst = (self.pools.device, self.pools.host)
        if handle.job.direction == "in":
            src, dst = dst, src
        for pair in handle.job.pairs:
            dst[pair.dst * bs : (pair.dst + pair.length) * bs] = src[pair.src * bs : (pair.src + pair.length) * bs]
        handle.completed = True
        self.in_flight.remove(handle)

    def complete_some(self, rng: random.Random, fraction: float = 0.5) -> None:
        for handle in [h for h in self.in_flight if rng.random() < fraction]:
            self.complete(handle)

    def close(self) -> None:
        for handle in list(self.in_flight):
            self.complete(handle)


class TokenStoreExecutor:
    def __init__(self, pools: TokenPools) -> None:
        self.pools = pools
        self.clock = 0.0

    def now(self) -> float:
        return self.clock

    def release(self, request_id: str) -> None:
        pass

    def execute(self, chunks) -> list[int | None]:
        bs = self.pools.block_size
        slot = lambda table, pos: table[pos // bs] * bs + pos % bs  # noqa: E731
        sampled = []
        for chunk in chunks:
            for i, token in enumerate(chunk.token_ids):
                self.pools.device[slot(chunk.block_table, chunk.num_cached + i)] = token
            end = chunk.num_cached + len(chunk.token_ids)
            context = [self.pools.device[slot(chunk.block_table, p)] for p in range(end)]
            sampled.append(next_token(context) if chunk.sample else None)
        self.clock += 0.01 + 0.001 * sum(len(c.token_ids) for c in chunks)
        return sampled


def make_engine(config, num_layers: int = 2, max_model_len: int = 4096, manual: bool = True, seconds_per_byte=None):
    """An Engine over the token pools; returns (engine, pools, copy engine)."""
    from fastswitch.engine import Engine

    num_cpu = config.num_cpu_blocks or 4 * config.num_gpu_blocks
    pools = TokenPools(config.num_gpu_blocks, num_cpu, config.block_size)
    copies = ManualCopyEngine(pools, seconds_per_byte)
    engine = Engine(
        config, TokenStoreExecutor(pools), copies, num_gpu_blocks=config.num_gpu_blocks, num_cpu_blocks=num_cpu,
        num_layers=num_layers, block_bytes=1000, max_model_len=max_model_len, vocab_size=VOCAB,
    )
    return engine, pools, copies
