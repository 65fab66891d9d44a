"""SamplingParams validation and the Sampler, each operation against a direct computation of vLLM's definition."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from fastswitch.models import Sampler, SamplingParams
from fastswitch.models.sampling import TokenHistory, apply_top_k_top_p


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_tokens=0), "max_tokens=0"),
        (dict(max_tokens=2.5), "max_tokens=2.5"),
        (dict(temperature=-0.1), "temperature=-0.1"),
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(temperature=2.5), r"temperature=2.5 must be a finite number in \[0, 2.0\]"),
        (dict(temperature="1"), "temperature='1'"),
        (dict(top_k=-2), "top_k=-2"),
        (dict(top_k=1.5), "top_k=1.5"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(min_p=-0.1), "min_p=-0.1"),
        (dict(min_p=1.01), "min_p=1.01"),
        (
            dict(seed=2**64),
            r"seed=18446744073709551616 must be None or an integer in \[-9223372036854775808, 18446744073709551615\]",
        ),
        (dict(seed=-(2**63) - 1), "seed=-9223372036854775809"),
        (dict(seed=2**64 - 2, n=3), "seed=18446744073709551614"),
        (dict(seed=1.0), "seed=1.0"),
        (dict(stop_token_ids=[4, -1]), "stop_token_ids contains -1"),
        (dict(stop_token_ids=5), "stop_token_ids=5 must be a list of token ids"),
        (dict(stop_token_ids=["a"]), "stop_token_ids contains 'a'"),
        (dict(stop=""), "stop='' must be a non-empty string"),
        (dict(stop=["ok", ""]), "stop=\\['ok', ''\\]"),
        (dict(stop=[3]), "stop=\\[3\\]"),
        (dict(ignore_eos="yes"), "ignore_eos='yes'"),
        (dict(include_stop_str_in_output=1), "include_stop_str_in_output=1"),
        (dict(n=0), r"n=0 must be an integer in \[1, 16384\]"),
        (dict(n=True), "n=True"),
        (dict(min_tokens=-1), "min_tokens=-1"),
        (dict(min_tokens=17), "min_tokens=17 must be at most max_tokens=16"),
        (dict(presence_penalty=2.5), r"presence_penalty=2.5 must be a number in \[-2.0, 2.0\]"),
        (dict(frequency_penalty=-3), "frequency_penalty=-3"),
        (dict(frequency_penalty=float("inf")), "frequency_penalty=inf"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be a finite number > 0"),
        (dict(logit_bias=[1, 2]), "logit_bias=\\[1, 2\\] must be a mapping"),
        (dict(logit_bias={"x": 1.0}), "logit_bias key 'x' is not a token id"),
        (dict(logit_bias={-3: 1.0}), "logit_bias key -3"),
        (dict(logit_bias={True: 1.0}), "logit_bias key True"),
        (dict(logit_bias={5: 101}), r"logit_bias value 101 for token 5 must be a number in \[-100, 100\]"),
        (dict(logit_bias={5: float("nan")}), "logit_bias value nan"),
        (dict(logprobs=21), r"logprobs=21 must be None, -1 \(all\) or an integer in \[0, 20\]"),
        (dict(logprobs=-2), "logprobs=-2"),
        (dict(prompt_logprobs=1.0), "prompt_logprobs=1.0"),
    ],
)
def test_invalid_params_raise_naming_the_value_and_the_limit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_vllm_normalisations():
    assert SamplingParams(top_k=-1).top_k == 0  # vLLM's "off"
    assert SamplingParams(seed=-1).seed is None  # vLLM's "no seed"
    assert SamplingParams(temperature=1e-45).temperature == 0.01  # raised as vLLM does: no inf logits
    assert SamplingParams(temperature=0.0).greedy and not SamplingParams(temperature=1e-45).greedy
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop_token_ids=[5, 7, 5]).stop_token_ids == (5, 7)
    assert SamplingParams(logit_bias={"12": 5, 3: -100}).logit_bias == {12: 5.0, 3: -100.0}  # JSON keys
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(seed=2**64 - 3, n=3).seed == 2**64 - 3


def test_token_ids_are_checked_against_the_vocabulary():
    SamplingParams(stop_token_ids=[5, 7], logit_bias={7: 1.0}).check_vocab(8)
    with pytest.raises(ValueError, match="stop token id 7 is outside the vocabulary \\(size 7\\)"):
        SamplingParams(stop_token_ids=[5, 7]).check_vocab(7)
    with pytest.raises(ValueError, match="logit_bias token id 9 is outside the vocabulary \\(size 8\\)"):
        SamplingParams(logit_bias={9: 1.0}).check_vocab(8)
    with pytest.raises(ValueError, match="logprobs=-1 asks for all 50 tokens, more than the limit of 20"):
        SamplingParams(logprobs=-1).check_vocab(50)
    SamplingParams(logprobs=-1).check_vocab(20)


def test_greedy_rows_take_the_argmax_and_top_k_1_is_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(), SamplingParams(temperature=1.5, top_k=1)] * 2
    tokens = Sampler().sample(logits, params, [None] * 4)
    assert tokens == logits.argmax(-1).tolist()


def test_seeded_requests_repeat_and_differ_by_seed():
    logits = torch.zeros(1, 1000)  # uniform: any two seeds drawing the same 5 tokens is vanishingly unlikely
    params = [SamplingParams(temperature=1.0)]

    def draw(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [Sampler().sample(logits, params, [gen])[0] for _ in range(5)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_a_seeded_row_draws_the_same_whatever_shares_its_batch():
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0)
    alone = Sampler().sample(logits[1:2], [p], [torch.Generator().manual_seed(5)])
    batched = Sampler().sample(logits, [p] * 3, [None, torch.Generator().manual_seed(5), None])
    assert batched[1] == alone[0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_tempered_distribution(temperature):
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(probs).unsqueeze(0)
    gen = torch.Generator().manual_seed(0)
    params = [SamplingParams(temperature=temperature)] * 4000
    counts = torch.bincount(torch.tensor(Sampler().sample(logits.expand(4000, -1), params, [gen] * 4000)), minlength=4)
    expected = probs**(1 / temperature) / (probs**(1 / temperature)).sum()  # softmax(logits / T)
    assert counts[3] == 0
    assert torch.allclose(counts.float() / 4000, expected, atol=0.03)


def test_batch_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="batch size"):
        Sampler().sample(torch.zeros(2, 5), [SamplingParams()], [None])
    with pytest.raises(ValueError, match="need their token histories"):
        Sampler().sample(torch.zeros(1, 5), [SamplingParams(presence_penalty=1.0)], [None])


# ---- each processing step against vLLM's definition, computed element by element ----------------


def vllm_penalised(logits, prompt, output, presence, frequency, repetition):
    """vLLM's apply_penalties for one row, written out token by token."""
    row = logits.tolist()
    for token in range(len(row)):
        if token in prompt or token in output:
            row[token] = row[token] / repetition if row[token] > 0 else row[token] * repetition
        count = output.count(token)
        row[token] -= frequency * count
        row[token] -= presence * (count > 0)
    return torch.tensor(row)


@given(
    seed=st.integers(0, 2**16),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    repetition=st.floats(0.1, 3.0),
    prompt=st.lists(st.integers(0, 19), max_size=8),
    output=st.lists(st.integers(0, 19), max_size=8),
)
def test_penalties_match_vllms_definition(seed, presence, frequency, repetition, prompt, output):
    logits = torch.randn(2, 20, generator=torch.Generator().manual_seed(seed))
    params = [
        SamplingParams(presence_penalty=presence, frequency_penalty=frequency, repetition_penalty=repetition),
        SamplingParams(),  # a row without penalties beside it stays as it was
    ]
    histories = [TokenHistory(prompt, output), TokenHistory(output, prompt)]
    processed = Sampler().process(logits, params, histories)
    expected = vllm_penalised(logits[0], prompt, output, presence, frequency, repetition)
    assert torch.allclose(processed[0], expected, atol=1e-5)
    assert torch.equal(processed[1], logits[1])


def test_penalties_change_the_greedy_choice_as_defined():
    logits = torch.tensor([[3.0, 2.9, -1.0, 0.5]])
    history = [TokenHistory([3], [0, 0])]
    assert Sampler().sample(logits, [SamplingParams()], [None], history) == [0]
    # frequency 0.1 x 2 occurrences: 3.0 -> 2.8 < 2.9
    assert Sampler().sample(logits, [SamplingParams(frequency_penalty=0.1)], [None], history) == [1]
    # presence 0.05 once: 2.95 > 2.9, token 0 stays
    assert Sampler().sample(logits, [SamplingParams(presence_penalty=0.05)], [None], history) == [0]
    # repetition 1.1 divides the positive logit: 3.0 / 1.1 = 2.73 < 2.9
    assert Sampler().sample(logits, [SamplingParams(repetition_penalty=1.1)], [None], history) == [1]
    # a prompt token is penalised by repetition too (not by presence/frequency)
    prompt_only = [TokenHistory([0], [])]
    assert Sampler().sample(logits, [SamplingParams(repetition_penalty=1.1)], [None], prompt_only) == [1]
    assert Sampler().sample(logits, [SamplingParams(presence_penalty=2.0)], [None], prompt_only) == [0]


def test_logit_bias_forces_and_forbids_tokens():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    forced = SamplingParams(temperature=1.0, logit_bias={17: 100})
    banned = SamplingParams(logit_bias={int(logits[1].argmax()): -100})
    tokens = Sampler().sample(logits, [forced, banned], [torch.Generator().manual_seed(0), None])
    assert tokens[0] == 17
    assert tokens[1] == int(logits[1].topk(2).indices[1])
    processed = Sampler().process(logits, [forced, SamplingParams()], None)
    assert processed[0, 17] == logits[0, 17] + 100 and torch.equal(processed[1], logits[1])


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.zeros(3, 10)
    logits[:, 2] = logits[:, 4] = 10.0  # EOS (2) and a stop token (4) lead
    p = SamplingParams(min_tokens=2, stop_token_ids=[4])
    histories = [TokenHistory([1], [], eos_token_ids=[2]), TokenHistory([1], [7], [2]), TokenHistory([1], [7, 7], [2])]
    processed = Sampler().process(logits, [p] * 3, histories)
    assert processed[0, 2] == processed[0, 4] == processed[1, 2] == processed[1, 4] == -math.inf
    assert torch.equal(processed[2], logits[2])  # min_tokens reached: nothing masked
    assert torch.isfinite(processed[:2]).sum() == 2 * 8


def vllm_top_k_top_p_min_p(row: list[float], k: int, p: float, min_p: float) -> set[int]:
    """The tokens vLLM keeps, by its definitions: min_p on the probabilities, then the k best, then
    (sorted ascending) drop the tokens whose cumulative probability stays <= 1 - p, never the best."""
    vocab = len(row)
    probs = torch.softmax(torch.tensor(row, dtype=torch.float64), -1).tolist()
    for t in range(vocab):
        assume(abs(probs[t] - min_p * max(probs)) > 1e-9)
    assume(len(set(probs)) == vocab)  # distinct logits can still round to equal probabilities
    kept = [t for t in range(vocab) if probs[t] >= min_p * max(probs)]
    kept = sorted(kept, key=lambda t: row[t], reverse=True)[: k if k else vocab]
    mass = torch.softmax(torch.tensor([row[t] for t in kept], dtype=torch.float64), -1).tolist()
    ascending = sorted(range(len(kept)), key=lambda i: (mass[i], row[kept[i]]))
    survivors, cumulative = set(), 0.0
    for position, i in enumerate(ascending):
        cumulative += mass[i]
        assume(abs(cumulative - (1 - p)) > 1e-9)  # a rounding-level tie at the nucleus edge goes either way
        if cumulative > 1 - p or position == len(ascending) - 1:
            survivors |= {kept[j] for j in ascending[position:]}
            break
    return survivors


@given(
    logits=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=30, unique=True),
    top_k=st.integers(0, 35),
    top_p=st.floats(0.05, 1.0),
    min_p=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_samples_stay_inside_vllms_top_k_top_p_min_p_set(logits, top_k, top_p, min_p, seed):
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p)
    allowed = vllm_top_k_top_p_min_p(logits, top_k, top_p, min_p)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(5):
        assert Sampler().sample(torch.tensor([logits]), [params], [gen])[0] in allowed


@given(
    logits=st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40, unique=True),
    top_p=st.floats(0.01, 1.0),
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, top_p):
    logits = torch.tensor([logits], dtype=torch.float64)
    kept = torch.isfinite(apply_top_k_top_p(logits, torch.tensor([logits.shape[1]]), torch.tensor([top_p])))[0]
    probs = torch.softmax(logits[0], -1)
    kept_probs, dropped_probs = probs[kept], probs[~kept]
    if len(dropped_probs):
        assert kept_probs.min() >= dropped_probs.max()
    assert kept_probs.sum() >= top_p - 1e-9 or not len(dropped_probs)
    assert kept_probs.sum() - kept_probs.min() < top_p + 1e-9


def test_temperature_scales_before_the_draw():
    # At temperature 0.01 a logit gap of 1 is a factor e^100: the draw is the argmax in practice.
    logits = torch.tensor([[1.0, 0.0, 0.5]])
    gen = torch.Generator().manual_seed(0)
    draws = {Sampler().sample(logits, [SamplingParams(temperature=1e-45)], [gen])[0] for _ in range(50)}
    assert draws == {0}
