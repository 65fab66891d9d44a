import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.sim.calibrate import (
    StepMeasurement,
    compare_with_real_run,
    fit_line,
    fit_profile,
    measure_copies,
    measure_steps,
    prediction_rows,
)
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import HardwareProfile
from fastswitch.sim.model_shapes import ModelShape, get_model_shape
from fastswitch.workloads import synthetic_sharegpt

SHAPE = get_model_shape("smollm2-135m")
# Ridge point 5e12 / 5e10 = 100 FLOP/B: decodes of up to 32 sequences are memory-bound and 256+ token
# prefills compute-bound, in matmuls and attention alike, so the fit can recover every figure exactly.
TRUE = HardwareProfile("true", peak_tflops=10.0, memory_bandwidth_gbs=100.0, memory_gib=16.0, h2d_gbs=12.0,
                       d2h_gbs=10.0, copy_call_latency_us=4.0, mfu=0.5, bandwidth_efficiency=0.5,
                       step_overhead_us=80.0)  # fmt: skip


def synthetic_measurements(profile):
    model = CostModel(SHAPE, profile)
    sizes = [4096 * 4**i for i in range(6)]
    copies = {d: [(b, model.copy_time(b, 1, d)) for b in sizes] for d in ("h2d", "d2h")}
    decodes = [StepMeasurement(b, model.forward_time(b)) for b in
               (((1, 64),), ((1, 256),) * 4, ((1, 256),) * 16, ((1, 256),) * 32)]  # fmt: skip
    prefills = [StepMeasurement(((n, 0),), model.forward_time([(n, 0)])) for n in (256, 512, 1024)]
    return copies, decodes, prefills


def test_fit_line_recovers_a_line_and_rejects_degenerate_input():
    assert fit_line([1, 2, 3], [5, 7, 9]) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_line([1], [2])
    with pytest.raises(ValueError, match="all x values are equal"):
        fit_line([2, 2], [1, 3])


def test_fit_recovers_the_profile_that_made_the_times():
    copies, decodes, prefills = synthetic_measurements(TRUE)
    base = TRUE.replace(mfu=0.9, bandwidth_efficiency=0.9)
    fitted = fit_profile("fitted", SHAPE, copies, decodes, prefills, base=base)
    assert fitted.h2d_gbs == pytest.approx(12.0) and fitted.d2h_gbs == pytest.approx(10.0)
    assert fitted.copy_call_latency_us == pytest.approx(4.0)
    assert fitted.step_overhead_us == pytest.approx(80.0)
    assert fitted.bandwidth_efficiency == pytest.approx(0.5)
    assert fitted.mfu == pytest.approx(0.5)
    rows = prediction_rows(fitted, SHAPE, copies, decodes, prefills)
    assert max(abs(r["error_%"]) for r in rows) < 1e-6


def test_without_a_base_the_measured_rates_become_the_peaks():
    copies, decodes, prefills = synthetic_measurements(TRUE)
    fitted = fit_profile("cpu", SHAPE, copies, decodes, prefills)
    assert fitted.mfu == 1.0 and fitted.bandwidth_efficiency == 1.0
    assert fitted.peak_tflops == pytest.approx(5.0) and fitted.memory_bandwidth_gbs == pytest.approx(50.0)
    assert fitted.effective_bandwidth == pytest.approx(TRUE.effective_bandwidth)


def test_flat_copy_times_are_rejected():
    copies, decodes, prefills = synthetic_measurements(TRUE)
    copies["h2d"] = [(b, 1e-3) for b, _ in copies["h2d"]][::-1] + [(10**9, 0.0)]
    with pytest.raises(ValueError, match="h2d copy times do not grow"):
        fit_profile("bad", SHAPE, copies, decodes, prefills)


@pytest.fixture(scope="module")
def tiny_model():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return load_model(LlamaForCausalLM(config), dtype="float32", progress=False).model


def test_measurements_run_on_this_device(tiny_model):
    """Shapes only: timings on a shared CPU are noise, and tests never assert on them."""
    copies = measure_copies(torch.device("cpu"), sizes=(4096, 65536), repeats=1)
    assert [b for b, _ in copies["h2d"]] == [4096, 65536] and all(s > 0 for _, s in copies["d2h"])
    model = tiny_model
    decodes, prefills = measure_steps(model, block_size=8, repeats=1, decode_batches=((1, 8), (2, 16)),
                                      prefill_lengths=(16,))  # fmt: skip
    assert [m.batch for m in decodes] == [((1, 8),), ((1, 16), (1, 16))]
    assert prefills[0].batch == ((16, 0),) and prefills[0].seconds > 0


def test_real_and_simulated_runs_of_one_workload_are_set_side_by_side(tiny_model):
    workload = synthetic_sharegpt(num_conversations=2, rate=50.0, seed=0, mean_prompt_tokens=12, mean_response_tokens=4,
                                  think_time_mean=0.01, max_context_tokens=64, vocab_range=(0, 64))  # fmt: skip
    config = EngineConfig.from_preset("fastswitch", num_gpu_blocks=32, block_size=8, max_model_len=64,
                                      attention_backend="torch")  # fmt: skip
    shape = ModelShape.from_hf_config(tiny_model.config, dtype_bytes=4)
    rows = {r["metric"]: r for r in compare_with_real_run(tiny_model, shape, TRUE, workload, config, 64)}
    assert set(rows) >= {"ttft_p99", "throughput_tokens_per_s", "num_preemptions"}
    assert rows["ttft_p99"]["real"] > 0 and rows["ttft_p99"]["simulated"] > 0
