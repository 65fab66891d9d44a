"""Both scheduler modes on a tiny random Llama: preemption storms and conversations give exactly the
greedy outputs of an unconstrained run, whichever mode, preset and preemption mode schedules them."""

from __future__ import annotations

import random

import pytest

from fastswitch.build import build_engine
from fastswitch.config import EngineConfig
from fastswitch.engine import Engine
from fastswitch.models.loader import load_model
from fastswitch.models.sampling import SamplingParams
from tiny_llamas import tiny_llama

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    hf = tiny_llama(vocab_size=128, rms_norm_eps=1e-6)
    return load_model(hf, dtype="float32", progress=False).model


def engine_for(model, preset="fastswitch", **overrides) -> Engine:
    overrides = {"num_gpu_blocks": 64, **overrides}
    config = EngineConfig.from_preset(preset, block_size=8, attention_backend="torch", max_model_len=256, **overrides)
    return build_engine(model, config)


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(128) for _ in range(rng.randrange(2, 30))] for _ in range(8)]


@pytest.fixture(scope="module")
def reference(model, prompts):
    engine = engine_for(model)
    outputs = [engine.add_request(p, PARAMS) for p in prompts]
    engine.run_until_done()
    return [o.token_ids for o in outputs]


@pytest.mark.parametrize("scheduler_mode", ["chunked", "vllm-0.3.3"])
@pytest.mark.parametrize(
    "storm",
    [dict(preset="vllm"), dict(preset="fastswitch"), dict(preset="fastswitch", preemption_mode="recompute")],
    ids=["vllm-swap", "fastswitch-async-swap", "recompute"],
)
def test_storms_give_unconstrained_outputs_in_both_modes(model, prompts, reference, scheduler_mode, storm):
    engine = engine_for(model, num_gpu_blocks=8, num_cpu_blocks=64, max_num_seqs=6, max_num_batched_tokens=24,
                        policy="priority", priority_update_freq=0.3, seed=3, scheduler_mode=scheduler_mode,
                        **storm)  # fmt: skip
    outputs = [engine.add_request(p, PARAMS, priority=i % 4) for i, p in enumerate(prompts)]
    engine.run_until_done()
    engine.close()
    assert [o.token_ids for o in outputs] == reference
    stats = engine.stats()
    assert stats["num_preemptions"] > 0 and stats["scheduler_mode"] == scheduler_mode
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]
    assert stats["num_free_cpu_blocks"] == stats["num_cpu_blocks"]


def converse(engine: Engine, messages) -> tuple[list[list[int]], int]:
    conversation = engine.conversation()
    answers = []
    for new in messages:
        turn = conversation.submit(new, SamplingParams(max_tokens=5, ignore_eos=True))
        engine.run_until_done()
        answers.append(turn.token_ids)
    conversation.close()
    return answers, engine.stats()["num_prompt_tokens"]


def test_a_conversation_answers_the_same_whether_turns_keep_their_kv_or_prefill_it_again(model):
    messages = [[11, 12, 13, 14], [21, 22], [31, 32, 33]]
    baseline, baseline_prefill = converse(engine_for(model, "vllm", scheduler_mode="vllm-0.3.3"), messages)
    kept, kept_prefill = converse(engine_for(model, "fastswitch", scheduler_mode="vllm-0.3.3"), messages)
    chunked, _ = converse(engine_for(model, "fastswitch"), messages)
    assert baseline == kept == chunked
    assert baseline_prefill == 4 + (4 + 5 + 2) + (4 + 5 + 2 + 5 + 3)  # the whole history, every turn
    assert kept_prefill == 4 + (1 + 2) + (1 + 3)
