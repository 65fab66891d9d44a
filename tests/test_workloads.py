import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.sharegpt import load_sharegpt
from fastswitch.workloads import draw_priorities, synthetic_sharegpt, workload_from_prompts


def test_same_seed_same_workload_and_other_seed_differs():
    a = synthetic_sharegpt(num_conversations=50, seed=3, vocab_range=(10, 100))
    b = synthetic_sharegpt(num_conversations=50, seed=3, vocab_range=(10, 100))
    c = synthetic_sharegpt(num_conversations=50, seed=4, vocab_range=(10, 100))
    assert a == b
    assert a != c


def test_statistics_follow_multi_round_sharegpt():
    w = synthetic_sharegpt(num_conversations=3000, seed=0, max_context_tokens=10**9)
    s = w.summary()
    # Geometric turns with mean 5.5 (std ~5): 3,000 draws put the sample mean within ~0.3.
    assert abs(s["mean_turns"] - 5.5) < 0.35
    # Log-normal lengths with the ShareGPT means (161 in, 338 out); sample noise of a few percent.
    assert abs(s["mean_prompt_tokens"] - 161) / 161 < 0.08
    assert abs(s["mean_response_tokens"] - 338) / 338 < 0.06
    # Poisson arrivals at 1 conversation/s: the last one arrives near t = 3,000 s.
    assert abs(s["duration_s"] - 3000) < 200
    multi_turn = sum(len(c.turns) > 1 for c in w.conversations) / len(w.conversations)
    assert 0.78 < multi_turn < 0.86


def test_arrival_rate_scales_start_times():
    slow = synthetic_sharegpt(num_conversations=400, rate=0.5, seed=1)
    fast = synthetic_sharegpt(num_conversations=400, rate=2.0, seed=1)
    assert slow.summary()["duration_s"] == pytest.approx(4 * fast.summary()["duration_s"])
    starts = [c.start_time for c in fast.conversations]
    assert starts == sorted(starts) and starts[0] > 0


def test_think_time_is_exponential_with_the_given_mean():
    w = synthetic_sharegpt(num_conversations=1000, seed=2, think_time_mean=4.0)
    thinks = [t.think_time for c in w.conversations for t in c.turns[1:]]
    assert all(c.turns[0].think_time == 0.0 for c in w.conversations)
    assert abs(np.mean(thinks) - 4.0) < 0.3
    # An exponential's median is mean * ln 2.
    assert abs(np.median(thinks) - 4.0 * np.log(2)) < 0.3


def test_context_never_exceeds_the_window():
    w = synthetic_sharegpt(num_conversations=300, seed=5, max_context_tokens=1024)
    assert all(c.context_tokens <= 1024 for c in w.conversations)
    assert all(len(c.turns) >= 1 for c in w.conversations)


def test_token_ids_lie_in_the_vocab_range_and_match_counts():
    w = synthetic_sharegpt(num_conversations=20, seed=0, vocab_range=(5, 50))
    for c in w.conversations:
        for t in c.turns:
            assert len(t.prompt_token_ids) == t.prompt_tokens
            assert all(5 <= i < 50 for i in t.prompt_token_ids)
    assert all(t.prompt_token_ids is None for c in synthetic_sharegpt(5).conversations for t in c.turns)


def test_clients_cover_the_requested_count():
    w = synthetic_sharegpt(num_conversations=500, num_clients=7, seed=0)
    assert set(c.client_id for c in w.conversations) == set(range(7))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"rate": 0.0}, "rate=0.0"),
        ({"num_clients": 0}, "num_clients=0"),
        ({"priority_pattern": "gaussian"}, "priority_pattern='gaussian'"),
        ({"mean_turns": 0.5}, "mean_turns=0.5"),
        ({"vocab_range": (10, 10)}, "vocab_range"),
        ({"max_context_tokens": 1}, "max_context_tokens=1"),
    ],
)
def test_bad_parameters_raise_naming_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        synthetic_sharegpt(num_conversations=3, **kwargs)


def test_random_priorities_are_uniform_and_markov_moves_one_level():
    rng = np.random.default_rng(0)
    counts = Counter(draw_priorities(rng, "random", 4, 8000))
    assert all(abs(counts[level] - 2000) < 200 for level in range(4))
    chain = draw_priorities(rng, "markov", 5, 5000, markov_stay=0.6)
    assert set(np.abs(np.diff(chain)).tolist()) == {0, 1}  # reflection at the ends is a one-level move too
    interior = [abs(b - a) for a, b in zip(chain, chain[1:]) if 0 < a < 4]
    assert set(interior) <= {0, 1}
    assert abs(interior.count(0) / len(interior) - 0.6) < 0.05


@given(st.integers(1, 6), st.integers(0, 40), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_markov_levels_stay_in_range(levels, count, stay, seed):
    chain = draw_priorities(np.random.default_rng(seed), "markov", levels, count, markov_stay=stay)
    assert len(chain) == count
    assert all(0 <= x < levels for x in chain)


def _write_sharegpt(tmp_path):
    records = [
        {"id": "a", "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "x" * 40},
            {"from": "gpt", "value": "y" * 80},
            {"from": "human", "value": "z" * 8},
            {"from": "gpt", "value": "w" * 400},
            {"from": "human", "value": "unanswered"},
        ]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "no user at all"}]},
        {"id": "c", "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "general kenobi"},
        ]},
    ]  # fmt: skip
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records))
    return path


def test_load_sharegpt_pairs_turns_and_estimates_tokens(tmp_path):
    w = load_sharegpt(_write_sharegpt(tmp_path), rate=2.0, seed=1)
    assert len(w.conversations) == 2  # "b" has no answered user message
    first = w.conversations[0]
    assert [(t.prompt_tokens, t.response_tokens) for t in first.turns] == [(10, 20), (2, 100)]
    assert first.turns[0].prompt_text == "x" * 40
    assert w.conversations[1].turns[0].prompt_text == "hello there"
    assert 0 < w.conversations[0].start_time < w.conversations[1].start_time


class _CharTokenizer:
    def encode(self, text):
        return [ord(ch) for ch in text]


def test_load_sharegpt_with_a_tokenizer_keeps_ids_and_respects_limits(tmp_path):
    path = _write_sharegpt(tmp_path)
    w = load_sharegpt(path, tokenizer=_CharTokenizer(), max_context_tokens=200, num_conversations=1)
    (conv,) = w.conversations
    # Turn 2 (8 + 400 tokens) would overflow the 200-token window, so only turn 1 remains.
    assert [(t.prompt_tokens, t.response_tokens) for t in conv.turns] == [(40, 80)]
    assert conv.turns[0].prompt_token_ids == tuple(ord("x") for _ in range(40))
    assert load_sharegpt(path, seed=9) == load_sharegpt(path, seed=9)


def test_load_sharegpt_rejects_a_non_list(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"conversations": []}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_sharegpt(path)


def test_workload_from_prompts_checks_lengths():
    w = workload_from_prompts([3, 4], [5, 6], arrival_times=[0.0, 1.5], priorities=[1, 0], client_ids=[0, 1],
                              token_ids=lambda i, n: [i] * n)  # fmt: skip
    assert [c.turns[0].prompt_token_ids for c in w.conversations] == [(0, 0, 0), (1, 1, 1, 1)]
    assert w.conversations[1].start_time == 1.5 and w.num_clients == 2
    with pytest.raises(ValueError, match="priorities has 1 entries"):
        workload_from_prompts([3, 4], 5, priorities=[1])


@given(
    st.integers(0, 8), st.floats(0.1, 10.0), st.integers(0, 2**16), st.floats(1.0, 8.0),
    st.integers(2, 3000), st.sampled_from(["random", "markov"]), st.integers(1, 5),
)  # fmt: skip
def test_any_parameters_give_a_well_formed_trace(n, rate, seed, mean_turns, window, pattern, levels):
    w = synthetic_sharegpt(num_conversations=n, rate=rate, seed=seed, mean_turns=mean_turns, max_context_tokens=window,
                           priority_pattern=pattern, num_priority_levels=levels, vocab_range=(0, 7))  # fmt: skip
    assert len(w.conversations) == n and w.num_turns >= n
    for c in w.conversations:
        assert c.context_tokens <= window and c.turns and c.start_time > 0
        for t in c.turns:
            assert t.prompt_tokens >= 1 and t.response_tokens >= 1 and t.think_time >= 0
            assert 0 <= t.priority < levels and len(t.prompt_token_ids) == t.prompt_tokens
