"""scheduler_mode="vllm-0.3.3": vLLM 0.3.3's scheduling structure (sched/vllm_scheduler.py).

Storms on the token-store fakes check the structure step by step (prompt steps never run decodes, a
step that swaps out swaps nothing in, swapped requests come back before a waiting one is admitted)
while every output stays exactly the unconstrained one; the chunked scheduler breaks the first two
on the same storm, so the checks can fail. Small hand-built cases check the watermark and that
the vllm preset prefills a conversation's whole history every turn.
"""

from __future__ import annotations

import random

import pytest

from fakes import make_engine, reference_output
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.vllm_scheduler import VllmScheduler


def decoding(request) -> bool:
    return bool(request.output_token_ids) and request.num_uncomputed_tokens == 1


class StepLog:
    """Records, for every step, the kinds of chunks it ran, its moves, and whether a decoding request
    sat on the host when it began."""

    def __init__(self, engine) -> None:
        self.steps: list[dict] = []
        scheduler, kv = engine.scheduler, engine.swap_manager
        schedule = scheduler.schedule

        def logged(now):
            live = scheduler.requests.values()
            swapped = [r.request_id for r in live if decoding(r) and kv.location(r.seq_id) == "host"]
            kinds = {r.request_id: decoding(r) for r in scheduler.requests.values()}
            out = schedule(now)
            self.steps.append({
                "decodes": sum(kinds[c.request.request_id] for c in out.chunks),
                "prompts": sum(not kinds[c.request.request_id] for c in out.chunks),
                "swapped_out": list(out.swapped_out), "swapped_in": list(out.swapped_in),
                "swapped_before": swapped,
            })  # fmt: skip
            return out

        scheduler.schedule = logged


def storm(scheduler_mode: str, seed: int, **overrides):
    """Sixteen requests and two conversations on a 12-block pool, priorities re-drawn, copies completed
    in random order; returns the step log after checking every output against the reference."""
    settings = dict(block_size=4, num_gpu_blocks=12, num_cpu_blocks=60, max_num_seqs=4, max_num_batched_tokens=16,
                    policy="priority", priority_update_freq=0.2, seed=seed, scheduler_mode=scheduler_mode)  # fmt: skip
    config = EngineConfig.from_preset(overrides.pop("preset", "fastswitch"), **{**settings, **overrides})
    engine, _, copies = make_engine(config, max_model_len=48)
    log = StepLog(engine)
    rng = random.Random(seed)
    expected = []
    for i in range(16):
        prompt = [rng.randrange(97) for _ in range(rng.randrange(1, 20))]
        max_tokens = rng.randrange(1, 10)
        out = engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), priority=i % 4)
        expected.append((out, prompt, max_tokens))
    conversations = [engine.conversation(priority=1), engine.conversation(priority=3)]
    for _ in range(3000):
        for conversation in conversations:
            if not conversation.busy and len(conversation.turns) < 3:
                new = [rng.randrange(97) for _ in range(rng.randrange(1, 6))]
                prompt = conversation.token_ids + new
                expected.append((conversation.submit(new, SamplingParams(max_tokens=4, ignore_eos=True)), prompt, 4))
        if not engine.has_unfinished():
            break
        copies.complete_some(rng)
        engine.step()
    assert not engine.has_unfinished()
    for out, prompt, max_tokens in expected:
        assert out.token_ids == reference_output(prompt, max_tokens)
    for conversation in conversations:
        conversation.close()
    engine.close()
    assert engine.swap_manager.device.num_free == engine.swap_manager.device.num_blocks
    assert engine.swap_manager.host.num_free == engine.swap_manager.host.num_blocks
    return log.steps, engine.stats()


STORMS = {
    "fastswitch-async": dict(),
    "fastswitch-sync": dict(async_swap=False),
    "vllm-swap": dict(preset="vllm"),
    "vllm-recompute": dict(preset="vllm", preemption_mode="recompute"),
    "fcfs": dict(policy="fcfs"),
    "vtc": dict(policy="vtc"),
}


@pytest.mark.parametrize("storm_name", list(STORMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_vllm_mode_keeps_vllm_033_structure_and_exact_outputs(storm_name, seed):
    steps, stats = storm("vllm-0.3.3", seed, **STORMS[storm_name])
    assert stats["scheduler_mode"] == "vllm-0.3.3" and stats["num_preemptions"] > 0
    assert any(s["prompts"] for s in steps) and any(s["decodes"] for s in steps)
    for step in steps:
        assert not (step["prompts"] and step["decodes"]), "a prompt step never runs decodes"
        assert not (step["swapped_out"] and step["swapped_in"]), "a step that swaps out swaps nothing in"
        if step["prompts"]:
            assert not step["swapped_before"], "swapped requests come back before a waiting one is admitted"


def test_the_chunked_scheduler_breaks_that_structure_on_the_same_storms():
    """The checks above can fail: the chunked scheduler mixes prompts with decodes, swaps in and out
    in one step, and admits waiting requests while others are swapped out."""
    steps = [s for seed in (0, 1) for s in storm("chunked", seed)[0]]
    assert any(s["prompts"] and s["decodes"] for s in steps)
    assert any(s["swapped_out"] and s["swapped_in"] for s in steps)
    assert any(s["prompts"] and s["swapped_before"] for s in steps)


def watermark_engine(scheduler_mode: str):
    # 100 blocks of 4 tokens: the 1% watermark keeps one block free when admitting.
    config = EngineConfig.from_preset("vllm", block_size=4, num_gpu_blocks=100, max_num_seqs=8,
                                      scheduler_mode=scheduler_mode)  # fmt: skip
    engine, _, _ = make_engine(config, max_model_len=400)
    return engine


@pytest.mark.parametrize("scheduler_mode", ["vllm-0.3.3", "chunked"])
def test_admission_keeps_the_watermark_free(scheduler_mode):
    engine = watermark_engine(scheduler_mode)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    first = engine.add_request(list(range(1, 60)) * 4 + [1, 2], params)  # 238 tokens: 60 blocks with its next
    engine.step()
    assert first.token_ids and engine.swap_manager.num_free_device_blocks == 40
    exact = engine.add_request([5] * 160, params)  # 40 blocks: would leave none free
    engine.step()
    if scheduler_mode == "chunked":  # no watermark: the prompt fits exactly, and is admitted
        assert exact.token_ids and len(first.token_ids) == 2
        return
    assert not exact.token_ids and len(first.token_ids) == 2  # a decode step: the prompt waits
    engine.run_until_done()
    assert exact.finish_reason == "length"


def test_one_block_under_the_watermark_is_admitted_and_a_prompt_beyond_the_pool_is_rejected():
    engine = watermark_engine("vllm-0.3.3")
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    engine.add_request(list(range(1, 60)) * 4 + [1, 2], params)
    engine.step()
    fits = engine.add_request([5] * 156, params)  # 39 blocks: one left free
    engine.step()
    assert fits.token_ids
    assert isinstance(engine.scheduler, VllmScheduler) and engine.scheduler.max_seq_len == 99 * 4
    with pytest.raises(ValueError, match="max_seq_len=396"):
        engine.add_request([5] * 397, params)


@pytest.mark.parametrize("scheduler_mode", ["chunked", "vllm-0.3.3"])
def test_without_turn_kv_every_turn_prefills_its_whole_history_with_the_same_answers(scheduler_mode):
    runs = {}
    for keep_turn_kv in (False, True):
        config = EngineConfig.from_preset("vllm", block_size=4, num_gpu_blocks=64, scheduler_mode=scheduler_mode,
                                          keep_turn_kv=keep_turn_kv)  # fmt: skip
        engine, _, _ = make_engine(config)
        conversation = engine.conversation()
        prompts, answers = [], []
        for new in ([3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8]):
            prompts.append(conversation.token_ids + new)
            answers.append(conversation.submit(new, SamplingParams(max_tokens=6, ignore_eos=True)))
            engine.run_until_done()
        assert [a.token_ids for a in answers] == [reference_output(p, 6) for p in prompts]
        runs[keep_turn_kv] = (engine.stats()["num_prompt_tokens"], sum(len(p) for p in prompts))
    prefilled, history = runs[False]
    assert prefilled == history  # 5 + 14 + 27 tokens: every turn from the start
    prefilled, _ = runs[True]
    assert prefilled == 5 + (1 + 3) + (1 + 4)  # the last answer token and the new message


def test_vllm_preset_is_the_paper_baseline_and_modes_are_validated():
    assert EngineConfig.from_preset("vllm").keep_turn_kv is False
    assert EngineConfig.from_preset("fastswitch").keep_turn_kv is True
    assert EngineConfig().scheduler_mode == "chunked"
    with pytest.raises(ValueError, match="scheduler_mode='vllm'"):
        EngineConfig(scheduler_mode="vllm")


def test_fastswitch_mechanisms_still_apply_in_vllm_mode():
    """The paper's FastSwitch is built on vLLM 0.3.3: in this mode its swaps still go by block groups,
    some are overlapped and some waited for by the adaptive rule, and swap-outs reuse host copies."""
    from fastswitch.sim.hardware import get_profile
    from fastswitch.sim.model_shapes import get_model_shape
    from fastswitch.sim.simulator import simulate
    from fastswitch.workloads import synthetic_sharegpt

    workload = synthetic_sharegpt(num_conversations=10, rate=4.0, seed=3, mean_prompt_tokens=60,
                                  mean_response_tokens=40, think_time_mean=0.5, max_context_tokens=600)  # fmt: skip
    runs = {}
    for preset in ("vllm", "fastswitch"):
        config = EngineConfig.from_preset(preset, num_gpu_blocks=40, num_cpu_blocks=400, max_model_len=640,
                                          policy="priority", priority_update_freq=0.2,
                                          scheduler_mode="vllm-0.3.3")  # fmt: skip
        runs[preset] = simulate(config, get_model_shape("llama-3-8b"), get_profile("a10"), workload)
    vllm, fast = runs["vllm"], runs["fastswitch"]
    swaps = fast["swap_out_count"] + fast["swap_in_count"]
    assert vllm["blocking_swaps"] == vllm["swap_out_count"] + vllm["swap_in_count"] > 0  # all synchronous
    assert 0 < fast["blocking_swaps"] < swaps  # the adaptive rule waits for some and overlaps others
    assert fast["reused_blocks"] > 0 and vllm["reused_blocks"] == 0
    fast_calls = fast["copy_calls"] / (fast["swap_out_blocks"] + fast["swap_in_blocks"])
    vllm_calls = vllm["copy_calls"] / (vllm["swap_out_blocks"] + vllm["swap_in_blocks"])
    assert fast_calls < 1 < vllm_calls  # block groups: fewer copy calls than blocks; vLLM: per block and layer
