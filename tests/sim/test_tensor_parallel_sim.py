"""The simulator under tensor parallelism: shard shapes, all-reduce pricing by hand, per-GPU KV pools,
and Qwen2.5-32B / Llama-3-70B simulated on 2-8 GPUs."""

import pytest

from fastswitch.config import EngineConfig
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.experiments import get_experiment
from fastswitch.sim.hardware import PROFILES, get_profile
from fastswitch.sim.model_shapes import get_model_shape
from fastswitch.sim.simulator import simulate
from fastswitch.workloads import synthetic_sharegpt


def test_shards_hold_a_share_of_heads_kv_and_mlp_and_all_of_the_vocabulary():
    full, shard = get_model_shape("qwen2.5-32b"), get_model_shape("qwen2.5-32b:tp4")
    assert (shard.num_heads, shard.num_kv_heads, shard.intermediate_size) == (10, 2, 6912)
    assert shard.tensor_parallel_size == 4 and shard.kv_block_bytes(16) * 4 == full.kv_block_bytes(16)
    embeddings = full.vocab_size * full.hidden_size * 2  # embed_tokens + lm_head, replicated
    assert shard.num_params == pytest.approx((full.num_params - embeddings - full.hidden_size) / 4 + embeddings
                                             + full.hidden_size, rel=0.01)  # norms replicated too  # fmt: skip
    # 8 KV heads over 8 GPUs: one each; Llama-3-70B's 8 KV heads stay one per GPU at tp8.
    assert get_model_shape("llama-3-70b:tp8").num_kv_heads == 1
    with pytest.raises(ValueError, match="tensor_parallel_size=3 does not split model 'qwen2.5-32b'"):
        get_model_shape("qwen2.5-32b:tp3")
    with pytest.raises(ValueError, match="already a shard of 4 GPUs"):
        shard.shard(2)


def test_allreduce_is_priced_as_a_ring_over_the_gpu_link():
    shard, h100 = get_model_shape("llama-3-70b:tp8"), get_profile("h100-sxm")
    cost = CostModel(shard, h100)
    tokens = 64
    message = tokens * 8192 * 2
    one = 2 * 7 / 8 * message / 450e9 + 10e-6  # NVLink 4: 450 GB/s per direction, 10 us per all-reduce
    assert cost.allreduce_time(tokens) == pytest.approx(2 * 80 * one)
    step = cost.step_cost([(1, 500)] * tokens)
    assert step.allreduce_time == pytest.approx(2 * 80 * one)
    parts = step.matmul_time + step.attention_time + step.overhead_time + step.allreduce_time
    assert step.total_time == pytest.approx(parts)
    assert CostModel(get_model_shape("llama-3-70b"), h100).allreduce_time(tokens) == 0.0
    # Over PCIe peer-to-peer (H100 PCIe cards, 45 GB/s) a 2,048-token prefill's all-reduces take ~9x
    # longer (for a few tokens the fixed latency dominates either way).
    pcie = CostModel(shard, get_profile("h100-pcie")).allreduce_time(2048)
    assert pcie > 8 * cost.allreduce_time(2048)
    assert PROFILES["a10"].gpu_link_gbs == PROFILES["a10"].h2d_gbs  # PCIe cards default to their slot's rate


def test_more_gpus_make_a_decode_step_faster_until_the_allreduces_dominate():
    h100 = get_profile("h100-sxm")
    batch = [(1, 1000)] * 32
    times = {n: CostModel(get_model_shape(f"llama-3-70b:tp{n}"), h100).forward_time(batch) for n in (2, 4, 8)}
    assert times[8] < times[4] < times[2]


def test_a_calibrated_cpu_line_refuses_a_shard():
    cpu = get_profile("a10").replace(name="cpu", linear_step_us=(100.0, 10.0, 5.0, 1.0))
    with pytest.raises(ValueError, match="tensor-parallel shard"):
        CostModel(get_model_shape("qwen2.5-32b:tp2"), cpu)


@pytest.mark.parametrize(
    "model, hardware, gpus", [("qwen2.5-32b", "a100-80gb-sxm", 2), ("llama-3-70b", "h100-sxm", 8)]
)
def test_big_models_simulate_on_several_gpus(model, hardware, gpus):
    shape = f"{model}:tp{gpus}"
    experiment = get_experiment("qwen32b-a100").replace(model=shape, hardware=hardware)
    device_blocks, host_blocks = experiment.kv_pool_blocks(16)  # per GPU: its weights, its KV shard
    assert device_blocks > 0 and host_blocks > 0
    config = EngineConfig.from_preset("fastswitch", num_gpu_blocks=device_blocks, num_cpu_blocks=host_blocks,
                                      max_model_len=8192, policy="priority", priority_update_freq=0.02)  # fmt: skip
    workload = synthetic_sharegpt(num_conversations=12, rate=2.0, seed=0)
    result = simulate(config, get_model_shape(shape), get_profile(hardware), workload)
    assert result["num_generated_tokens"] > 0 and result["simulated_time_s"] > 0
    assert result["block_bytes"] == get_model_shape(shape).kv_block_bytes(16)  # each GPU copies its own shard
