"""The engine on a tiny random Llama: preemption storms, metrics, bad input.

A storm: a KV cache far too small for the load, priorities re-drawn every few iterations, in swap
and recompute modes with async swapping on and off. Every request must complete with exactly the
greedy output of an unconstrained run, and every device and host block must be free at the end.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from fastswitch.build import build_engine
from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.models.sampling import SamplingParams
from tiny_llamas import tiny_llama

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny forwards: with other jobs on the same cores, intra-op threads only spin against them.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    hf = tiny_llama(vocab_size=128, rms_norm_eps=1e-6)
    return load_model(hf, dtype="float32", progress=False).model


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(128) for _ in range(rng.randrange(2, 30))] for _ in range(8)]


def run(model, prompts, preset="fastswitch", **overrides):
    overrides = {"num_gpu_blocks": 64, **overrides}
    config = EngineConfig.from_preset(preset, block_size=8, attention_backend="torch", max_model_len=256, **overrides)
    engine = build_engine(model, config)
    outputs = [engine.add_request(p, PARAMS, priority=i % 4) for i, p in enumerate(prompts)]
    engine.run_until_done()
    engine.close()
    return outputs, engine


@pytest.fixture(scope="module")
def reference(model, prompts):
    outputs, engine = run(model, prompts)
    assert engine.stats()["num_preemptions"] == 0
    return [o.token_ids for o in outputs]


STORMS = {
    "vllm-swap": dict(preset="vllm"),
    "fastswitch-async-swap": dict(preset="fastswitch"),
    "fastswitch-sync-swap": dict(preset="fastswitch", async_swap=False),
    "recompute": dict(preset="fastswitch", preemption_mode="recompute"),
    "markov-async-recompute": dict(preset="fastswitch", priority_pattern="markov", preemption_mode="recompute"),
    "vtc-swap": dict(preset="fastswitch", policy="vtc"),
}


@pytest.mark.parametrize("storm", list(STORMS))
def test_preemption_storm_completes_with_unconstrained_outputs_and_no_leaks(model, prompts, reference, storm):
    overrides = dict(
        num_gpu_blocks=8, num_cpu_blocks=64, max_num_seqs=6, max_num_batched_tokens=24,
        policy="priority", priority_update_freq=0.3, seed=3,
    )
    outputs, engine = run(model, prompts, **{**overrides, **STORMS[storm]})
    assert [o.token_ids for o in outputs] == reference
    assert all(o.finish_reason == "length" for o in outputs)
    stats = engine.stats()
    assert stats["num_preemptions"] > 0 and stats["num_priority_updates"] > 0
    if STORMS[storm].get("preemption_mode") != "recompute":
        assert stats["swap_out_count"] > 0 and stats["swap_in_count"] > 0
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]
    assert stats["num_free_cpu_blocks"] == stats["num_cpu_blocks"]
    for output in outputs:
        m = output.metrics
        assert m.ttft is not None and m.ttft >= 0 and len(m.tbts) == len(output.token_ids) - 1


def test_block_groups_cut_copy_calls_against_vllm_granularity(model, prompts):
    overrides = dict(num_gpu_blocks=8, max_num_seqs=6, max_num_batched_tokens=24, policy="priority",
                     priority_update_freq=0.3, seed=3, async_swap=False, kv_reuse=False)
    _, vllm = run(model, prompts, block_groups=False, **overrides)
    _, groups = run(model, prompts, block_groups=True, **overrides)
    v, g = vllm.stats(), groups.stats()
    # vLLM: one call per block per layer per K/V (2 layers here); groups: one per contiguous run.
    assert v["copy_calls"] == (v["swap_out_blocks"] + v["swap_in_blocks"]) * 2 * 2
    assert g["copy_calls"] <= g["swap_out_blocks"] + g["swap_in_blocks"]
    assert g["copy_calls"] < v["copy_calls"]


def test_run_stats_report_tail_latencies_and_throughput(model, prompts):
    _, engine = run(model, prompts[:3])
    stats = engine.stats()
    for key in ("ttft_p50", "ttft_p95", "ttft_p99", "ttft_p999", "tbt_p99", "tbt_p999"):
        assert stats[key] >= 0
    assert stats["throughput_tokens_per_s"] > 0 and stats["num_finished_requests"] == 3


def test_abort_frees_blocks_and_reports_reason(model, prompts):
    config = EngineConfig.from_preset("fastswitch", block_size=8, attention_backend="torch", num_gpu_blocks=16,
                                      max_model_len=256)  # fmt: skip
    engine = build_engine(model, config)
    outputs = [engine.add_request(p, PARAMS) for p in prompts[:3]]
    engine.step()
    aborted = engine.abort(outputs[1].request_id)
    assert aborted.finish_reason == "abort" and engine.abort(outputs[1].request_id) is None
    engine.run_until_done()
    engine.close()
    assert engine.stats()["num_free_gpu_blocks"] == 16
    assert outputs[0].finish_reason == outputs[2].finish_reason == "length"


def test_bad_input_is_rejected_with_its_reason(model):
    config = EngineConfig.from_preset("vllm", block_size=8, attention_backend="torch", num_gpu_blocks=4,
                                      max_model_len=256)  # fmt: skip
    engine = build_engine(model, config)
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request([], PARAMS)
    with pytest.raises(ValueError, match="33 tokens exceeds max_seq_len=32"):
        engine.add_request([1] * 33, PARAMS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request([1, 500], PARAMS)
    with pytest.raises(ValueError, match="priority=-1"):
        engine.add_request([1], PARAMS, priority=-1)
    assert not engine.has_unfinished()
    with pytest.raises(ValueError, match="policy='lottery'"):
        EngineConfig.from_preset("fastswitch", policy="lottery")


def test_request_that_outgrows_the_cache_stops_at_its_limit(model):
    config = EngineConfig.from_preset("fastswitch", block_size=8, attention_backend="torch", num_gpu_blocks=2,
                                      max_model_len=256)  # fmt: skip
    engine = build_engine(model, config)
    output = engine.add_request([1] * 10, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.run_until_done()
    engine.close()
    assert output.finish_reason == "length" and len(output.token_ids) == 16 - 10


# ---- through the LLM facade ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_model_folder(tmp_path_factory):
    from fastswitch.model_sources import tiny_random_llama

    return tiny_random_llama(seed=0, root=tmp_path_factory.mktemp("tiny") / "model")


def test_llm_conversation_appends_turns_to_one_context(chat_model_folder):
    from fastswitch.llm import LLM

    llm = LLM(chat_model_folder, block_size=8, attention_backend="torch", num_gpu_blocks=64)
    session = llm.conversation(system="be brief")
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    first = session.send("hello there", params)
    before = llm.stats()["num_prompt_tokens"]
    second = session.send("and again", params)
    context = first.prompt_token_ids + first.token_ids
    assert second.prompt_token_ids[: len(context)] == context
    # Only the new message's tokens (and the last answer token, never fed back) were prefilled: the
    # context's KV was kept between the turns.
    assert llm.stats()["num_prompt_tokens"] - before == len(second.prompt_token_ids) - len(context) + 1
    assert second.token_ids == llm.generate([second.prompt_token_ids], params)[0].token_ids
    assert second.text is not None and second.prompt == "and again"
    session.close()
    llm.close()
    assert llm.stats()["num_free_gpu_blocks"] == 64


def test_llm_stats_show_reuse_on_a_conversations_second_eviction(chat_model_folder):
    from fastswitch.llm import LLM

    llm = LLM(chat_model_folder, block_size=8, attention_backend="torch", num_gpu_blocks=12, num_cpu_blocks=64,
              async_swap=False)  # fmt: skip
    block_bytes = llm.stats()["block_bytes"]
    session = llm.conversation()
    first = session.send("x" * 20, SamplingParams(max_tokens=6, ignore_eos=True))
    kept = len(first.prompt_token_ids) + len(first.token_ids) - 1  # the last token is never fed back
    filler = SamplingParams(max_tokens=1, ignore_eos=True)
    llm.generate([[65] * 90], filler)  # 12 blocks: the idle context must leave the device
    stats = llm.stats()
    assert stats["swap_out_bytes"] == -(-kept // 8) * block_bytes
    second = session.send("y" * 20, SamplingParams(max_tokens=6, ignore_eos=True))
    kept_after = len(second.prompt_token_ids) + len(second.token_ids) - 1
    llm.generate([[66] * 90], filler)
    stats2 = llm.stats()
    # Only blocks from the first one the host did not hold whole were copied the second time.
    new_blocks = -(-kept_after // 8) - kept // 8
    assert stats2["swap_out_bytes"] - stats["swap_out_bytes"] == new_blocks * block_bytes
    assert stats2["reused_bytes"] == (kept // 8) * block_bytes
    session.close()
    llm.close()


def test_llm_step_by_step(chat_model_folder):
    from fastswitch.llm import LLM

    llm = LLM(chat_model_folder, block_size=8, attention_backend="torch", num_gpu_blocks=32, policy="priority")
    low = llm.add_request("first", SamplingParams(max_tokens=4, ignore_eos=True), priority=3)
    high = llm.add_request("second", SamplingParams(max_tokens=4, ignore_eos=True), priority=0)
    seen = []
    while llm.has_unfinished():
        seen += [o.request_id for o in llm.step()]
    assert low.finished and high.finished and seen.count(low.request_id) == 4
    llm.close()


def test_arrival_time_orders_requests_and_starts_their_ttft(model):
    config = EngineConfig.from_preset("fastswitch", block_size=8, attention_backend="torch", max_num_seqs=1,
                                      num_gpu_blocks=64, max_model_len=256)  # fmt: skip
    engine = build_engine(model, config)
    now = time.monotonic()
    later = engine.add_request([1, 2, 3], PARAMS, arrival_time=now - 1.0)
    earlier = engine.add_request([4, 5, 6], PARAMS, arrival_time=now - 2.0)  # added second, arrived first
    assert (earlier.metrics.arrival_time, later.metrics.arrival_time) == (now - 2.0, now - 1.0)
    engine.run_until_done()
    assert earlier.metrics.first_token_time < later.metrics.first_token_time  # fcfs by arrival, one at a time
    assert earlier.metrics.ttft >= 2.0 and later.metrics.ttft >= 1.0
    default = engine.add_request([7, 8], PARAMS)
    assert now <= default.metrics.arrival_time <= time.monotonic()
    for bad in (time.monotonic() + 60.0, "soon", True, float("nan")):
        with pytest.raises(ValueError, match=r"arrival_time=.* at most now="):
            engine.add_request([9], PARAMS, arrival_time=bad)
    assert engine.add_request([9], PARAMS).request_id == "3"  # a rejected request used no id
    engine.run_until_done()
    engine.close()
