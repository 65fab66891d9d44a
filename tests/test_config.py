import pytest

from fastswitch import EngineConfig


def test_presets_set_all_three_mechanisms():
    vllm = EngineConfig.from_preset("vllm")
    fast = EngineConfig.from_preset("fastswitch")
    assert (vllm.block_groups, vllm.async_swap, vllm.kv_reuse) == (False, False, False)
    assert (fast.block_groups, fast.async_swap, fast.kv_reuse) == (True, True, True)


def test_override_turns_on_one_mechanism():
    cfg = EngineConfig.from_preset("vllm", block_groups=True, policy="priority")
    assert cfg.block_groups and not cfg.async_swap and cfg.policy == "priority"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"policy": "lottery"}, "policy='lottery'"),
        ({"block_size": 0}, "block_size=0"),
        ({"priority_update_freq": 1.5}, "priority_update_freq=1.5"),
        ({"num_gpu_blocks": -3}, "num_gpu_blocks=-3"),
        ({"preemption_mode": "kill"}, "preemption_mode='kill'"),
        ({"sync_swap_fraction": -0.1}, "sync_swap_fraction=-0.1 must be a number >= 0"),
        ({"adaptive_sync_blocks": -2}, "adaptive_sync_blocks=-2 must be an integer >= 0"),
    ],
)
def test_bad_values_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        EngineConfig(**kwargs)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="preset='fast'"):
        EngineConfig.from_preset("fast")
    with pytest.raises(ValueError, match="blocksize"):
        EngineConfig.from_preset("vllm", blocksize=8)


def test_adaptive_swap_knobs_are_fields_with_the_schedulers_defaults():
    cfg = EngineConfig.from_preset("fastswitch", sync_swap_fraction=0.1)
    assert (cfg.sync_swap_fraction, cfg.adaptive_sync_blocks) == (0.1, 4)
    assert (EngineConfig().sync_swap_fraction, EngineConfig(adaptive_sync_blocks=0).adaptive_sync_blocks) == (0.1, 0)


def test_vtc_weights_are_refused_where_the_policy_would_ignore_them():
    assert EngineConfig(policy="vtc", vtc_input_weight=3.0).vtc_input_weight == 3.0
    EngineConfig(policy="fcfs")  # the defaults are no request of the user's
    with pytest.raises(ValueError, match=r"vtc_output_weight=5.0 are read by policy='vtc' only; policy='fcfs'"):
        EngineConfig(policy="fcfs", vtc_output_weight=5.0)
