import pytest

from fastswitch.config import EngineConfig
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import get_profile
from fastswitch.sim.model_shapes import get_model_shape
from fastswitch.sim.simulator import build_simulated_engine, simulate
from fastswitch.sim.workload_driver import replay
from fastswitch.workloads import Conversation, Turn, Workload, synthetic_sharegpt

LLAMA = get_model_shape("llama-3-8b")
A10 = get_profile("a10")


def small_workload(seed: int) -> Workload:
    return synthetic_sharegpt(num_conversations=10, rate=4.0, seed=seed, mean_prompt_tokens=60,
                              mean_response_tokens=40, think_time_mean=0.5, max_context_tokens=600)  # fmt: skip


def tight_config(preset: str, **overrides) -> EngineConfig:
    # 40 blocks of 16 tokens for ten conversations of up to 600 tokens: swaps are certain.
    settings = dict(num_gpu_blocks=40, num_cpu_blocks=400, max_model_len=640, policy="priority",
                    priority_update_freq=0.2, seed=1, max_num_batched_tokens=256)  # fmt: skip
    return EngineConfig.from_preset(preset, **{**settings, **overrides})


def test_one_request_by_hand():
    """A 10-token prompt and 3 answer tokens: one prefill step, then two decode steps."""
    workload = Workload("one", (Conversation(0, 0, 2.0, (Turn(10, 3, 0.0),)),))
    sim = build_simulated_engine(tight_config("fastswitch", priority_update_freq=0.0), LLAMA, A10)
    (out,) = replay(sim.engine, workload, sim.clock.advance_to)
    cost = CostModel(LLAMA, A10)
    prefill, decode1, decode2 = cost.forward_time([(10, 0)]), cost.forward_time([(1, 10)]), cost.forward_time([(1, 11)])
    assert out.metrics.arrival_time == 2.0  # the clock jumped to the arrival
    assert out.metrics.ttft == pytest.approx(prefill)
    assert out.metrics.tbts == pytest.approx([decode1, decode2])
    assert sim.clock.now == pytest.approx(2.0 + prefill + decode1 + decode2)
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_second_turn_reuses_the_first_turns_kv():
    """Turn 2 arrives think time after turn 1's last token and prefills only what is new."""
    turns = (Turn(10, 3, 0.0), Turn(5, 2, 1.5))
    workload = Workload("two", (Conversation(0, 0, 0.0, turns),))
    sim = build_simulated_engine(tight_config("fastswitch", priority_update_freq=0.0), LLAMA, A10)
    first, second = replay(sim.engine, workload, sim.clock.advance_to)
    assert second.metrics.arrival_time == pytest.approx(first.metrics.finish_time + 1.5)
    assert second.prompt_token_ids[:13] == first.prompt_token_ids + first.token_ids
    # Cached: 10 prompt + 2 decoded tokens; new: the last answer token + 5 prompt tokens.
    assert second.metrics.ttft == pytest.approx(CostModel(LLAMA, A10).forward_time([(6, 12)]))


def test_turns_that_arrive_during_a_step_keep_their_true_arrival_time():
    """Two turns arrive while a long prefill runs; one sequence at a time, first come first served.
    The engine sees both at the step's end, yet serves the earlier arrival first and counts TTFT from
    each one's arrival (with both stamped at the step's end, their ids would order them: conv1 first)."""
    long_prefill = Conversation(0, 0, 0.0, (Turn(256, 2, 0.0),))
    second, first = Conversation(1, 1, 0.002, (Turn(10, 2, 0.0),)), Conversation(2, 2, 0.001, (Turn(10, 2, 0.0),))
    workload = Workload("mid-step", (long_prefill, second, first))
    config = tight_config("fastswitch", priority_update_freq=0.0, policy="fcfs", max_num_seqs=1)
    sim = build_simulated_engine(config, LLAMA, A10)
    outputs = {o.request_id: o for o in replay(sim.engine, workload, sim.clock.advance_to)}
    assert CostModel(LLAMA, A10).forward_time([(256, 0)]) > 0.002  # both arrive during the first step
    a, b = outputs["conv2-turn0"], outputs["conv1-turn0"]
    assert (a.metrics.arrival_time, b.metrics.arrival_time) == (0.001, 0.002)
    assert a.metrics.first_token_time < b.metrics.first_token_time


def test_identical_seeds_give_identical_metrics():
    runs = [simulate(tight_config("fastswitch"), LLAMA, A10, small_workload(seed=3)) for _ in range(2)]
    for run in runs:
        run.pop("wall_time_s")
    assert runs[0] == runs[1]
    assert runs[0]["num_preemptions"] > 0 and runs[0]["swap_out_count"] > 0
    other = simulate(tight_config("fastswitch"), LLAMA, A10, small_workload(seed=4))
    assert other["ttft_cdf"] != runs[0]["ttft_cdf"]


def test_vllm_pays_per_block_copies_and_waits_for_them():
    workload = small_workload(seed=5)
    vllm = simulate(tight_config("vllm"), LLAMA, A10, workload)
    fast = simulate(tight_config("fastswitch"), LLAMA, A10, workload)
    assert vllm["num_generated_tokens"] == fast["num_generated_tokens"] == sum(
        t.response_tokens for c in workload.conversations for t in c.turns
    )
    # vLLM: one call per block per layer per K/V (64 per block for Llama-3-8B), every swap waited for.
    assert vllm["copy_calls"] == 64 * (vllm["swap_out_blocks"] + vllm["swap_in_blocks"])
    assert vllm["blocking_swaps"] == vllm["swap_out_count"] + vllm["swap_in_count"]
    assert vllm["executor_idle_on_swaps"] == pytest.approx(sum(vllm["link_busy_s"].values()))
    assert fast["copy_calls"] < vllm["copy_calls"] / 10
    # The clock only moves by forward passes, waits on copies and jumps to arrivals.
    for run in (vllm, fast):
        assert run["executor_busy_s"] + run["executor_idle_on_swaps"] <= run["simulated_time_s"] + 1e-9
        assert run["num_free_gpu_blocks"] == run["num_gpu_blocks"]


def test_an_engine_needs_explicit_pool_sizes():
    with pytest.raises(ValueError, match="num_gpu_blocks=None"):
        build_simulated_engine(EngineConfig(max_model_len=64), LLAMA, A10)
    with pytest.raises(ValueError, match="max_model_len=None"):
        build_simulated_engine(EngineConfig(num_gpu_blocks=8), LLAMA, A10)


def test_the_adaptive_swap_threshold_is_a_config_field_the_simulator_honours():
    workload = small_workload(seed=5)
    never = simulate(tight_config("fastswitch", sync_swap_fraction=0.0, adaptive_sync_blocks=0), LLAMA, A10, workload)
    always = simulate(tight_config("fastswitch", sync_swap_fraction=1e9), LLAMA, A10, workload)
    # Fraction 0 waits only for a swap estimated to take no time (1 here); a huge one for every swap
    # whose batch would shrink (201 of 230).
    assert never["blocking_swaps"] < always["blocking_swaps"] / 10
    sim = build_simulated_engine(tight_config("fastswitch", sync_swap_fraction=0.1), LLAMA, A10)
    assert sim.engine.scheduler.swap_rule.sync_swap_fraction == 0.1
