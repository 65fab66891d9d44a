"""Priority traces (sched/priority_trace.py): levels as a function of time, fixed by the workload's seed.

The trace must not depend on how a system runs: it is a pure function of its definition whatever
times it is read at, and in what order; both presets replaying one workload record the same digest.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from fastswitch.config import EngineConfig
from fastswitch.sched.priority_trace import PriorityTrace
from fastswitch.sched.request import Request
from fastswitch.sim.hardware import get_profile
from fastswitch.sim.model_shapes import get_model_shape
from fastswitch.sim.simulator import simulate
from fastswitch.sim.workload_driver import priority_trace_of
from fastswitch.workloads import synthetic_sharegpt

SEQUENCES = [("conv0", 0.0, 1), ("conv1", 2.5, 3), ("conv2", 7.0, 0)]


def trace(pattern="random", seed=0, sequences=SEQUENCES, update_freq=0.04) -> PriorityTrace:
    return PriorityTrace(sequences, seed, pattern, 4, update_freq)


@pytest.mark.parametrize("pattern", ["random", "markov"])
def test_levels_do_not_depend_on_when_or_in_what_order_they_are_read(pattern):
    times = [0.0, 1.0, 2.5, 3.0, 9.9, 30.0, 100.0, 400.0]
    forward, backward = trace(pattern), trace(pattern)
    ahead = {(k, t): forward.level_at(k, t) for k, _, _ in SEQUENCES for t in times}
    behind = {(k, t): backward.level_at(k, t) for k, _, _ in reversed(SEQUENCES) for t in reversed(times)}
    assert ahead == behind
    assert forward.level_at("conv1", 2.4) is None and forward.level_at("conv9", 5.0) is None
    assert [forward.level_at(k, s) for k, s, _ in SEQUENCES] == [level for _, _, level in SEQUENCES]
    # Read far ahead or not at all, the digest is the same.
    assert forward.digest() == backward.digest() == trace(pattern).digest()


def test_the_digest_changes_with_the_seed_the_pattern_the_rate_and_the_conversations():
    base = trace().digest()
    assert len(base) == 64
    assert trace(seed=1).digest() != base
    assert trace("markov").digest() != base
    assert trace(update_freq=0.02).digest() != base
    assert trace(sequences=SEQUENCES[:2]).digest() != base


@pytest.mark.parametrize("pattern", ["random", "markov"])
def test_redraws_come_at_the_rate_and_move_as_the_pattern_says(pattern):
    many = PriorityTrace([(f"c{i}", 0.0, 2) for i in range(50)], 3, pattern, 4, 0.04)
    horizon = 200.0  # 0.04 / 50 ms = 0.8 re-draws per second: 160 expected per conversation
    counts = [many.index_at(key, horizon) for key in many.keys()]
    expected = many.rate * horizon * len(counts)
    assert many.rate == pytest.approx(0.8)
    assert abs(sum(counts) - expected) < 4 * math.sqrt(expected)  # Poisson: within four sigma
    levels = [level for key in many.keys() for _, level in many.change_points(key, 100)]
    assert set(levels) == {0, 1, 2, 3}
    if pattern == "markov":
        for key in many.keys():
            points = [level for _, level in many.change_points(key, 100)]
            assert all(abs(a - b) <= 1 for a, b in zip(points, points[1:]))
            assert any(a == b for a, b in zip(points, points[1:]))  # it stays half the time


def test_a_trace_rejects_a_bad_definition():
    with pytest.raises(ValueError, match="priority_update_freq=0"):
        PriorityTrace(SEQUENCES, 0, "random", 4, 0.0)
    with pytest.raises(ValueError, match="priority_pattern='gauss'"):
        PriorityTrace(SEQUENCES, 0, "gauss", 4, 0.04)
    with pytest.raises(ValueError, match="appears twice"):
        PriorityTrace(SEQUENCES + SEQUENCES[:1], 0, "random", 4, 0.04)
    with pytest.raises(ValueError, match="first level -1"):
        PriorityTrace([("c", 0.0, -1)], 0, "random", 4, 0.04)


def small_workload(seed: int):
    return synthetic_sharegpt(num_conversations=10, rate=4.0, seed=seed, mean_prompt_tokens=60,
                              mean_response_tokens=40, think_time_mean=0.5, max_context_tokens=600)  # fmt: skip


def config(preset: str, **overrides) -> EngineConfig:
    settings = dict(num_gpu_blocks=40, num_cpu_blocks=400, max_model_len=640, policy="priority",
                    priority_update_freq=0.2, seed=1, scheduler_mode="vllm-0.3.3")  # fmt: skip
    return EngineConfig.from_preset(preset, **{**settings, **overrides})


def test_the_trace_of_a_workload_is_a_pure_function_of_the_workload_and_the_priority_settings():
    vllm, fastswitch = config("vllm"), config("fastswitch", scheduler_mode="chunked", seed=9)
    digest = priority_trace_of(small_workload(3), vllm).digest()
    assert priority_trace_of(small_workload(3), fastswitch).digest() == digest  # presets, modes, engine seeds
    assert priority_trace_of(small_workload(4), vllm).digest() != digest
    assert priority_trace_of(small_workload(3), config("vllm", priority_pattern="markov")).digest() != digest
    assert priority_trace_of(small_workload(3), config("vllm", priority_update_freq=0.0)) is None
    unseeded = dataclasses.replace(small_workload(3), seed=None)  # built by hand: nothing to draw from
    assert priority_trace_of(unseeded, vllm) is None


def test_both_presets_replaying_one_seed_record_the_same_trace():
    llama, a10 = get_model_shape("llama-3-8b"), get_profile("a10")
    runs = {p: simulate(config(p), llama, a10, small_workload(3)) for p in ("vllm", "fastswitch")}
    digests = {p: r["priority_trace_digest"] for p, r in runs.items()}
    assert digests["vllm"] == digests["fastswitch"] == priority_trace_of(small_workload(3), config("vllm")).digest()
    assert runs["vllm"]["num_steps"] != runs["fastswitch"]["num_steps"]  # the systems run differently
    assert all(r["num_priority_updates"] > 0 for r in runs.values())
    other = simulate(config("vllm"), llama, a10, small_workload(4))
    assert other["priority_trace_digest"] != digests["vllm"]


def test_the_per_iteration_reading_stays_an_option_of_the_replay():
    from fastswitch.sim.simulator import build_simulated_engine
    from fastswitch.sim.workload_driver import replay

    sim = build_simulated_engine(config("fastswitch"), get_model_shape("llama-3-8b"), get_profile("a10"))
    replay(sim.engine, small_workload(3), sim.clock.advance_to, priority_trace=False)
    stats = sim.engine.stats()
    assert stats["priority_trace_digest"] is None
    assert stats["num_priority_updates"] == sim.engine.scheduler.priority_updater.num_updates > 0


def test_an_engine_takes_only_a_trace_drawn_for_its_settings():
    from fastswitch.sim.simulator import build_simulated_engine

    sim = build_simulated_engine(config("fastswitch"), get_model_shape("llama-3-8b"), get_profile("a10"))
    with pytest.raises(ValueError, match=r"drawn for \(pattern, levels, update_freq\)=\('random', 4, 0.04\)"):
        sim.engine.use_priority_trace(trace(), origin=0.0)
    assert sim.engine.stats()["priority_trace_digest"] is None
    good = PriorityTrace(SEQUENCES, 0, "random", 4, 0.2)
    sim.engine.use_priority_trace(good, origin=10.0)
    request = Request("r", [1, 2], None, arrival_time=0.0, seq_id="conv1", priority=0)
    sim.engine.scheduler.priority_trace.apply([request], now=10.0 + 50.0)
    assert request.priority == good.level_at("conv1", 50.0)
    assert sim.engine.stats()["priority_trace_digest"] == good.digest()
