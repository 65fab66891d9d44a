"""Calibration of a CPU profile from the real engine: forward time, host time per step, copy costs.

On a CPU neither roofline of the cost model holds (decode is not memory-bound, Python overhead is a
large part of a small step), so the forward is priced by a measured line instead, and the host-side
costs the simulator charges are measured beside it:

- `trace_engine_run`: runs a workload through a real engine and records, per step, the batch
  ((new tokens, cached tokens) per sequence), the forward's seconds (the executor's `execute`:
  model and sampler) and the rest of the step (scheduler, bookkeeping): the host time. The run
  should not swap (a pool large enough), so that no copy hides in the host time.
- `fit_linear_steps`: non-negative least squares of forward microseconds on [1, tokens, sequences,
  attended pairs / 1,000] -> `linear_step_us`. Unweighted: on a shared machine one batch takes 3 ms
  or 15 ms as other processes take the core or not, and a fit of relative errors would follow the
  fast mode; this one follows the mean.
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from fastswitch.cache.copy_engine import CopyJob, CopyPair, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.sim.cost_model import attended_pairs
from fastswitch.sim.hardware import GB, HardwareProfile


@dataclass(frozen=True)
class StepTiming:
    batch: tuple[tuple[int, int], ...]  # (new tokens, cached tokens) per sequence
    forward_s: float
    host_s: float


def trace_engine_run(engine, workload, wait_until) -> list[StepTiming]:
    """Replays workload through engine (a real fastswitch Engine on the wall clock) and times every step
    that ran a batch."""
    from fastswitch.sim.workload_driver import replay

    executor = engine.executor
    execute, step = executor.execute, engine.step
    timings: list[StepTiming] = []
    current: dict = {}

    def timed_execute(chunks):
        started = time.perf_counter()
        sampled = execute(chunks)
        current["batch"] = tuple((len(c.token_ids), c.num_cached) for c in chunks)
        current["forward"] = time.perf_counter() - started
        return sampled

    def timed_step():
        current.clear()
        started = time.perf_counter()
        outputs = step()
        total = time.perf_counter() - started
        if current:
            timings.append(StepTiming(current["batch"], current["forward"], max(total - current["forward"], 0.0)))
        return outputs

    executor.execute, engine.step = timed_execute, timed_step
    try:
        replay(engine, workload, wait_until)
    finally:
        executor.execute, engine.step = execute, step
    return timings


JITTER_QUANTILES = 33  # factors kept in step_jitter: 0%, 3.125%, ..., 100%


def step_features(batch: Sequence[tuple[int, int]]) -> list[float]:
    """[1, tokens, sequences, attended pairs / 1,000]: the regressors of `linear_step_us`."""
    tokens = sum(new for new, _ in batch)
    pairs = sum(attended_pairs(new, cached) for new, cached in batch)
    return [1.0, float(tokens), float(len(batch)), pairs / 1000.0]


def fit_linear_steps(timings: Sequence[StepTiming]) -> tuple[float, float, float, float]:
    """linear_step_us (fixed, per token, per sequence, per 1,000 attended pairs) from timed forwards."""
    if len(timings) < 4:
        raise ValueError(f"{len(timings)} timed steps cannot fit 4 coefficients; run a longer workload")
    rows = np.array([step_features(t.batch) for t in timings])
    coefficients, _ = nnls(rows, np.array([t.forward_s * 1e6 for t in timings]))
    return tuple(float(c) for c in coefficients)  # type: ignore[return-value]


def fit_host_time(timings: Sequence[StepTiming]) -> tuple[float, float]:
    """(scheduler_step_us, scheduler_seq_us) from the host time of timed steps."""
    if len(timings) < 2:
        raise ValueError(f"{len(timings)} timed steps cannot fit 2 coefficients")
    rows = np.array([[1.0, float(len(t.batch))] for t in timings])
    (step_us, seq_us), _ = nnls(rows, np.array([t.host_s * 1e6 for t in timings]))
    return float(step_us), float(seq_us)


def jitter_factors(timings: Sequence[StepTiming], linear_step_us, host_us: tuple[float, float]) -> tuple[float, ...]:
    """Quantiles of each timed step's (host + forward) time over what the fitted lines price it at."""
    ratios = []
    for t in timings:
        priced = float(np.dot(step_features(t.batch), linear_step_us)) + host_us[0] + host_us[1] * len(t.batch)
        ratios.append((t.forward_s + t.host_s) * 1e6 / max(priced, 1e-3))
    return tuple(float(q) for q in np.quantile(ratios, np.linspace(0.0, 1.0, JITTER_QUANTILES)))


def _copy_pools(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype, num_blocks: int = 64):
    device = KVCache(num_blocks, num_layers, block_size, num_kv_heads, head_dim, dtype, torch.device("cpu"))
    return device, KVCache.host_pool_for(device, num_blocks)


def _per_layer_job(blocks: int, device: KVCache, direction: str = "out") -> CopyJob:
    return CopyJob(direction, (CopyPair(0, 0, blocks),), True, device.num_layers, device.block_bytes)


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


def cpu_profile(name: str, model, timings: Sequence[StepTiming], block_size: int) -> HardwareProfile:
    """A profile of this CPU for model: the fitted forward line and its jitter, host time, copy costs
    and contention.
    The roofline fields only need to be valid (a linear profile never reads them): they hold the
    measured copy rate and a nominal 1 TFLOP/s."""
    args = (model.num_layers, block_size, model.num_kv_heads, model.head_dim, model.dtype)
    per_call_us, copy_rate = measure_copy_costs(*args)
    contention = measure_contention(*args)
    step_us, seq_us = fit_host_time(timings)
    linear = fit_linear_steps(timings)
    rate_gbs = copy_rate / GB
    return HardwareProfile(
        name, peak_tflops=1.0, memory_bandwidth_gbs=rate_gbs, memory_gib=1.0, h2d_gbs=rate_gbs, d2h_gbs=rate_gbs,
        copy_call_latency_us=0.0, step_overhead_us=0.0, copy_call_cpu_us=per_call_us,
        copy_thread_contention=contention, scheduler_step_us=step_us, scheduler_seq_us=seq_us,
        linear_step_us=linear, step_jitter=jitter_factors(timings, linear, (step_us, seq_us)),
    )  # fmt: skip
