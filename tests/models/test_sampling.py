"""SamplingParams validation and the Sampler's greedy, top-k, top-p and seeded behaviour."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.models import Sampler, SamplingParams
from fastswitch.models.sampling import filter_top_k_top_p


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_tokens=0), "max_tokens=0"),
        (dict(max_tokens=2.5), "max_tokens=2.5"),
        (dict(temperature=-0.1), "temperature=-0.1"),
        (dict(temperature=float("nan")), "temperature=nan"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(seed=-3), "seed=-3"),
        (dict(stop_token_ids=[4, -1]), "stop_token_ids contains -1"),
        (dict(ignore_eos="yes"), "ignore_eos='yes'"),
    ],
)
def test_invalid_params_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_stop_tokens_are_normalised_and_checked_against_the_vocabulary():
    params = SamplingParams(stop_token_ids=[5, 7])
    assert params.stop_token_ids == (5, 7)
    params.check_vocab(8)
    with pytest.raises(ValueError, match="stop token id 7 is outside the vocabulary \\(size 7\\)"):
        params.check_vocab(7)


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


def test_batch_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="batch size"):
        Sampler().sample(torch.zeros(2, 5), [SamplingParams()], [None])


@given(
    logits=st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40, unique=True),
    top_p=st.floats(0.01, 1.0),
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, top_p):
    logits = torch.tensor(logits, dtype=torch.float64)
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, top_p))
    probs = torch.softmax(logits, -1)
    kept_probs, dropped_probs = probs[kept], probs[~kept]
    # The kept tokens are the most likely ones (ties may go either way)...
    if len(dropped_probs):
        assert kept_probs.min() >= dropped_probs.max()
    # ...their mass reaches top_p (up to rounding), and without the least likely one it would not.
    assert kept_probs.sum() >= top_p - 1e-9 or not len(dropped_probs)
    assert kept_probs.sum() - kept_probs.min() < top_p + 1e-9


@given(
    logits=st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40, unique=True),
    top_k=st.integers(1, 45),
    seed=st.integers(0, 2**16),
)
def test_samples_never_leave_the_top_k(logits, top_k, seed):
    logits = torch.tensor([logits])
    params = [SamplingParams(temperature=2.0, top_k=top_k)]
    token = Sampler().sample(logits, params, [torch.Generator().manual_seed(seed)])[0]
    allowed = torch.topk(logits[0], min(top_k, logits.shape[1])).indices.tolist()
    assert token in allowed
