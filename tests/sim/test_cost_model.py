import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import HardwareProfile, get_profile
from fastswitch.sim.model_shapes import ModelShape, get_model_shape

# A toy model and machine with round numbers, so every figure below can be checked by hand.
# layer matmul params: q/k/v 8*(8+4+4) + o 8*8 + MLP 3*8*16 = 128 + 64 + 384 = 576; norms add 16.
TOY = ModelShape("toy", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4,
                 intermediate_size=16, vocab_size=10)  # fmt: skip
# 1e6 FLOP/s peak at MFU 0.5 = 5e5 FLOP/s; 1,000 B/s at efficiency 0.5 = 500 B/s; 1,000 B/s link.
SLOW = HardwareProfile("slow", peak_tflops=1e-6, memory_bandwidth_gbs=1e-6, memory_gib=1.0, h2d_gbs=1e-6,
                       d2h_gbs=2e-6, copy_call_latency_us=10.0, mfu=0.5, bandwidth_efficiency=0.5,
                       step_overhead_us=100.0)  # fmt: skip


def test_toy_shape_sizes_by_hand():
    assert TOY.layer_matmul_params == 576
    assert TOY.weight_bytes_per_step == (2 * 592 + 80 + 8) * 2 == 2544
    assert TOY.kv_bytes_per_token == 2 * 2 * 4 * 2 == 32
    # per layer: (8 in + 16 qkv out) + (8 + 8) + (8 + 32) + (16 + 8) = 104 elements; plus the embedding row.
    assert TOY.activation_bytes_per_token == (2 * 104 + 8) * 2 == 432


def test_decode_step_is_memory_bound_by_hand():
    cost = CostModel(TOY, SLOW).step_cost([(1, 3)])
    # matmuls: 2*2*576 + 2*80 = 2,464 FLOPs (0.005 s); bytes 2,544 + 432 + 20 logits = 2,996 -> 5.992 s.
    assert cost.matmul_flops == 2464 and cost.matmul_bytes == 2996
    assert cost.matmul_time == pytest.approx(5.992)
    assert not cost.matmul_compute_bound
    # attention: 1 new token sees 3 + 1 positions: 4 * 2 layers * 2 heads * 4 dims * 4 = 256 FLOPs;
    # bytes: (3 cached + 1 new) read + 1 written = 5 positions * 32 B = 160 B -> 0.32 s.
    assert cost.attention_flops == 256 and cost.attention_bytes == 160
    assert cost.attention_time == pytest.approx(0.32)
    assert cost.total_time == pytest.approx(5.992 + 0.32 + 100e-6)


def test_prefill_step_is_compute_bound_by_hand():
    fast_memory = SLOW.replace(memory_bandwidth_gbs=1.0)  # 5e8 B/s effective: bytes become free
    cost = CostModel(TOY, fast_memory).step_cost([(4, 0), (2, 6)])
    # matmuls: 2*2*576*6 tokens + 2*80*2 seqs = 13,824 + 320 = 14,144 FLOPs -> 0.028288 s.
    assert cost.matmul_compute_bound
    assert cost.matmul_time == pytest.approx(14144 / 5e5)
    # attention pairs: 4*0 + 4*5/2 = 10; 2*6 + 2*3/2 = 15; 25 pairs * 64 FLOPs = 1,600 FLOPs.
    assert cost.attention_flops == 1600
    assert cost.attention_time == pytest.approx(1600 / 5e5)
    assert cost.num_tokens == 6 and cost.num_seqs == 2


def test_empty_batch_costs_nothing_and_bad_entries_raise():
    model = CostModel(TOY, SLOW)
    assert model.forward_time([]) == 0.0
    with pytest.raises(ValueError, match="new=0"):
        model.forward_time([(0, 5)])
    with pytest.raises(ValueError, match="cached=-1"):
        model.forward_time([(1, -1)])


def test_copy_time_is_latency_per_call_plus_bytes_over_the_link():
    model = CostModel(TOY, SLOW)
    assert model.copy_time(5000, 3, "h2d") == pytest.approx(3 * 10e-6 + 5.0)
    assert model.copy_time(5000, 3, "d2h") == pytest.approx(3 * 10e-6 + 2.5)  # d2h link is twice as fast
    assert model.copy_time(0, 0, "h2d") == 0.0
    with pytest.raises(ValueError, match="direction='sideways'"):
        model.copy_time(1, 1, "sideways")
    with pytest.raises(ValueError, match="num_calls=0"):
        model.copy_time(10, 0, "h2d")


def test_llama3_8b_on_a10_matches_back_of_envelope():
    model = CostModel(get_model_shape("llama-3-8b"), get_profile("a10"))
    # Decode of one token streams ~15.0 GB of weights at 0.7 * 600 GB/s: ~35.7 ms.
    assert model.forward_time([(1, 0)]) == pytest.approx(15.01e9 / 420e9, rel=0.01)
    # A 2,048-token prefill: 2 * 6.98e9 params * 2,048 tokens at 0.6 * 125 TFLOPS: ~0.38 s of matmuls.
    assert model.step_cost([(2048, 0)]).matmul_time == pytest.approx(2 * 6.98e9 * 2048 / 75e12, rel=0.01)
    # Swapping out 100 blocks of 16 tokens (12.5 MiB): vLLM's 6,400 calls of 32 KiB cost ~3x one call.
    block_bytes = get_model_shape("llama-3-8b").kv_block_bytes(16)
    per_block_layer_kv = model.copy_time(100 * block_bytes, 100 * 64, "d2h")
    one_group = model.copy_time(100 * block_bytes, 1, "d2h")
    assert block_bytes == 2 * 1024 * 1024
    assert 2.5 < per_block_layer_kv / one_group < 3.5


batches = st.lists(st.tuples(st.integers(1, 300), st.integers(0, 4000)), min_size=1, max_size=12)


@given(batches, st.integers(1, 64), st.integers(0, 512))
def test_more_work_never_takes_less_time(batch, extra_new, extra_cached):
    model = CostModel(get_model_shape("qwen2.5-32b"), get_profile("a100"))
    base = model.forward_time(batch)
    assert base > 0
    assert model.forward_time(batch + [(extra_new, extra_cached)]) >= base
    (new, cached), rest = batch[0], batch[1:]
    assert model.forward_time([(new, cached + extra_cached)] + rest) >= base
    assert model.forward_time([(new + extra_new, cached)] + rest) >= base


@given(st.integers(1, 10**9), st.integers(1, 10**4), st.integers(1, 10**4))
def test_more_copy_calls_for_the_same_bytes_cost_more(num_bytes, calls, extra_calls):
    model = CostModel(TOY, get_profile("h100"))
    assert model.copy_time(num_bytes, calls + extra_calls, "h2d") > model.copy_time(num_bytes, calls, "h2d")
