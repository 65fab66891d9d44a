"""The fast CPU calibration (fastswitch/sim/cpu_calibration.py) on a tiny random Llama: it times the
batches a simulated run makes and fits a profile the simulator takes."""

import random
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.sim.cpu_calibration import (
    MIN_PER_KIND,
    STEP_KINDS,
    CpuCalibrator,
    TimingSession,
    draw_steps,
    load_factor,
    step_kind,
)
from fastswitch.sim.host_calibration import StepTiming
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.simulator import simulate
from fastswitch.workloads import synthetic_sharegpt

VOCAB = 96
TINY = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1)  # fmt: skip
SHAPE = ModelShape.from_hf_config(TINY, dtype_bytes=4)


def workload(seed: int):
    return synthetic_sharegpt(6, rate=50.0, seed=seed, mean_prompt_tokens=30, mean_response_tokens=10,
                              think_time_mean=0.05, max_context_tokens=200, vocab_range=(1, VOCAB))  # fmt: skip


def config(preset: str) -> EngineConfig:
    return EngineConfig.from_preset(preset, num_gpu_blocks=24, max_model_len=256, policy="fcfs",
                                    attention_backend="torch")  # fmt: skip


@pytest.fixture(scope="module")
def calibrator():
    torch.manual_seed(0)
    model = load_model(LlamaForCausalLM(TINY).eval(), dtype="float32", progress=False).model
    return CpuCalibrator(model, SHAPE, [(config("vllm"), workload(1)), (config("fastswitch"), workload(1))], 256,
                         batches_per_session=24)  # fmt: skip


def test_the_batches_come_from_the_simulated_runs_and_cover_every_kind(calibrator):
    traced = {step.batch for step in calibrator.traced}
    assert all(step.batch in traced for step in calibrator.drawn)
    assert {step_kind(step.batch) for step in calibrator.drawn} == set(STEP_KINDS)
    for step in calibrator.drawn:  # each kept chunk is the step's (new, cached) pair
        assert tuple((len(c.token_ids), c.num_cached) for c in step.chunks) == step.batch


def test_a_session_profile_is_taken_by_the_simulator(calibrator):
    session = calibrator.measure("only")
    assert len(session.timings) == len(calibrator.drawn) and session.seconds > 0
    assert all(t.forward_s > 0 for t in session.timings)
    profile = calibrator.profile("tiny-cpu", [session])
    assert len(profile.linear_step_us) == 5 and profile.step_jitter is not None
    assert profile.copy_call_cpu_us > 0 and profile.scheduler_step_us + profile.scheduler_seq_us > 0
    result = simulate(config("fastswitch"), SHAPE, profile, workload(0))
    assert result["num_generated_tokens"] == sum(t.response_tokens for c in workload(0).conversations for t in c.turns)
    assert 0 < result["ttft_p50"] < 10.0


def test_draw_steps_keeps_each_kind_in_proportion_with_a_floor():
    def steps(batch, n):
        return [StepTiming(batch, 0.0, 0.0)] * n

    pool = steps(((1, 5),), 90) + steps(((1, 5), (1, 6)), 8) + steps(((9, 0),), 2)
    drawn = draw_steps(pool, 20, random.Random(0))
    counts = {kind: sum(step_kind(s.batch) == kind for s in drawn) for kind in STEP_KINDS}
    assert counts == {"one token": 18, "decode batch": MIN_PER_KIND, "multi-token chunk": 2}
    with pytest.raises(ValueError, match="count=0"):
        draw_steps(pool, 0, random.Random(0))


def test_load_factor_is_the_median_slowdown_of_the_same_batches():
    def session(label, seconds):
        return TimingSession(label, "t", (0.0, 0.0, 0.0), sum(seconds),
                             tuple(StepTiming(((1, 0),), s, 0.0) for s in seconds))  # fmt: skip

    quiet = session("quiet", [0.01, 0.02, 0.04])
    assert load_factor(session("busy", [0.02, 0.04, 0.2]), quiet) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="different batch sets"):
        load_factor(session("short", [0.01]), quiet)


def test_a_burst_of_load_in_one_of_three_sessions_widens_the_jitter_but_does_not_move_the_line(calibrator):
    quiet = calibrator.measure("quiet")
    burst = replace(quiet, label="burst", timings=tuple(replace(t, forward_s=10 * t.forward_s) for t in quiet.timings))
    alone, with_burst = calibrator.profile("p", [quiet]), calibrator.profile("p", [quiet, burst, quiet])
    assert with_burst.linear_step_us == alone.linear_step_us
    assert max(with_burst.step_jitter) > 5 * max(alone.step_jitter)
