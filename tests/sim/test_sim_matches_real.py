"""A simulated run and a real run (tiny Llama, real forward, sampling and KV copies) of one workload,
both on the same virtual step times, must make the same schedule decisions."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import HardwareProfile
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.simulator import build_real_engine_on_virtual_time, build_simulated_engine
from fastswitch.sim.workload_driver import replay
from fastswitch.workloads import synthetic_sharegpt

VOCAB = 96
TINY = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1)  # fmt: skip
# A machine slow enough that the tiny model's steps take milliseconds, as a real model's do on a GPU, so
# turns overlap and preempt each other; copies of its 2 KiB blocks take about a millisecond each.
SLOW_GPU = HardwareProfile("slow", peak_tflops=1e-4, memory_bandwidth_gbs=0.02, memory_gib=1.0, h2d_gbs=0.002,
                           d2h_gbs=0.002, copy_call_latency_us=50.0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return load_model(LlamaForCausalLM(TINY).eval(), dtype="float32", progress=False).model


class Recorder:
    """Wraps an engine's executor and copy engine to log every batch and every copy job."""

    def __init__(self, sim):
        self.log = []
        executor, copies = sim.executor, sim.engine.swap_manager.copy_engine
        run_batch, submit = executor.execute, copies.submit

        def execute(chunks):
            self.log.append(("batch", round(sim.clock.now, 9),
                             tuple((c.request.request_id, len(c.token_ids), c.num_cached, tuple(c.block_table))
                                   for c in chunks)))  # fmt: skip
            return run_batch(chunks)

        def submit_job(job):
            self.log.append(("copy", round(sim.clock.now, 9), job.direction, job.pairs))
            return submit(job)

        executor.execute, copies.submit = execute, submit_job


@pytest.mark.parametrize("preset", ["vllm", "fastswitch"])
def test_simulated_and_real_runs_make_the_same_decisions(tiny_model, preset):
    workload = synthetic_sharegpt(num_conversations=5, rate=40.0, seed=2, mean_prompt_tokens=20,
                                  mean_response_tokens=8, think_time_mean=0.05, max_context_tokens=120,
                                  vocab_range=(1, VOCAB))  # fmt: skip
    config = EngineConfig.from_preset(preset, num_gpu_blocks=16, num_cpu_blocks=200, block_size=8,
                                      max_model_len=192, policy="priority", priority_update_freq=0.3,
                                      max_num_batched_tokens=64, attention_backend="torch", seed=4)  # fmt: skip
    shape = ModelShape.from_hf_config(TINY, dtype_bytes=4)  # the real run's float32 KV: same copy bytes
    simulated = build_simulated_engine(config, shape, SLOW_GPU, max_model_len=192)
    cost = CostModel(shape, SLOW_GPU)
    real = build_real_engine_on_virtual_time(tiny_model, config, cost, max_model_len=192)
    logs, tokens = [], []
    for sim in (simulated, real):
        recorder = Recorder(sim)
        outputs = replay(sim.engine, workload, sim.clock.advance_to)
        sim.engine.close()
        logs.append((recorder.log, [(o.request_id, o.metrics.token_times, o.metrics.num_preemptions) for o in outputs]))
        tokens.append({t for o in outputs for t in o.token_ids})
    (sim_log, sim_metrics), (real_log, real_metrics) = logs
    assert sum(entry[0] == "copy" for entry in sim_log) > 0, "the workload must force swaps"
    assert any(preemptions for _, _, preemptions in sim_metrics)
    assert sim_log == real_log
    assert sim_metrics == real_metrics
    assert simulated.engine.stats()["copy_calls"] == real.engine.stats()["copy_calls"]
    # The simulator samples a placeholder; the real run's tokens come from the model.
    assert tokens[0] == {0} and len(tokens[1]) > 5
