import pytest
from transformers import LlamaConfig, Qwen2Config

from fastswitch.sim.hardware import PROFILES, HardwareProfile, get_profile
from fastswitch.sim.model_shapes import MODEL_SHAPES, ModelShape, get_model_shape


def test_published_figures():
    assert (get_profile("a10").peak_tflops, get_profile("a10").memory_bandwidth_gbs) == (125.0, 600.0)
    assert get_profile("A100").memory_bandwidth_gbs == 1935.0
    assert get_profile("a100-80gb-sxm").memory_bandwidth_gbs == 2039.0
    assert get_profile("h100-sxm").peak_tflops == 989.0 and get_profile("h100-pcie").peak_tflops == 756.0
    assert get_profile("h100").h2d_gbs > get_profile("a10").h2d_gbs  # PCIe 5.0 vs 4.0


def test_effective_rates_apply_the_efficiency_factors():
    a10 = get_profile("a10")
    assert a10.effective_flops == pytest.approx(125e12 * a10.mfu)
    assert a10.effective_bandwidth == pytest.approx(600e9 * a10.bandwidth_efficiency)
    assert a10.link_bandwidth("d2h") == pytest.approx(25e9)


def test_profile_json_round_trip(tmp_path):
    calibrated = get_profile("a10").replace(
        name="my-a10", mfu=0.42, h2d_gbs=21.5, copy_call_cpu_us=6.5, copy_thread_contention=0.3,
        scheduler_step_us=800.0, scheduler_seq_us=12.0, linear_step_us=(900.0, 40.0, 150.0, 0.7),
    )
    path = tmp_path / "my-a10.json"
    calibrated.to_json(path)
    assert get_profile(path) == calibrated and get_profile(path).linear_step_us == (900.0, 40.0, 150.0, 0.7)
    path.write_text('{"name": "x", "warp_speed": 9}')
    with pytest.raises(ValueError, match="warp_speed"):
        HardwareProfile.from_json(path)


@pytest.mark.parametrize(
    "changes, fragment",
    [({"mfu": 1.5}, "mfu=1.5"), ({"peak_tflops": 0.0}, "peak_tflops=0.0"),
     ({"copy_call_latency_us": -1.0}, "copy_call_latency_us=-1.0"), ({"memory_gib": 0.0}, "memory_gib=0.0"),
     ({"copy_thread_contention": 1.5}, "copy_thread_contention=1.5"),
     ({"scheduler_seq_us": -2.0}, "scheduler_seq_us=-2.0")],  # fmt: skip
)
def test_bad_profile_values_raise(changes, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        PROFILES["a10"].replace(**changes)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="hardware='tpu'"):
        get_profile("tpu")
    with pytest.raises(ValueError, match="model='gpt-5'"):
        get_model_shape("gpt-5")


@pytest.mark.parametrize(
    "name, params_b, kv_kib",
    [("llama-3-8b", 8.03, 128.0), ("qwen2.5-32b", 32.76, 256.0), ("smollm2-135m", 0.1345, 22.5)],
)
def test_builtin_shapes_match_published_sizes(name, params_b, kv_kib):
    shape = MODEL_SHAPES[name]
    assert shape.num_params / 1e9 == pytest.approx(params_b, rel=0.005)
    assert shape.kv_bytes_per_token / 1024 == kv_kib


def test_shape_from_hf_configs():
    llama = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=14336, vocab_size=128256)  # fmt: skip
    assert get_model_shape(llama).num_params == MODEL_SHAPES["llama-3-8b"].num_params
    qwen = Qwen2Config(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                       intermediate_size=27648, vocab_size=152064, tie_word_embeddings=False)  # fmt: skip
    shape = ModelShape.from_hf_config(qwen, name="qwen")
    assert shape.attention_bias and shape.num_params == MODEL_SHAPES["qwen2.5-32b"].num_params
    tiny = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=100, dtype="float32")  # fmt: skip
    assert ModelShape.from_hf_config(tiny).dtype_bytes == 4 and ModelShape.from_hf_config(tiny).head_dim == 16


def test_shape_rejects_inconsistent_heads():
    with pytest.raises(ValueError, match="num_heads=9 must be a multiple of num_kv_heads=2"):
        ModelShape("bad", 2, 64, 9, 2, 8, 128, 100)
    with pytest.raises(ValueError, match="lacks"):
        ModelShape.from_hf_config(object())
