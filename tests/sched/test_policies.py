"""Policies and priority patterns: VTC's fairness bound against fcfs, counters, re-draw rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import make_engine
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.metrics import percentile
from fastswitch.sched.policies import VTCPolicy, make_policy
from fastswitch.sched.priority_patterns import PriorityUpdater
from fastswitch.sched.request import Request

INPUT_LEN, BATCH_TOKENS = 8, 16


def max_service_gap(policy: str) -> tuple[float, float]:
    """Two backlogged clients, "heavy" (long answers, all queued first) and "light" (short answers).

    Returns the largest |W_heavy - W_light| while both are backlogged and the VTC bound
    2 * max(w_p * L_input, w_q * M) of Sheng et al.
    """
    config = EngineConfig(
        block_size=4, num_gpu_blocks=64, max_num_seqs=4, max_num_batched_tokens=BATCH_TOKENS, policy=policy,
        block_groups=True, async_swap=False, kv_reuse=False,
    )
    engine, _, _ = make_engine(config)
    outputs = {"heavy": [], "light": []}
    for client, max_tokens in (("heavy", 24), ("light", 4)):
        for i in range(20):
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
            outputs[client].append(engine.add_request([i % 90 + 1] * INPUT_LEN, params, client_id=client))
    w_p, w_q = config.vtc_input_weight, config.vtc_output_weight

    def service(client: str) -> float:
        return sum(w_p * INPUT_LEN * bool(o.token_ids) + w_q * len(o.token_ids) for o in outputs[client])

    gap = 0.0
    while all(any(not o.finished for o in outs) for outs in outputs.values()):
        engine.step()
        gap = max(gap, abs(service("heavy") - service("light")))
    bound = 2 * max(w_p * INPUT_LEN, w_q * BATCH_TOKENS)
    return gap, bound


def test_vtc_keeps_two_backlogged_clients_within_the_bound_and_fcfs_does_not():
    vtc_gap, bound = max_service_gap("vtc")
    fcfs_gap, _ = max_service_gap("fcfs")
    assert vtc_gap <= bound
    assert fcfs_gap > 3 * bound


def test_vtc_charges_weights_and_lifts_returning_clients():
    policy = VTCPolicy(input_weight=1.0, output_weight=2.0)
    a = Request("a", [1] * 10, SamplingParams(), 0.0, client_id="A")
    policy.on_arrival(a, [])
    policy.on_first_admission(a)
    policy.on_output_token(a)
    assert policy.counters["A"] == 12.0
    b = Request("b", [1] * 3, SamplingParams(), 1.0, client_id="B")
    policy.on_arrival(b, [a])  # B was idle: lifted to the least-served active client
    assert policy.counters["B"] == 12.0
    assert policy.key(a) < policy.key(b)  # equal counters: the earlier arrival first


def test_make_policy_rejects_unknown_names():
    with pytest.raises(ValueError, match="policy='lottery'"):
        make_policy("lottery")


def requests(levels: list[int]) -> list[Request]:
    return [Request(str(i), [1], SamplingParams(), 0.0, priority=p) for i, p in enumerate(levels)]


@given(st.lists(st.integers(0, 3), min_size=1, max_size=20), st.integers(0, 1000))
def test_markov_moves_at_most_one_level_and_stays_in_range(levels, seed):
    updater = PriorityUpdater("markov", 1.0, 4, seed)
    reqs = requests(levels)
    assert updater.maybe_update(reqs)
    for before, request in zip(levels, reqs):
        assert abs(request.priority - before) <= 1 and 0 <= request.priority < 4


def test_random_pattern_is_uniform_and_reproducible_from_the_seed():
    draws = []
    for _ in range(2):
        updater = PriorityUpdater("random", 1.0, 4, seed=7)
        reqs = requests([0] * 400)
        updater.maybe_update(reqs)
        draws.append([r.priority for r in reqs])
    assert draws[0] == draws[1]
    counts = [draws[0].count(level) for level in range(4)]
    assert all(60 <= c <= 140 for c in counts), counts


def test_update_freq_is_the_per_iteration_probability_of_a_redraw():
    updater = PriorityUpdater("random", 0.04, 4, seed=1)
    hits = sum(updater.maybe_update(requests([0])) for _ in range(5000))
    assert 150 <= hits <= 250  # 200 expected
    assert not PriorityUpdater("random", 0.0, 4).maybe_update(requests([0]))


def test_bad_pattern_arguments_name_the_value():
    with pytest.raises(ValueError, match="priority_pattern='gauss'"):
        PriorityUpdater("gauss", 0.1, 4)
    with pytest.raises(ValueError, match="priority_update_freq=2"):
        PriorityUpdater("random", 2, 4)


def test_percentile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99.9) == pytest.approx(3.997)
