"""Tensor parallelism on the CPU (gloo): LLM(model, tensor_parallel_size=2) against tensor_parallel_size=1
and transformers, under a preemption storm, and with a worker killed.

Each TP=2 engine spawns a worker process (seconds to import torch), so one engine per family is shared
by the module's tests, and closing it is checked to end its worker.
"""

import os
import signal
import time

import pytest
import torch

from fastswitch.llm import LLM
from fastswitch.models import SamplingParams
from fastswitch.parallel.workers import WorkerFailure
from tiny_llamas import tiny_llama, tiny_qwen

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)
# A storm (as in tests/test_engine.py): a cache far too small for the load, priorities re-drawn often.
STORM = dict(
    num_gpu_blocks=8, num_cpu_blocks=64, max_num_seqs=6, max_num_batched_tokens=24,
    policy="priority", priority_update_freq=0.3, seed=3,
)
FAMILIES = {
    "llama": lambda: tiny_llama(num_attention_heads=4, num_key_value_heads=2),
    "qwen2": lambda: tiny_qwen("qwen2", num_attention_heads=4, num_key_value_heads=2),
    # One KV head over two ranks: replicated, each rank holding the head its query heads use.
    "qwen3": lambda: tiny_qwen("qwen3", num_attention_heads=4, num_key_value_heads=1, head_dim=24),
}


def prompts(seed: int = 0, count: int = 8) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 30, (count,), generator=gen).tolist()
    return [torch.randint(3, 384, (n,), generator=gen).tolist() for n in lengths]


def transformers_greedy(hf, prompt: list[int]) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=PARAMS.max_tokens, do_sample=False,
                      eos_token_id=None, min_new_tokens=PARAMS.max_tokens)  # fmt: skip
    return out[0, len(prompt):].tolist()


def engine_config(family: str) -> dict:
    common = dict(block_size=8, attention_backend="torch")
    return {**common, **STORM} if family == "llama" else common


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tp_pair(request):
    family = request.param
    hf = FAMILIES[family]()
    llm = LLM(hf, tensor_parallel_size=2, **engine_config(family))
    yield family, hf, llm
    llm.close()
    assert all(p.exitcode is not None for p in llm.workers.processes)  # no worker outlives its engine


def generate(llm: LLM, prompt_list):
    priorities = [i % 4 for i in range(len(prompt_list))]
    return [o.token_ids for o in llm.generate(prompt_list, PARAMS, priorities=priorities)]


def test_tp2_equals_tp1_and_transformers(tp_pair):
    family, hf, tp2 = tp_pair
    prompt_list = prompts()
    tp1 = LLM(hf, **engine_config(family))
    expected = [transformers_greedy(hf, p) for p in prompt_list]
    assert generate(tp1, prompt_list) == expected
    assert generate(tp2, prompt_list) == expected
    stats = tp2.stats()
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]
    if family == "llama":  # the storm: preemptions by swap, and every rank moved every group
        assert stats["num_preemptions"] > 0 and stats["swap_out_count"] > 0 and stats["swap_in_count"] > 0
        assert stats["num_free_cpu_blocks"] == stats["num_cpu_blocks"]
        (worker,) = tp2.workers.worker_stats()
        assert worker["copy_jobs"] == stats["swap_out_count"] + stats["swap_in_count"]
        assert worker["copy_blocks"] == stats["swap_out_blocks"] + stats["swap_in_blocks"]
        # One call per (source run, destination run) pair on rank 1 as on rank 0: block groups, not
        # vLLM's call per block, layer and K/V.
        assert worker["copy_calls"] == stats["copy_calls"] <= worker["copy_blocks"]
        assert worker["steps"] == stats["num_steps"]
    tp1.close()


def test_tp2_shards_heads_and_kv_cache(tp_pair):
    family, hf, tp2 = tp_pair
    config = hf.config
    attn = tp2.model.layers[0].self_attn
    assert attn.num_heads == config.num_attention_heads // 2
    assert attn.num_kv_heads == max(1, config.num_key_value_heads // 2)
    assert tp2.kv_cache.num_kv_heads == attn.num_kv_heads
    assert tp2.model.layers[0].mlp.intermediate_size == config.intermediate_size // 2


def test_sizes_that_do_not_divide_the_model_are_refused_before_any_spawn():
    hf = tiny_llama(num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="tensor_parallel_size=3 does not divide num_attention_heads=4"):
        LLM(hf, tensor_parallel_size=3)
    with pytest.raises(ValueError, match="tensor_parallel_size=0 must be a positive integer"):
        LLM(hf, tensor_parallel_size=0)


def test_tp2_forked_samples_equal_tp1(tp_pair):
    """n > 1 under TP: the prompt is prefilled once and its KV blocks copied to the other samples on
    every rank (a worker that skipped the copy would attend over stale blocks and drift)."""
    family, hf, tp2 = tp_pair
    params = SamplingParams(n=3, temperature=0.9, seed=11, max_tokens=8, ignore_eos=True)
    prompt_list = prompts(seed=4, count=3)
    tp1 = LLM(hf, **engine_config(family))
    expected = [[sample.token_ids for sample in o.samples] for o in tp1.generate(prompt_list, params)]
    got = [[sample.token_ids for sample in o.samples] for o in tp2.generate(prompt_list, params)]
    tp1.close()
    assert got == expected
    assert any(len({tuple(t) for t in samples}) > 1 for samples in got)  # the samples do differ
    (worker,) = tp2.workers.worker_stats()
    assert worker["forked_blocks"] > 0
    stats = tp2.stats()
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]


def test_worker_killed_mid_step_fails_the_engine_with_a_clear_error(tp_pair, monkeypatch):
    family, hf, tp2 = tp_pair
    if family != "qwen3":  # the module's engines run family by family: qwen3's is the last one
        pytest.skip("run once, on the last engine of the module, since it breaks the engine")
    workers = tp2.workers
    send_step = workers.send_step

    def send_then_kill(chunks):  # the worker dies while rank 0 runs its shard of the step
        send_step(chunks)
        os.kill(workers.processes[0].pid, signal.SIGKILL)

    monkeypatch.setattr(workers, "send_step", send_then_kill)
    started = time.monotonic()
    with pytest.raises(WorkerFailure, match=r"worker rank 1 \(pid \d+\) died with exit code -9"):
        tp2.generate(prompts(seed=1, count=2), PARAMS)
    assert time.monotonic() - started < 15
    monkeypatch.undo()
    with pytest.raises(WorkerFailure, match="rank 1"):  # the engine stays failed
        tp2.generate(prompts(seed=2, count=1), PARAMS)
