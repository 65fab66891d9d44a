"""The torch twins against definitions written out here, one sequence, head and query at a time."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastswitch.kernels import AttentionBatch, reference
from kernel_batches import DTYPES, GQA_RATIOS, NUM_LAYERS, PagedBatch, paged_batches, tolerance


def naive_paged_attention(batch: PagedBatch) -> torch.Tensor:
    """softmax(q K^T * scale) V per query over the keys at positions <= its own, in float64."""
    q, k_cache, v_cache = batch.q.double(), batch.k_cache.double(), batch.v_cache.double()
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    scale = batch.scale if batch.scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(q)
    starts = batch.query_start_loc.tolist()
    for b, seq_len in enumerate(batch.seq_lens.tolist()):
        table = batch.block_tables[b].tolist()
        keys = torch.stack([k_cache[table[pos // block_size], pos % block_size] for pos in range(seq_len)])
        values = torch.stack([v_cache[table[pos // block_size], pos % block_size] for pos in range(seq_len)])
        query_len = starts[b + 1] - starts[b]
        for i in range(query_len):
            position = seq_len - query_len + i
            for head in range(num_q_heads):
                kv_head = head // group
                scores = keys[: position + 1, kv_head] @ q[starts[b] + i, head] * scale
                out[starts[b] + i, head] = torch.softmax(scores, 0) @ values[: position + 1, kv_head]
    return out


def assert_matches_definition(batch: PagedBatch) -> None:
    got = reference.paged_attention(*batch.args())
    expected = naive_paged_attention(batch).to(batch.q.dtype)
    assert got.dtype == batch.q.dtype and got.shape == batch.q.shape
    torch.testing.assert_close(got.float(), expected.float(), **tolerance(batch.q.dtype))


@given(batch=paged_batches())
def test_paged_attention_matches_the_definition(batch: PagedBatch) -> None:
    assert_matches_definition(batch)


@st.composite
def batches_of(draw: st.DrawFn, shapes: list[tuple[int, int]], block_size: int) -> PagedBatch:
    """A batch of sequences (num_cached, num_new) in a fragmented cache: dtype, heads and GQA ratio drawn."""
    dtype = draw(st.sampled_from(DTYPES))
    head_dim = draw(st.sampled_from((64, 128)))
    num_kv_heads = draw(st.integers(1, 2))
    num_q_heads = num_kv_heads * draw(st.sampled_from(GQA_RATIOS))
    seq_lens = [cached + new for cached, new in shapes]
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    block_ids = draw(st.permutations(range(num_blocks)))
    tables, next_id = [], 0
    for count in blocks_per_seq:
        tables.append(list(block_ids[next_id : next_id + count]) + [0] * (max(blocks_per_seq) - count))
        next_id += count
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cache = torch.randn((num_blocks, NUM_LAYERS, 2, block_size, num_kv_heads, head_dim), generator=generator).to(dtype)
    starts = [0]
    for _, new in shapes:
        starts.append(starts[-1] + new)
    return PagedBatch(
        q=torch.randn((starts[-1], num_q_heads, head_dim), generator=generator).to(dtype),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        scale=draw(st.sampled_from((None, 0.3))),
        cache=cache,
        layer=draw(st.integers(0, NUM_LAYERS - 1)),
    )


@st.composite
def decode_batches(draw: st.DrawFn) -> PagedBatch:
    """Several decodes (q_len 1) whose lengths differ by many blocks, one of them shorter than a block,
    maybe sequences with no new tokens, maybe one prefill or chunked prefill among them."""
    block_size = draw(st.sampled_from((8, 16, 32)))
    decode_lens = [draw(st.integers(1, block_size)), draw(st.integers(6 * block_size, 12 * block_size))]
    decode_lens += draw(st.lists(st.integers(1, 12 * block_size), max_size=5))
    shapes = [(n - 1, 1) for n in decode_lens]  # (num_cached, num_new)
    shapes += [(draw(st.integers(1, 4 * block_size)), 0) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        shapes.append((draw(st.sampled_from((0, draw(st.integers(1, 6 * block_size))))), draw(st.integers(2, 40))))
    return draw(batches_of(draw(st.permutations(shapes)), block_size))


@st.composite
def split_decode_batches(draw: st.DrawFn) -> PagedBatch:
    """Decodes only, in two clusters of lengths far apart (a few blocks, and 20-30 blocks): the
    batches the reference attends as a short and a long group."""
    block_size = draw(st.sampled_from((8, 16)))
    short = draw(st.lists(st.integers(1, 3 * block_size), min_size=1, max_size=6))
    long = draw(st.lists(st.integers(20 * block_size, 30 * block_size), min_size=1, max_size=4))
    shapes = [(n - 1, 1) for n in short + long]
    return draw(batches_of(draw(st.permutations(shapes)), block_size))


@st.composite
def prompt_batches(draw: st.DrawFn) -> PagedBatch:
    """Whole prompts (nothing cached: causal attention from position 0) of very different lengths,
    shorter than a block up to many blocks, beside decodes and maybe a chunked prefill."""
    block_size = draw(st.sampled_from((8, 16)))
    prompts = draw(st.lists(st.integers(2, 12 * block_size), min_size=1, max_size=3))
    shapes = [(0, n) for n in prompts]
    shapes += [(n - 1, 1) for n in draw(st.lists(st.integers(1, 12 * block_size), max_size=3))]
    if draw(st.booleans()):
        shapes.append((draw(st.integers(1, 4 * block_size)), draw(st.integers(2, 20))))
    return draw(batches_of(draw(st.permutations(shapes)), block_size))


@given(batch=decode_batches())
def test_decode_batches_match_the_definition(batch: PagedBatch) -> None:
    assert_matches_definition(batch)


@settings(max_examples=40)
@given(batch=split_decode_batches())
def test_decodes_split_by_length_match_the_definition(batch: PagedBatch) -> None:
    lens = batch.seq_lens.tolist()
    groups = reference._split_by_length(list(range(len(lens))), lens, batch.k_cache.shape[1])
    assert sorted(b for group in groups for b in group) == list(range(len(lens)))
    assert_matches_definition(batch)


def test_decodes_are_split_only_when_the_padding_saved_pays_for_a_call() -> None:
    block_size = 16
    close = [300, 310, 290, 305]  # padded to 320 together; a split saves at most 4 blocks
    assert reference._split_by_length([0, 1, 2, 3], close, block_size) == [[0, 1, 2, 3]]
    far = [20, 30, 400, 5, 410, 25]
    assert reference._split_by_length(list(range(6)), far, block_size) == [[3, 0, 5, 1], [2, 4]]
    saved = 4 * (416 - 32)  # four short sequences padded to 2 blocks instead of 26
    assert saved > reference.GROUP_OVERHEAD_ROWS


@settings(max_examples=40)
@given(batch=prompt_batches())
def test_prompts_attended_causally_match_the_definition(batch: PagedBatch) -> None:
    assert_matches_definition(batch)


@given(batch=decode_batches())
def test_a_step_with_the_same_layout_but_other_blocks_reads_the_new_blocks(batch: PagedBatch) -> None:
    """The plan shared by a step's layers is rebuilt when the block tables change under the same layout:
    moving every block to another id (tables and cache alike) changes nothing."""
    layout = AttentionBatch.from_host(batch.query_start_loc.tolist(), batch.seq_lens.tolist(), batch.block_tables)
    before = reference.paged_attention(*batch.args(), layout=layout)
    moved = torch.roll(torch.arange(batch.cache.shape[0]), 1)  # block i moves to id i + 1
    batch.cache = batch.cache[torch.argsort(moved)]
    batch.block_tables = moved[batch.block_tables.long()].to(torch.int32)
    after = reference.paged_attention(*batch.args(), layout=layout)
    assert torch.equal(after, before)


@given(batch=decode_batches())
def test_slots_past_a_sequence_and_table_padding_are_never_read(batch: PagedBatch) -> None:
    """NaN in every slot that holds no key and an invalid id in every table entry past a sequence's last
    block (as a layout lets a caller pass) change nothing: the batched gather reads padding, and must
    neither index with those entries nor let a masked NaN through (0 * NaN is NaN)."""
    layout = AttentionBatch.from_host(batch.query_start_loc.tolist(), batch.seq_lens.tolist(), batch.block_tables)
    clean = reference.paged_attention(*batch.args(), layout=layout)
    block_size = batch.k_cache.shape[1]
    written = torch.zeros(batch.cache.shape[0], block_size, dtype=torch.bool)
    for b, seq_len in enumerate(layout.seq_lens):
        for pos in range(seq_len):
            written[batch.block_tables[b, pos // block_size], pos % block_size] = True
        batch.block_tables[b, -(-seq_len // block_size) :] = -1
    batch.cache[~written[:, None, None, :].expand(-1, *batch.cache.shape[1:4])] = float("nan")
    # Tables changed in place make another batch: a new AttentionBatch, as the runner builds each step.
    layout = AttentionBatch.from_host(layout.query_start_loc, layout.seq_lens, batch.block_tables)
    poisoned = reference.paged_attention(*batch.args(), layout=layout)
    assert torch.equal(poisoned, clean)


def test_a_sequence_with_no_new_tokens_leaves_its_neighbours_unchanged() -> None:
    cache = torch.randn(4, 8, 1, 16)
    q = torch.randn(3, 2, 16)
    tables = torch.tensor([[0, 1], [2, 0], [3, 0]], dtype=torch.int32)
    seq_lens = torch.tensor([12, 5, 3], dtype=torch.int32)
    starts = torch.tensor([0, 2, 2, 3], dtype=torch.int32)  # the middle sequence has no new tokens
    out = reference.paged_attention(q, cache, cache, tables, seq_lens, starts)
    one = torch.tensor([0, 1], dtype=torch.int32)
    first = reference.paged_attention(q[:2], cache, cache, tables[:1], seq_lens[:1], one * 2)
    last = reference.paged_attention(q[2:], cache, cache, tables[2:], seq_lens[2:], one)
    torch.testing.assert_close(out, torch.cat([first, last]))


@given(
    dtype=st.sampled_from((torch.float32, torch.float16, torch.bfloat16)),
    slots=st.lists(st.integers(0, 6 * 8 - 1), min_size=1, max_size=12, unique=True),
)
def test_store_kv_writes_exactly_the_given_slots(dtype: torch.dtype, slots: list[int]) -> None:
    cache = torch.randn(6, 3, 2, 8, 2, 16).to(dtype)  # [blocks, layers, K/V, block_size, Hkv, D]
    before = cache.clone()
    key = torch.randn(len(slots), 2, 16).to(dtype)
    value = torch.randn(len(slots), 2, 16).to(dtype)
    reference.store_kv(key, value, cache[:, 1, 0], cache[:, 1, 1], torch.tensor(slots))
    expected = before.clone()
    for i, slot in enumerate(slots):
        expected[slot // 8, 1, 0, slot % 8] = key[i]
        expected[slot // 8, 1, 1, slot % 8] = value[i]
    assert torch.equal(cache, expected)


def test_pack_concatenates_runs_in_order_and_unpack_inverts_it() -> None:
    cache = torch.arange(8 * 2 * 2 * 8 * 1 * 4, dtype=torch.float32).reshape(8, 2, 2, 8, 1, 4)
    staging = reference.pack_blocks(cache, [(5, 2), (0, 1), (2, 2)])
    assert torch.equal(staging, cache[[5, 6, 0, 2, 3]])
    target = torch.zeros_like(cache)
    reference.unpack_blocks(staging, target, [(1, 4), (7, 1)])
    assert torch.equal(target[[1, 2, 3, 4, 7]], staging)
    assert not target[[0, 5, 6]].any()


@pytest.mark.parametrize("runs", [[(0, 0)], [(6, 3)], [(-1, 2)], [(0, 3), (2, 2)]])
def test_pack_rejects_runs_that_are_empty_outside_or_overlapping(runs: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="run"):
        reference.pack_blocks(torch.zeros(8, 1, 2, 8, 1, 4), runs)
