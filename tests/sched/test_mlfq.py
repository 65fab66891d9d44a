"""FastServe's skip-join MLFQ (sched/mlfq.py): placement by prompt length, demotion after a quantum,
promotion of starved requests, preemption of a demoted long request by a new short one, and runs
that complete every request with the right tokens."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import make_engine, reference_output
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.mlfq import MLFQPolicy
from fastswitch.sched.request import Request


def request(request_id: str, num_prompt_tokens: int, cached: int = 0) -> Request:
    r = Request(request_id, [1] * num_prompt_tokens, SamplingParams(), 0.0)
    r.num_computed_tokens = cached
    return r


def test_skip_join_places_a_request_in_the_first_queue_whose_quantum_covers_its_prefill():
    policy = MLFQPolicy(num_levels=6, prefill_tokens_per_iteration=128)  # quanta 1, 2, 4, 8, 16, 32
    assert policy.quanta == [1, 2, 4, 8, 16, 32]
    # prompt tokens -> first iteration 1 + (n - 1) / 128 iterations -> queue
    for tokens, level in [(1, 0), (2, 1), (129, 1), (130, 2), (385, 2), (386, 3), (1000, 4), (10_000, 5)]:
        r = request(str(tokens), tokens)
        policy.on_arrival(r, [])
        assert policy.level_of(r) == level, tokens
    # A conversation turn whose context is cached joins by the tokens it still has to prefill.
    turn = request("turn", 1000, cached=990)
    policy.on_arrival(turn, [])
    assert policy.level_of(turn) == 1


def step(policy: MLFQPolicy, live: list[Request], ran: dict[str, int]) -> None:
    """One step: the requests in `ran` computed that many tokens in the previous iteration."""
    for r in live:
        r.num_computed_tokens += ran.get(r.request_id, 0)
    policy.on_step(live, 0.0)


def test_a_request_is_demoted_once_it_has_used_its_queues_quantum_and_goes_behind_that_queue():
    policy = MLFQPolicy(num_levels=4)  # quanta 1, 2, 4, 8
    long, other = request("long", 1), request("other", 1)
    policy.on_arrival(long, [])
    policy.on_arrival(other, [long])
    step(policy, [long, other], {})
    assert policy.level_of(long) == 0 and policy.key(long) < policy.key(other)
    step(policy, [long, other], {"long": 1})  # 1 iteration: queue 0's quantum used up
    assert policy.level_of(long) == 1 and policy.key(other) < policy.key(long)
    levels = []
    for _ in range(2 + 4 + 8 + 3):
        step(policy, [long, other], {"long": 1, "other": 0})
        levels.append(policy.level_of(long))
    assert levels == [1, 2] + [2] * 3 + [3] + [3] * 11  # 2 iterations in queue 1, 4 in queue 2; 3 is the last
    assert policy.num_demotions == 3
    # A prefill is charged as the iterations it takes: 257 tokens cost 1 + 256 / 128 = 3.
    big = request("big", 300)
    policy.on_arrival(big, [])
    assert policy.level_of(big) == 2
    step(policy, [big], {"big": 257})
    assert policy.level_of(big) == 2
    step(policy, [big], {"big": 1})
    assert policy.level_of(big) == 3


def test_a_request_that_waits_starve_limit_steps_is_promoted_to_the_first_queue():
    policy = MLFQPolicy(num_levels=4, starve_limit=5)
    waiting, front, runner = request("waiting", 2000), request("front", 1), request("runner", 1)
    for r in (waiting, front, runner):
        policy.on_arrival(r, [])
    assert policy.level_of(waiting) == 3 and policy.level_of(front) == 0
    for _ in range(4):
        step(policy, [waiting, front, runner], {"runner": 1})
    assert policy.level_of(waiting) == 3
    front_key = policy.key(front)
    step(policy, [waiting, front, runner], {"runner": 1})  # its 5th step without running
    assert policy.level_of(waiting) == 0 and policy.num_promotions == 1
    assert policy.key(front) == front_key  # waiting in queue 0 already: it keeps its place
    assert policy.key(front) < policy.key(waiting)  # the promoted request joins queue 0 at the back
    step(policy, [waiting, front, runner], {"waiting": 1})  # it ran: demoted again after the quantum
    assert policy.level_of(waiting) == 1


def test_state_of_finished_requests_is_dropped_at_the_next_step():
    policy = MLFQPolicy()
    a, b = request("a", 4), request("b", 4)
    policy.on_arrival(a, [])
    policy.on_arrival(b, [a])
    step(policy, [b], {})
    assert set(policy.jobs) == {"b"}


def params(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize("policy", ["mlfq", "fcfs"])
def test_a_new_short_request_preempts_a_demoted_long_one(policy):
    config = EngineConfig(block_size=4, num_gpu_blocks=10, num_cpu_blocks=40, max_num_seqs=4, policy=policy,
                          async_swap=False)  # fmt: skip
    engine, _, _ = make_engine(config)
    long = engine.add_request([3] * 8, params(24))
    for _ in range(20):  # 27 tokens: 7 of the 10 blocks
        engine.step()
    if policy == "mlfq":
        live = engine.scheduler.requests[long.request_id]
        assert engine.scheduler.policy.level_of(live) == 4  # joined queue 1, then used up the quanta of 1-3
    short = engine.add_request([5] * 16, params(4))  # its prompt needs 4 blocks: only 3 are free
    engine.run_until_done()
    assert long.token_ids == reference_output([3] * 8, 24) and short.token_ids == reference_output([5] * 16, 4)
    if policy == "mlfq":
        assert long.metrics.num_preemptions == 1 and engine.stats()["swap_out_count"] >= 1
        assert short.metrics.finish_time < long.metrics.finish_time
    else:  # the baseline runs to completion: the short request waits for the long one
        assert long.metrics.num_preemptions == 0 and short.metrics.first_token_time > long.metrics.finish_time


@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12), st.integers(0, 3)), min_size=1, max_size=12),
       st.integers(0, 2**16))  # fmt: skip
def test_mlfq_completes_every_request_with_the_right_tokens_under_preemption(specs, seed):
    """Arrivals over time on a small pool with asynchronous swaps completed in random order."""
    config = EngineConfig(block_size=4, num_gpu_blocks=16, num_cpu_blocks=64, max_num_seqs=4,
                          max_num_batched_tokens=32, policy=MLFQPolicy(num_levels=4, starve_limit=8))  # fmt: skip
    engine, _, copies = make_engine(config)
    rng = random.Random(seed)
    outputs, pending = [], list(specs)
    while pending or engine.has_unfinished():
        while pending and (not engine.has_unfinished() or pending[0][2] == 0):
            prompt_len, max_tokens, _ = pending.pop(0)
            prompt = [rng.randrange(1, 97) for _ in range(prompt_len)]
            outputs.append((prompt, max_tokens, engine.add_request(prompt, params(max_tokens))))
        if pending:
            pending[0] = (pending[0][0], pending[0][1], pending[0][2] - 1)  # steps until the next arrival
        copies.complete_some(rng)
        engine.step()
    for prompt, max_tokens, output in outputs:
        assert output.finish_reason == "length" and output.token_ids == reference_output(prompt, max_tokens)


@pytest.mark.parametrize("scheduler_mode", ["chunked", "vllm-0.3.3"])
def test_simulated_run_under_mlfq_completes_every_turn(scheduler_mode):
    from fastswitch.sim import get_experiment
    from fastswitch.sim.runner import jobs_of, run_job

    experiment = get_experiment("smoke").replace(num_conversations=12, presets=("fastswitch",),
                                                 scheduler_mode=scheduler_mode)  # fmt: skip
    experiment = experiment.replace(engine={**experiment.engine, "policy": "mlfq"})
    (result,) = [run_job(job, progress=False) for job in jobs_of(experiment)]
    assert result["policy"] == "mlfq" and result["num_finished_requests"] == result["num_turns"]
