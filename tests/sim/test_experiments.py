import pytest

from fastswitch.sim.experiments import ABLATION_PRESETS, EXPERIMENTS, get_experiment


def test_pool_sizes_follow_memory_left_after_weights_and_activations():
    # A10: 23,028 MiB * 0.9 = 21.73e9 B, - 16.06e9 B of Llama-3-8B weights - 1.10 GiB of profiling
    # activations (8,192 tokens x (3 x 14,336 + 4 x 4,096) x 2 B + 256 float32 logits rows) = 2 MiB blocks.
    device, host = get_experiment("llama8b-a10").kv_pool_blocks(16)
    assert device == 2177
    assert host == 60 * 2**30 // (2 * 1024 * 1024)


def test_a_gib_profile_gives_the_expected_qwen_pool():
    """80 GiB (not 80e9 B) * 0.9 = 77.31e9 B; minus 65.52e9 B of Qwen2.5-32B weights and 1.85e9 B of
    activations leaves 9.93e9 B: 2,367 blocks of 4 MiB (the decimal reading gave 1,304)."""
    exp = get_experiment("qwen32b-a100")
    assert exp.hardware_profile().memory_bytes == 80 * 2**30
    shape = exp.model_shape()
    free = 80 * 2**30 * 0.9 - shape.num_params * 2 - (8192 * (3 * 27648 + 4 * 5120) * 2 + 256 * 152064 * 4)
    assert exp.kv_pool_blocks(16)[0] == int(free // (4 * 2**20)) == 2367
    # A10 "24 GB": 23,028 MiB of usable memory.
    assert get_experiment("llama8b-a10").hardware_profile().memory_bytes == 23028 * 2**20


def test_ablation_steps_switch_on_one_mechanism_at_a_time():
    exp = get_experiment("ablation-llama8b-a10")
    flags = [
        (c.block_groups, c.async_swap, c.kv_reuse) for c in (exp.engine_config(p, seed=0) for p in ABLATION_PRESETS)
    ]
    assert flags == [(False, False, False), (True, False, False), (True, True, False), (True, True, True)]
    assert exp.engine_config("fastswitch", seed=7).seed == 7
    assert exp.engine_config("vllm", seed=0).priority_update_freq == 0.04


def test_paper_update_frequencies():
    assert EXPERIMENTS["llama8b-a10"].engine["priority_update_freq"] == 0.04
    assert EXPERIMENTS["qwen32b-a100"].engine["priority_update_freq"] == 0.02


def test_bad_names_raise():
    with pytest.raises(ValueError, match="experiment='nope'"):
        get_experiment("nope")
    with pytest.raises(ValueError, match="preset='vllm\\+warp'"):
        get_experiment("smoke").engine_config("vllm+warp", seed=0)
    with pytest.raises(ValueError, match="leaves no room"):
        get_experiment("smoke").replace(model="qwen2.5-32b").kv_pool_blocks(16)


def test_request_rate_is_turns_per_second():
    exp = get_experiment("llama8b-a10")
    assert exp.conversation_rate(1.0) == pytest.approx(1 / 5.5)
    assert exp.replace(workload={"mean_turns": 2.0}).conversation_rate(3.0) == 1.5


def test_engine_overrides_reach_every_presets_config():
    exp = get_experiment("smoke").replace(engine={"sync_swap_fraction": 0.1, "adaptive_sync_blocks": 2})
    for preset in ("vllm", "fastswitch"):
        config = exp.engine_config(preset, seed=0)
        assert (config.sync_swap_fraction, config.adaptive_sync_blocks) == (0.1, 2)
