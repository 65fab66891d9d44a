"""The Triton paged-attention kernel (compiled on a GPU, else under the interpreter) against its torch
twin on the CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastswitch.kernels import AttentionBatch, paged_attention, reference
from fastswitch.kernels.triton_attention import paged_attention_triton
from kernel_batches import KERNEL_DEVICE, PagedBatch, for_backend, paged_batches, tolerance


def assert_matches_twin(batch: PagedBatch, num_splits: int | None = None) -> None:
    got = paged_attention_triton(*batch.on(KERNEL_DEVICE).args(), num_splits=num_splits).cpu()
    expected = reference.paged_attention(*batch.args())
    assert got.dtype == batch.q.dtype and got.shape == batch.q.shape
    torch.testing.assert_close(got.float(), expected.float(), **tolerance(batch.q.dtype))


@given(batch=paged_batches())
def test_mixed_batches_match_the_torch_twin(batch: PagedBatch) -> None:
    assert_matches_twin(batch)


@settings(max_examples=15)
@given(
    batch=paged_batches(head_dims=(64, 80), max_context=300, kinds=("chunked", "decode")),
    num_splits=st.integers(2, 5),
)
def test_split_kv_ranges_merge_to_the_same_result(batch: PagedBatch, num_splits: int) -> None:
    # More splits than a short sequence has keys leaves some splits empty: the merge must ignore them.
    assert_matches_twin(batch, num_splits)


@settings(max_examples=10)
@given(batch=paged_batches(kinds=("decode",), max_context=300), num_splits=st.sampled_from((None, 3)))
def test_decode_steps_match_the_torch_twin(batch: PagedBatch, num_splits: int | None) -> None:
    # One query per sequence: the kernel maps programs to sequences without a work-item table.
    assert_matches_twin(batch, num_splits)


@settings(max_examples=10)
@given(batch=paged_batches(dtypes=(torch.float32,), max_seqs=6, max_context=60))
def test_slots_no_sequence_wrote_may_hold_nan(batch: PagedBatch) -> None:
    # The last key tile of a sequence runs past its end: NaN there must be masked out, not multiplied by 0.
    expected = reference.paged_attention(*batch.args())
    block_size = batch.k_cache.shape[1]
    written = torch.zeros(batch.cache.shape[0], block_size, dtype=torch.bool)
    for b, seq_len in enumerate(batch.seq_lens.tolist()):
        for pos in range(seq_len):
            written[batch.block_tables[b, pos // block_size], pos % block_size] = True
    batch.cache[~written[:, None, None, :].expand(-1, *batch.cache.shape[1:4])] = float("nan")
    got = paged_attention_triton(*batch.on(KERNEL_DEVICE).args()).cpu()
    torch.testing.assert_close(got, expected, **tolerance(torch.float32))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_host_layout_gives_the_same_result_without_reading_the_device(backend: str) -> None:
    generator = torch.Generator().manual_seed(7)
    cache = torch.randn(6, 2, 2, 8, 2, 16, generator=generator)
    q = torch.randn(5, 4, 16, generator=generator)
    tables = torch.tensor([[4, 1, 0], [2, 5, 3]], dtype=torch.int32)
    cache, q, tables, seq_lens, starts = for_backend(
        backend, cache, q, tables, torch.tensor([9, 20], dtype=torch.int32), torch.tensor([0, 1, 5], dtype=torch.int32)
    )
    args = (q, cache[:, 0, 0], cache[:, 0, 1], tables, seq_lens, starts)
    layout = AttentionBatch.from_host([0, 1, 5], [9, 20], tables)
    with_lists = paged_attention(*args, backend=backend, layout=layout)
    torch.testing.assert_close(with_lists, paged_attention(*args, backend=backend))
    with pytest.raises(ValueError, match="seq_lens\\[1\\]=30"):
        paged_attention(*args, backend=backend, layout=AttentionBatch.from_host([0, 1, 5], [9, 30], tables))
    with pytest.raises(ValueError, match="B=2 sequences"):
        paged_attention(*args, backend=backend, layout=AttentionBatch.from_host([0, 5], [20], tables[:1]))


# Every head dim and every GQA ratio at least once; hypothesis mixes the rest.
@pytest.mark.parametrize(("head_dim", "ratio"), [(64, 1), (64, 8), (80, 2), (96, 4), (128, 8), (256, 2)])
def test_every_head_dim_and_gqa_ratio_in_decode_and_prefill(head_dim: int, ratio: int) -> None:
    generator = torch.Generator().manual_seed(head_dim * ratio)
    num_kv_heads, block_size = 2, 16
    cache = torch.randn(9, 2, 2, block_size, num_kv_heads, head_dim, generator=generator)
    q = torch.randn(1 + 20, num_kv_heads * ratio, head_dim, generator=generator)
    tables = torch.tensor([[4, 7, 1, 0], [8, 2, 5, 3]], dtype=torch.int32)
    seq_lens = torch.tensor([50, 20], dtype=torch.int32)  # a decode step at 50, a prefill of 20
    starts = torch.tensor([0, 1, 21], dtype=torch.int32)
    expected = reference.paged_attention(q, cache[:, 1, 0], cache[:, 1, 1], tables, seq_lens, starts)
    q, cache, tables, seq_lens, starts = for_backend("triton", q, cache, tables, seq_lens, starts)
    got = paged_attention_triton(q, cache[:, 1, 0], cache[:, 1, 1], tables, seq_lens, starts).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_auto_backend_runs_triton_on_the_kernel_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    import fastswitch.kernels.triton_attention as triton_module

    def recording(*args, **kwargs):
        calls.append(args)
        return paged_attention_triton(*args, **kwargs)

    monkeypatch.setattr(triton_module, "paged_attention_triton", recording)
    cache, q, one, starts = for_backend(
        "auto",
        torch.randn(2, 8, 1, 16),
        torch.randn(1, 1, 16),
        torch.ones(1, dtype=torch.int32),
        torch.tensor([0, 1], dtype=torch.int32),
    )
    paged_attention(q, cache, cache, one.view(1, 1), one, starts)
    assert len(calls) == 1


@pytest.mark.slow
@settings(max_examples=200)
@given(batch=paged_batches(max_seqs=8, max_context=600), num_splits=st.sampled_from((None, 2, 7)))
def test_wide_sweep_matches_the_torch_twin(batch: PagedBatch, num_splits: int | None) -> None:
    assert_matches_twin(batch, num_splits)


def test_strided_index_tensors_are_read_correctly() -> None:
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(8, 16, 2, 32, generator=generator)
    q = torch.randn(3, 4, 32, generator=generator)
    padded_tables = torch.tensor([[0, 9, 5, 9], [1, 9, 2, 9]], dtype=torch.int32)
    padded_lens = torch.tensor([20, 0, 18, 0], dtype=torch.int32)
    starts = torch.tensor([0, 1, 3], dtype=torch.int32)
    expected = reference.paged_attention(q, cache, cache, padded_tables[:, ::2], padded_lens[::2], starts)
    # Sliced on the kernel's device: column stride 2 in the tables, stride 2 in the lengths.
    q, cache, padded_tables, padded_lens, starts = for_backend("triton", q, cache, padded_tables, padded_lens, starts)
    got = paged_attention_triton(q, cache, cache, padded_tables[:, ::2], padded_lens[::2], starts).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
