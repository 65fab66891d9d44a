"""The adaptive sync/async swap rule decides by time: the copy's estimate, times the requests a wait
holds up, against the step time. First the rule alone over fake estimates, then through the engine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fakes import make_engine, reference_output
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.adaptive_swap import AdaptiveSwapRule


@dataclass
class Estimates:
    """A SwapEstimates whose every sequence holds `blocks` blocks and swaps in `seconds`."""

    asynchronous: bool = True
    num_free_device_blocks: int = 0
    num_pending_free_blocks: int = 0
    blocks: int = 2
    seconds: float | None = None

    def num_blocks_of(self, seq_id) -> int:
        return self.blocks

    def estimated_swap_time(self, seq_id) -> float | None:
        return self.seconds


def rule(estimates: Estimates, step: tuple[int, float] | None = None) -> AdaptiveSwapRule:
    swap_rule = AdaptiveSwapRule(estimates, sync_swap_fraction=0.5, adaptive_sync_blocks=4)
    if step is not None:
        swap_rule.observe_step(*step)
    return swap_rule


def test_synchronous_swaps_are_always_waited_for():
    swap_rule = rule(Estimates(asynchronous=False, blocks=100, seconds=10.0), step=(1, 0.01))
    assert swap_rule.wait_for_swap("s") and swap_rule.wait_for_swap("s", num_scheduled=5)


def test_the_wait_costs_the_copy_times_the_last_batch_against_a_fraction_of_the_step():
    # batch 4, step 0.25 s, fraction 0.5: a copy is waited for up to 0.125 / 4 = 0.03125 s.
    assert rule(Estimates(seconds=0.03125), step=(4, 0.25)).wait_for_swap("s")
    assert not rule(Estimates(seconds=0.0313), step=(4, 0.25)).wait_for_swap("s")


def test_a_swap_in_is_overlapped_when_the_batch_does_not_shrink_without_it():
    swap_rule = rule(Estimates(seconds=0.0), step=(3, 0.25))
    assert swap_rule.wait_for_swap("s", num_scheduled=2)
    assert not swap_rule.wait_for_swap("s", num_scheduled=3)


@pytest.mark.parametrize("seconds, step", [(None, (4, 0.25)), (0.001, None)])
@pytest.mark.parametrize("blocks, waited", [(4, True), (5, False)])
def test_until_copies_and_steps_are_timed_the_block_count_decides(seconds, step, blocks, waited):
    assert rule(Estimates(blocks=blocks, seconds=seconds), step).wait_for_swap("s") == waited


def test_the_step_time_is_an_exponential_average():
    swap_rule = rule(Estimates(), step=(2, 0.5))
    swap_rule.observe_step(3, 1.5)
    assert swap_rule.step_time == pytest.approx(0.5 + 0.2 * (1.5 - 0.5)) and swap_rule.last_batch_size == 3


def test_blocks_that_copies_in_flight_free_are_waited_for():
    swap_rule = rule(Estimates(num_free_device_blocks=2, num_pending_free_blocks=3))
    assert swap_rule.in_flight_frees_enough(5) and not swap_rule.in_flight_frees_enough(6)
    assert swap_rule.in_flight_frees_enough(4, keep_free=1) and not swap_rule.in_flight_frees_enough(4, keep_free=2)


PROMPTS = {"small": [1] * 6, "large": [2] * 31}  # 2 and 8 blocks of 4 tokens, 1,000 B each in the fakes


def params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def preempt_one(victim: str, seconds_per_byte: float | None, **overrides):
    """Two residents, then an urgent request that must evict `victim` (the later, lower-ranked one).
    seconds_per_byte=None: the copy engine gives no estimate (the block-count fallback decides)."""
    config = EngineConfig(
        block_size=4, num_gpu_blocks=12, num_cpu_blocks=48, max_num_seqs=8, policy="priority",
        async_swap=True, kv_reuse=False, **overrides,
    )
    engine, _, copies = make_engine(config, seconds_per_byte=seconds_per_byte)
    order = [name for name in PROMPTS if name != victim] + [victim]
    outputs = {name: engine.add_request(PROMPTS[name], params(8), priority=3) for name in order}
    engine.step()
    engine.step()
    step_time = engine.scheduler.swap_rule.step_time
    urgent = engine.add_request([3] * 10, params(2), priority=0)  # needs 3 blocks: only 2 are free
    engine.step()
    assert engine.last_schedule.swapped_out == [outputs[victim].request_id]
    return engine, copies, outputs, urgent, step_time


def finish_and_check(engine, copies, outputs) -> None:
    copies.close()
    while engine.has_unfinished():
        engine.step()
    for name, output in outputs.items():
        assert output.token_ids == reference_output(PROMPTS[name], 8)


def test_a_swap_small_against_the_step_time_is_waited_for_even_when_it_is_many_blocks():
    # 8 blocks, beyond the block-count fallback of 4, but 8,000 B at 1e-8 s/B is 80 us against a
    # step of tens of milliseconds: waiting lets the urgent request run in this very step.
    engine, copies, outputs, urgent, step_time = preempt_one("large", seconds_per_byte=1e-8)
    assert 8000 * 1e-8 <= EngineConfig().sync_swap_fraction * step_time
    assert engine.stats()["blocking_swaps"] == 1 and not copies.in_flight and len(urgent.token_ids) == 1
    finish_and_check(engine, copies, outputs)


@pytest.mark.parametrize("victim", ["large", "small"])
def test_a_swap_large_against_the_step_time_overlaps_even_when_it_is_few_blocks(victim):
    # At 1e-4 s/B even the 2-block victim (0.2 s, within the block-count fallback of 4, which waits
    # for it when no estimate exists: test_conversation.py) takes longer than the steps it would
    # stall, so the swap is not waited for and the urgent request sits this step out.
    engine, copies, outputs, urgent, step_time = preempt_one(victim, seconds_per_byte=1e-4)
    assert 2000 * 1e-4 > EngineConfig().sync_swap_fraction * step_time
    assert engine.stats()["blocking_swaps"] == 0 and not urgent.token_ids
    if victim == "large":  # the small resident needs no new block and runs beside the copy
        assert len(copies.in_flight) == 1 and len(outputs["small"].token_ids) == 3
    finish_and_check(engine, copies, outputs)


def test_a_swap_one_request_could_wait_for_overlaps_when_the_whole_batch_would_wait():
    # 8,000 B at 3.75e-7 s/B is 3 ms: under a tenth of the 40 ms step for one request, but the wait
    # would hold up both requests of the last batch (6 ms of waiting), so the copy overlaps.
    engine, copies, outputs, urgent, step_time = preempt_one("large", seconds_per_byte=3.75e-7)
    estimate, residents = 8000 * 3.75e-7, 2  # the batch before the urgent request came: both residents
    assert estimate <= EngineConfig().sync_swap_fraction * step_time < estimate * residents
    assert engine.stats()["blocking_swaps"] == 0 and len(copies.in_flight) == 1 and not urgent.token_ids
    finish_and_check(engine, copies, outputs)


def test_step_time_is_an_average_of_executor_runs_excluding_swap_waits():
    engine, _, _ = make_engine(EngineConfig(block_size=4, num_gpu_blocks=12, policy="fcfs"))
    assert engine.scheduler.swap_rule.step_time is None
    engine.add_request([1] * 6, params(3))
    engine.step()  # the fake executor charges 0.01 s + 1 ms per token
    assert engine.scheduler.swap_rule.step_time == pytest.approx(0.016)
    engine.step()
    assert engine.scheduler.swap_rule.step_time == pytest.approx(0.016 + 0.2 * (0.011 - 0.016))


def test_sync_swap_fraction_is_the_engine_configs_threshold():
    # The swap of test_a_swap_small_against...: 80 us against a step of tens of ms. The default
    # fraction (0.1) waits for it; a fraction of 0 waits for no swap that takes any time at all.
    engine, copies, outputs, urgent, step_time = preempt_one("large", seconds_per_byte=1e-8, sync_swap_fraction=0.0)
    assert engine.scheduler.swap_rule.sync_swap_fraction == 0.0
    assert engine.stats()["blocking_swaps"] == 0 and len(copies.in_flight) == 1 and not urgent.token_ids
    finish_and_check(engine, copies, outputs)


@pytest.mark.parametrize("adaptive_sync_blocks, waited", [(4, False), (8, True)])
def test_adaptive_sync_blocks_is_the_engine_configs_fallback(adaptive_sync_blocks, waited):
    # No estimate: the 8-block victim is beyond the default fallback of 4 blocks, within one of 8.
    engine, copies, outputs, urgent, _ = preempt_one("large", None, adaptive_sync_blocks=adaptive_sync_blocks)
    assert engine.stats()["blocking_swaps"] == int(waited)
    assert len(urgent.token_ids) == int(waited) and len(copies.in_flight) == int(not waited)
    finish_and_check(engine, copies, outputs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adaptive_sync_blocks": -1}, "adaptive_sync_blocks=-1 must be an integer >= 0"),
        ({"adaptive_sync_blocks": 2.5}, "adaptive_sync_blocks=2.5 must be an integer >= 0"),
        ({"sync_swap_fraction": -0.5}, r"sync_swap_fraction=-0\.5 must be a number >= 0"),
        ({"sync_swap_fraction": float("nan")}, "sync_swap_fraction=nan must be a number >= 0"),
        ({"sync_swap_fraction": "0.1"}, "sync_swap_fraction='0.1' must be a number >= 0"),
    ],
)
def test_bad_adaptive_parameters_name_the_value_and_the_limit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_preset("fastswitch", **kwargs)
