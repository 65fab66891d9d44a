"""Host-side costs in the simulator: copy issue time, its contention with the stepping thread, and
the scheduler's time per step, each charged where it falls (fastswitch/sim/cost_model.py)."""

import dataclasses
import json

import pytest

from fastswitch.config import EngineConfig
from fastswitch.sim.clock import HostContention
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import get_profile
from fastswitch.sim.model_shapes import get_model_shape
from fastswitch.sim.simulator import simulate
from fastswitch.workloads import Conversation, Turn, Workload

LLAMA = get_model_shape("llama-3-8b")
A10 = get_profile("a10")
# Twelve one-turn requests at t=0 in a pool for about three: preemptions and swaps are certain, and
# with no arrivals after t=0 the schedule cannot depend on how long anything took.
BURST = Workload("burst", tuple(Conversation(i, i, 0.0, (Turn(150, 60, 0.0),)) for i in range(12)))


def config(preset: str) -> EngineConfig:
    return EngineConfig.from_preset(preset, num_gpu_blocks=40, num_cpu_blocks=800, max_model_len=512,
                                    policy="priority", priority_update_freq=0.3, seed=3)  # fmt: skip


def test_a_per_call_cost_makes_a_synchronous_run_slower_by_calls_times_cost():
    base = simulate(config("vllm"), LLAMA, A10, BURST)
    cost_us = 3.0
    charged = simulate(config("vllm"), LLAMA, A10.replace(copy_call_cpu_us=cost_us), BURST)
    assert base["copy_calls"] > 1000 and charged["copy_calls"] == base["copy_calls"]
    assert charged["num_steps"] == base["num_steps"]  # the same schedule
    extra = base["copy_calls"] * cost_us * 1e-6
    # Every vllm swap is waited for, so all the issue time lies on the critical path.
    assert charged["executor_idle_on_swaps"] - base["executor_idle_on_swaps"] == pytest.approx(extra, rel=1e-6)
    assert charged["simulated_time_s"] - base["simulated_time_s"] == pytest.approx(extra, rel=1e-6)


def test_scheduler_time_is_charged_per_step_and_per_sequence():
    base = simulate(config("fastswitch"), LLAMA, A10, BURST)
    charged = simulate(config("fastswitch"), LLAMA, A10.replace(scheduler_step_us=200.0, scheduler_seq_us=10.0), BURST)
    assert charged["num_forwards"] == base["num_forwards"]
    assert charged["num_batched_tokens"] == base["num_batched_tokens"]
    assert base["host_time_s"] == 0.0
    seq_steps = charged["host_time_s"] * 1e6 - 200.0 * charged["num_forwards"]  # the per-sequence part
    assert seq_steps > 0 and seq_steps / 10.0 == pytest.approx(round(seq_steps / 10.0), abs=1e-3)
    assert charged["simulated_time_s"] > base["simulated_time_s"] + 200e-6 * base["num_forwards"] * 0.9


def test_copy_threads_beside_the_stepping_thread_cost_it_a_share_of_their_issue_time():
    hw = A10.replace(copy_call_cpu_us=50.0, copy_thread_contention=0.5)
    quiet = simulate(config("fastswitch"), LLAMA, hw.replace(copy_thread_contention=0.0), BURST)
    contended = simulate(config("fastswitch"), LLAMA, hw, BURST)
    assert quiet["host_time_s"] == 0.0
    # Only copies that overlapped (not waited for) are owed; at most half of all issue time.
    assert 0 < contended["host_time_s"] <= 0.5 * contended["copy_calls"] * 50e-6 + 1e-12


def test_contention_owed_by_a_waited_copy_is_forgiven():
    owed = HostContention()
    owed.add(1, 0.5)
    owed.add(2, 0.25)
    owed.forgive(1)
    assert owed.take() == 0.25 and owed.take() == 0.0 and owed.total_charged == 0.25
    with pytest.raises(ValueError, match="seconds=-1"):
        owed.add(3, -1)


def test_a_linear_step_model_replaces_the_roofline():
    cpu = A10.replace(linear_step_us=(100.0, 2.0, 30.0, 5.0))
    model = CostModel(LLAMA, cpu)
    # 2 sequences: 10 new tokens on 0 cached (55 pairs) and 1 new on 99 cached (100 pairs).
    assert model.forward_time([(10, 0), (1, 99)]) == pytest.approx((100 + 2 * 11 + 30 * 2 + 5 * 155 / 1000) * 1e-6)
    with pytest.raises(ValueError, match="linear_step_us"):
        A10.replace(linear_step_us=(1.0, -2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="4 or 5 coefficients"):
        A10.replace(linear_step_us=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0))


STEPS = [[(1, 0)], [(1, 500)], [(1, 10), (1, 20)], [(2, 7)], [(40, 0)], [(40, 0), (1, 300)], [(1, 5)] * 8]


def test_a_four_coefficient_profile_loads_and_prices_steps_as_before(tmp_path):
    """Profiles fitted before the 5th coefficient: same JSON, same step times (the 4-term formula)."""
    path = tmp_path / "old-cpu.json"
    path.write_text(json.dumps({**dataclasses.asdict(A10), "name": "old-cpu", "linear_step_us": [900, 40, 150, 0.7]}))
    old = get_profile(path)
    assert old.linear_step_us == (900.0, 40.0, 150.0, 0.7)
    model, with_zero_extra = CostModel(LLAMA, old), CostModel(LLAMA, old.replace(linear_step_us=(900, 40, 150, 0.7, 0)))
    for batch in STEPS:
        pairs = sum(new * cached + new * (new + 1) / 2 for new, cached in batch)
        tokens = sum(new for new, _ in batch)
        by_hand = (900 + 40 * tokens + 150 * len(batch) + 0.7 * pairs / 1000) * 1e-6
        assert model.forward_time(batch) == pytest.approx(by_hand)
        assert with_zero_extra.forward_time(batch) == model.forward_time(batch)


def test_the_fifth_coefficient_is_charged_only_to_steps_of_more_than_one_new_token():
    line = (900.0, 40.0, 150.0, 0.7)
    without = CostModel(LLAMA, A10.replace(linear_step_us=line))
    extra = CostModel(LLAMA, A10.replace(linear_step_us=(*line, 5000.0)))
    for batch in STEPS:
        charged = extra.forward_time(batch) - without.forward_time(batch)
        # One decode of one sequence runs the matrix-vector path; a second token anywhere in the step does not.
        assert charged == pytest.approx(0.0 if sum(new for new, _ in batch) == 1 else 5000e-6, abs=1e-12), batch


def test_each_run_reports_its_stall_share_and_switch_latency():
    vllm = simulate(config("vllm"), LLAMA, A10, BURST)
    fast = simulate(config("fastswitch"), LLAMA, A10, BURST)
    # vllm waits for every swap, so its slowest requests spent part of their life blocked on copies.
    assert 0 < vllm["stall_share_p99"] < 1 and fast["stall_share_p99"] < vllm["stall_share_p99"]
    # One copy per block per layer per K/V against one per block group: switches are cheaper.
    assert fast["mean_swap_latency_s"] < vllm["mean_swap_latency_s"]


def test_step_jitter_scales_each_step_by_a_measured_factor_drawn_from_the_seed():
    one = Workload("one", (Conversation(0, 0, 0.0, (Turn(100, 20, 0.0),)),))
    base = simulate(config("fastswitch"), LLAMA, A10.replace(scheduler_step_us=100.0), one)
    doubled = simulate(config("fastswitch"), LLAMA, A10.replace(scheduler_step_us=100.0, step_jitter=(2.0,)), one)
    assert doubled["simulated_time_s"] == pytest.approx(2 * base["simulated_time_s"])
    spread = A10.replace(step_jitter=(0.5, 1.0, 3.0))
    first, again = (simulate(config("fastswitch"), LLAMA, spread, BURST) for _ in range(2))
    assert first["ttft_p99"] == again["ttft_p99"]  # the same seed draws the same factors
    with pytest.raises(ValueError, match="step_jitter"):
        A10.replace(step_jitter=(1.0, 0.0))
