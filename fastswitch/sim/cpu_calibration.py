"""A CPU profile for a real model in about a minute: the model timed on the batches the scheduler makes.

Replaying a calibration workload on the real engine on the wall clock takes as long as the workload
lasts (arrivals and think times included: ~19 minutes for SmolLM2-135M). Here only the forwards are
timed, on the batch shapes that matter, in four steps (`CpuCalibrator`):

1. copy costs and their contention with this thread are measured (`measure_copy_costs`,
   `measure_contention`), and a few fixed batches (`PROBE_BATCHES`) give a rough forward line;
2. each calibration run (an engine config and a workload) replays in the simulator on that rough
   profile, traced step by step (`traced_steps`, keeping each step's chunks): the batches its
   scheduler makes, and the scheduler's own wall time per step, which is the host time of a real
   step (the simulated engine runs the same scheduler code; only the executor and copies are virtual);
3. a seeded draw of those steps, per kind (`step_kind`) in proportion to how often the kind occurs
   and at least `MIN_PER_KIND` of each, so the line sees single-token steps, decode batches and
   steps with a multi-token chunk alike;
4. `measure(label)`, a timing session: each drawn batch runs once through the real `ModelExecutor`
   (forward and sampler, what a real step's `execute` does) on a KV pool of zeros (attention costs
   the same whatever the values). Sessions can be taken before, between and after real runs;
   `load_factor` says how much slower one session's steps were than another's (a change of machine
   load), and `profile` fits one from any of them: the forward line (5 coefficients) from each
   batch's median time over the sessions, the step-time jitter from all their timings, the host
   time from the simulated trace, copy costs from step 1.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from fastswitch.cache.kv_cache import KVCache
from fastswitch.config import EngineConfig
from fastswitch.executor import ModelExecutor
from fastswitch.models.runner import ModelRunner
from fastswitch.models.sampling import Sampler
from fastswitch.parallel.messages import StepChunk
from fastswitch.sched.request import ScheduledChunk
from fastswitch.sim.hardware import GB, HardwareProfile
from fastswitch.sim.host_calibration import (
    NUM_LINEAR_TERMS,
    StepTiming,
    fit_host_time,
    fit_linear_steps,
    jitter_factors,
    measure_contention,
    measure_copy_costs,
    traced_steps,
)
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.simulator import build_simulated_engine
from fastswitch.sim.workload_driver import replay
from fastswitch.workloads import Workload

# (new tokens, cached tokens) per sequence: one token, decode batches, prefills, and a mixed step.
PROBE_BATCHES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((1, 64),), ((1, 128),) * 4, ((1, 128),) * 8, ((16, 0),), ((64, 0),), ((128, 0),), ((64, 0), (1, 128), (1, 128)),
)  # fmt: skip
BATCHES_PER_SESSION = 48
MIN_PER_KIND = 4
STEP_KINDS = ("one token", "decode batch", "multi-token chunk")


def step_kind(batch: Sequence[tuple[int, int]]) -> str:
    """"one token" (a single decode), "decode batch" (several sequences, one token each) or "multi-token
    chunk" (a prefill or a prefill piece in the step)."""
    if any(new > 1 for new, _ in batch):
        return STEP_KINDS[2]
    return STEP_KINDS[0] if len(batch) == 1 else STEP_KINDS[1]


def draw_steps(steps: Sequence[StepTiming], count: int, rng: random.Random) -> list[StepTiming]:
    """About count of steps, drawn per kind in proportion to the kind's share and at least MIN_PER_KIND
    (or all) of each kind present."""
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    by_kind: dict[str, list[StepTiming]] = {kind: [] for kind in STEP_KINDS}
    for step in steps:
        by_kind[step_kind(step.batch)].append(step)
    drawn: list[StepTiming] = []
    for kind in STEP_KINDS:
        members = by_kind[kind]
        quota = min(len(members), max(MIN_PER_KIND, round(count * len(members) / len(steps))))
        drawn += rng.sample(members, quota)
    return drawn


@dataclass(frozen=True)
class TimingSession:
    """One pass over the drawn batches on the real model."""

    label: str
    started_utc: str  # ISO 8601
    load_average: tuple[float, float, float]  # os.getloadavg() at the start: 1, 5, 15 minutes
    seconds: float  # the session's wall time
    timings: tuple[StepTiming, ...]  # one per drawn batch, in draw order: forward timed now, host from the trace


class CpuCalibrator:
    """Calibrates a CPU profile for model from the batches that runs (engine config, workload) make."""

    def __init__(self, model, shape: ModelShape, runs: Sequence[tuple[EngineConfig, Workload]], max_model_len: int,
                 batches_per_session: int = BATCHES_PER_SESSION, seed: int = 0) -> None:  # fmt: skip
        """model: a LlamaForServing on the CPU; shape: its ModelShape (the simulated runs' KV sizes)."""
        if not runs:
            raise ValueError("runs is empty: give at least one (engine config, workload) to draw batches from")
        if batches_per_session < NUM_LINEAR_TERMS:
            raise ValueError(f"batches_per_session={batches_per_session} cannot fit {NUM_LINEAR_TERMS} coefficients")
        block_sizes = {config.block_size for config, _ in runs}
        if len(block_sizes) != 1:
            raise ValueError(f"the runs' configs have block sizes {sorted(block_sizes)}; calibrate one at a time")
        self.block_size = block_sizes.pop()
        self.model = model
        args = (model.num_layers, self.block_size, model.num_kv_heads, model.head_dim, model.dtype)
        self.copy_call_cpu_us, self.copy_rate = measure_copy_costs(*args)
        self.contention = measure_contention(*args)

        probe_cache = self._cache(PROBE_BATCHES)
        probe_runner = ModelRunner(model, probe_cache, backend="torch")
        probe = [StepTiming(batch, self._time_probe(probe_runner, batch), 0.0) for batch in PROBE_BATCHES]
        rough = self._profile("probe", probe, probe, probe)

        self.traced: list[StepTiming] = []
        for config, workload in runs:
            sim = build_simulated_engine(config, shape, rough, max_model_len=max_model_len)
            with traced_steps(sim.engine, keep_chunks=True) as steps:
                replay(sim.engine, workload, sim.clock.advance_to)
            sim.engine.close()
            self.traced += steps
        if len(self.traced) < NUM_LINEAR_TERMS:
            raise ValueError(f"the calibration runs made {len(self.traced)} steps; give longer workloads")
        self.drawn = draw_steps(self.traced, batches_per_session, random.Random(seed))
        self._batches = [self._packed(step.chunks) for step in self.drawn]
        cache = self._cache([step.batch for step in self.drawn])
        self.executor = ModelExecutor(ModelRunner(model, cache, backend="torch"), Sampler(), seed)
        for kind in STEP_KINDS:  # warm-up: the first call of each path allocates and dispatches
            first = next((i for i, step in enumerate(self.drawn) if step_kind(step.batch) == kind), None)
            if first is not None:
                self.executor.execute(self._batches[first])

    def _blocks(self, new: int, cached: int) -> int:
        return -(-(new + cached) // self.block_size)

    def _cache(self, batches: Sequence[Sequence[tuple[int, int]]]) -> KVCache:
        """A pool of zeros that holds the largest batch, each sequence in its own consecutive blocks."""
        num_blocks = max(sum(self._blocks(new, cached) for new, cached in batch) for batch in batches)
        m = self.model
        return KVCache(num_blocks, m.num_layers, self.block_size, m.num_kv_heads, m.head_dim, m.dtype, m.device)

    def _packed(self, chunks: Sequence[ScheduledChunk]) -> list[ScheduledChunk]:
        """chunks with block tables renumbered onto consecutive blocks from 0 (the pool of `_cache`)."""
        packed, start = [], 0
        for chunk in chunks:
            count = self._blocks(len(chunk.token_ids), chunk.num_cached)
            packed.append(replace(chunk, block_table=list(range(start, start + count))))
            start += count
        return packed

    def _time_probe(self, runner: ModelRunner, batch: Sequence[tuple[int, int]]) -> float:
        chunks, start = [], 0
        for new, cached in batch:
            count = self._blocks(new, cached)
            chunks.append(StepChunk([1] * new, cached, list(range(start, start + count))))
            start += count
        runner.forward(chunks)  # warm-up
        started = time.perf_counter()
        runner.forward(chunks)
        return time.perf_counter() - started

    def measure(self, label: str) -> TimingSession:
        """One timing session: every drawn batch once, through the real executor."""
        started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
        load = os.getloadavg()
        started = time.perf_counter()
        timings = []
        for step, chunks in zip(self.drawn, self._batches):
            begin = time.perf_counter()
            self.executor.execute(chunks)
            timings.append(StepTiming(step.batch, time.perf_counter() - begin, step.host_s))
        return TimingSession(label, started_utc, load, time.perf_counter() - started, tuple(timings))

    def profile(self, name: str, sessions: Sequence[TimingSession]) -> HardwareProfile:
        """The profile fitted from sessions: the forward line from each drawn batch's median time over
        them (with three or more, a burst of load during one does not move it), the jitter from all
        their timings (the spread of step times as the load came and went)."""
        if not sessions:
            raise ValueError("sessions is empty: take one with measure() first")
        medians = [replace(timings[0], forward_s=statistics.median(t.forward_s for t in timings))
                   for timings in zip(*(s.timings for s in sessions))]  # fmt: skip
        return self._profile(name, medians, [t for s in sessions for t in s.timings], self.traced)

    def _profile(self, name: str, forwards: Sequence[StepTiming], spread: Sequence[StepTiming],
                 hosts: Sequence[StepTiming]) -> HardwareProfile:  # fmt: skip
        """The forward line from forwards, the jitter from spread, the host time from hosts, the copy
        costs measured. The roofline fields only need to be valid (a linear profile never reads them):
        they hold the measured copy rate and a nominal 1 TFLOP/s."""
        linear = fit_linear_steps(forwards)
        step_us, seq_us = fit_host_time(hosts)
        rate_gbs = self.copy_rate / GB
        return HardwareProfile(
            name, peak_tflops=1.0, memory_bandwidth_gbs=rate_gbs, memory_gib=1.0, h2d_gbs=rate_gbs, d2h_gbs=rate_gbs,
            copy_call_latency_us=0.0, step_overhead_us=0.0, copy_call_cpu_us=self.copy_call_cpu_us,
            copy_thread_contention=self.contention, scheduler_step_us=step_us, scheduler_seq_us=seq_us,
            linear_step_us=linear, step_jitter=jitter_factors(spread, linear, (step_us, seq_us)),
        )  # fmt: skip


def load_factor(session: TimingSession, reference: TimingSession) -> float:
    """Median over the drawn batches of session's forward time over reference's: 1.3 means the same
    batches ran 30% slower (the machine was busier). Both must come from one CpuCalibrator."""
    if len(session.timings) != len(reference.timings):
        raise ValueError(f"sessions {session.label!r} and {reference.label!r} timed different batch sets "
                         f"({len(session.timings)} and {len(reference.timings)})")  # fmt: skip
    return statistics.median(s.forward_s / r.forward_s for s, r in zip(session.timings, reference.timings))
