"""The measurements behind a CPU profile: step timings and their fits, copy costs, contention.

On a CPU neither roofline of the cost model holds (decode is not memory-bound, Python overhead is a
large part of a small step), so the forward is priced by a measured line instead, and the host-side
costs the simulator charges are measured beside it. `fastswitch.sim.cpu_calibration` puts these
together into a profile.

- `traced_steps`: while a workload replays through an engine (real or simulated), records per step
  the batch ((new tokens, cached tokens) per sequence), the seconds of the executor's `execute`
  (on the real engine: model and sampler) and the rest of the step (scheduler, bookkeeping): the
  host time; on request also copies of the step's chunks, to run the same batch again later.
- `fit_linear_steps`: non-negative least squares of forward microseconds on `step_features`
  (1, tokens, sequences, attended pairs / 1,000, more than one token) -> `linear_step_us`.
  Unweighted: on a shared machine one batch takes 3 ms or 15 ms as other processes take the core or
  not, and a fit of relative errors would follow the fast mode; this one follows the mean.
- `fit_host_time`: the same on [1, sequences] for the host time -> `scheduler_step_us`, `scheduler_seq_us`.
- `jitter_factors`: quantiles of measured / fitted step time (host + forward) -> `step_jitter`, which
  the simulator draws from per step, so that the spread of step times (and with it P90 TBT) is the
  measured one and not only their mean.
- `measure_copy_costs`: synchronous `TorchCopyEngine` jobs of one call per block per layer per K/V
  and of whole runs; seconds on [calls, bytes] -> `copy_call_cpu_us` and the copy rate. On a CPU
  both pools are host memory and the issuing thread does the copy itself, so all per-call time is
  host CPU time (`copy_call_latency_us` = 0).
- `measure_contention`: a fixed Python loop on this thread, alone and while a copy thread issues
  per-layer copies without pause; the slowdown over the loop's time with copies -> `copy_thread_contention`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import nnls

from fastswitch.cache.copy_engine import CopyJob, CopyPair, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.sched.request import ScheduledChunk
from fastswitch.sim.cost_model import linear_step_time_us, step_features


@dataclass(frozen=True)
class StepTiming:
    batch: tuple[tuple[int, int], ...]  # (new tokens, cached tokens) per sequence
    forward_s: float
    host_s: float
    chunks: tuple[ScheduledChunk, ...] = ()  # copies of the step's chunks, when the trace keeps them


@contextmanager
def traced_steps(engine, keep_chunks: bool = False) -> Iterator[list[StepTiming]]:
    """Within the block, every step of engine that runs a batch appends its StepTiming to the list
    yielded. keep_chunks: also keep copies of each step's chunks (their requests are shared, in the
    state they reach later)."""
    executor = engine.executor
    execute, step = executor.execute, engine.step
    timings: list[StepTiming] = []
    current: dict = {}

    def timed_execute(chunks: list[ScheduledChunk]):
        started = time.perf_counter()
        sampled = execute(chunks)
        ended = time.perf_counter()
        current["batch"] = tuple((len(c.token_ids), c.num_cached) for c in chunks)
        current["chunks"] = (tuple(replace(c, token_ids=list(c.token_ids), block_table=list(c.block_table))
                                   for c in chunks) if keep_chunks else ())  # fmt: skip
        current["forward"] = ended - started
        current["tracing"] = time.perf_counter() - ended  # not the engine's time: left out of the host time
        return sampled

    def timed_step():
        current.clear()
        started = time.perf_counter()
        outputs = step()
        total = time.perf_counter() - started
        if current:
            host = max(total - current["forward"] - current["tracing"], 0.0)
            timings.append(StepTiming(current["batch"], current["forward"], host, current["chunks"]))
        return outputs

    executor.execute, engine.step = timed_execute, timed_step
    try:
        yield timings
    finally:
        executor.execute, engine.step = execute, step


JITTER_QUANTILES = 33  # factors kept in step_jitter: 0%, 3.125%, ..., 100%
NUM_LINEAR_TERMS = len(step_features(()))


def fit_linear_steps(timings: Sequence[StepTiming]) -> tuple[float, ...]:
    """linear_step_us (fixed, per token, per sequence, per 1,000 attended pairs, more than one token)
    from timed forwards."""
    if len(timings) < NUM_LINEAR_TERMS:
        raise ValueError(f"{len(timings)} timed steps cannot fit {NUM_LINEAR_TERMS} coefficients; time more steps")
    rows = np.array([step_features(t.batch) for t in timings])
    coefficients, _ = nnls(rows, np.array([t.forward_s * 1e6 for t in timings]))
    return tuple(float(c) for c in coefficients)


def fit_host_time(timings: Sequence[StepTiming]) -> tuple[float, float]:
    """(scheduler_step_us, scheduler_seq_us) from the host time of timed steps."""
    if len(timings) < 2:
        raise ValueError(f"{len(timings)} timed steps cannot fit 2 coefficients")
    rows = np.array([[1.0, float(len(t.batch))] for t in timings])
    (step_us, seq_us), _ = nnls(rows, np.array([t.host_s * 1e6 for t in timings]))
    return float(step_us), float(seq_us)


def jitter_factors(timings: Sequence[StepTiming], linear_step_us: Sequence[float],
                   host_us: tuple[float, float]) -> tuple[float, ...]:  # fmt: skip
    """Quantiles of each timed step's (host + forward) time over what the fitted lines price it at."""
    ratios = []
    for t in timings:
        priced = linear_step_time_us(linear_step_us, t.batch) + host_us[0] + host_us[1] * len(t.batch)
        ratios.append((t.forward_s + t.host_s) * 1e6 / max(priced, 1e-3))
    return tuple(float(q) for q in np.quantile(ratios, np.linspace(0.0, 1.0, JITTER_QUANTILES)))


def _copy_pools(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype, num_blocks: int = 64):
    device = KVCache(num_blocks, num_layers, block_size, num_kv_heads, head_dim, dtype, torch.device("cpu"))
    return device, KVCache.host_pool_for(device, num_blocks)


def _per_layer_job(blocks: int, device: KVCache) -> CopyJob:
    return CopyJob("out", (CopyPair(0, 0, blocks),), True, device.num_layers, device.block_bytes)


def measure_copy_costs(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype,
                       repeats: int = 5) -> tuple[float, float]:  # fmt: skip
    """(CPU microseconds per copy call, bytes per second) of synchronous copies between two host pools."""
    device, host = _copy_pools(num_layers, block_size, num_kv_heads, head_dim, dtype)
    engine = TorchCopyEngine(device, host)
    jobs = [_per_layer_job(n, device) for n in (1, 4, 16)]
    jobs += [CopyJob("out", (CopyPair(0, 0, n),), False, num_layers, device.block_bytes) for n in (1, 8, 32, 64)]
    rows, seconds = [], []
    for job in jobs:
        engine.submit(job)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            engine.submit(job)
            times.append(time.perf_counter() - started)
        rows.append([float(job.num_calls), float(job.num_bytes)])
        seconds.append(statistics.median(times))
    (per_call, per_byte), _ = nnls(np.array(rows), np.array(seconds))
    engine.close()
    if per_byte <= 0:
        raise ValueError("copy times do not grow with the bytes copied: measurements too noisy")
    return float(per_call * 1e6), float(1.0 / per_byte)


def _python_work(iterations: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i % 7
    return time.perf_counter() - started


def measure_contention(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype,
                       iterations: int = 300_000, repeats: int = 3) -> float:  # fmt: skip
    """Share of a copy thread's issue time that a Python thread beside it loses, in [0, 1]."""
    device, host = _copy_pools(num_layers, block_size, num_kv_heads, head_dim, dtype)
    engine = TorchCopyEngine(device, host)
    job = _per_layer_job(8, device)
    alone = min(_python_work(iterations) for _ in range(repeats))
    stop = threading.Event()

    def copy_without_pause() -> None:
        while not stop.is_set():
            engine.submit(job)

    thread = threading.Thread(target=copy_without_pause, daemon=True)
    thread.start()
    try:
        beside = min(_python_work(iterations) for _ in range(repeats))
    finally:
        stop.set()
        thread.join()
        engine.close()
    return float(min(max((beside - alone) / beside, 0.0), 1.0))
