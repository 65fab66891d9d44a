"""Tiling and flash-decoding choices of the Triton paged attention."""

from __future__ import annotations

from hypothesis import given, strategies as st

from fastswitch.kernels.attention_plan import (
    MAX_SPLITS,
    MIN_DOT_SIZE,
    MIN_KEYS_PER_SPLIT,
    choose_num_splits,
    plan_attention,
)
from fastswitch.kernels.checks import BatchLayout


@given(num_programs=st.integers(1, 10_000), max_kv_len=st.integers(0, 200_000), num_sms=st.integers(1, 200))
def test_splits_are_bounded_and_only_used_when_there_is_room(num_programs: int, max_kv_len: int, num_sms: int) -> None:
    splits = choose_num_splits(num_programs, max_kv_len, num_sms)
    assert 1 <= splits <= MAX_SPLITS
    if splits > 1:
        assert max_kv_len // splits >= MIN_KEYS_PER_SPLIT
        assert num_programs < 4 * num_sms  # a batch that already fills the device is never split


def test_few_long_decodes_split_and_a_full_batch_does_not() -> None:
    assert choose_num_splits(num_programs=8, max_kv_len=32_768, num_sms=132) == MAX_SPLITS
    assert choose_num_splits(num_programs=1024, max_kv_len=32_768, num_sms=132) == 1
    assert choose_num_splits(num_programs=8, max_kv_len=600, num_sms=132) == 1


@given(
    query_lens=st.lists(st.integers(0, 300), min_size=1, max_size=6),
    num_kv_heads=st.integers(1, 4),
    ratio=st.integers(1, 12),
    head_dim=st.integers(1, 256),
)
def test_tiles_cover_every_query_once_with_dot_sized_blocks(
    query_lens: list[int], num_kv_heads: int, ratio: int, head_dim: int
) -> None:
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    layout = BatchLayout(query_start_loc=starts, seq_lens=[n + 5 for n in query_lens])
    plan = plan_attention(layout, num_kv_heads * ratio, num_kv_heads, head_dim, num_sms=1)
    covered = [(b, plan_start + i) for b, plan_start in plan.work_items for i in range(plan.block_q)]
    assert sorted(p for p in covered if p[1] < query_lens[p[0]]) == [(b, i) for b, n in enumerate(query_lens) for i in range(n)]
    assert plan.block_m >= max(MIN_DOT_SIZE, plan.block_q * plan.group_pad)
    assert plan.head_dim_pad >= max(MIN_DOT_SIZE, head_dim)
    assert plan.group_pad >= ratio
    for size in (plan.block_m, plan.block_n, plan.head_dim_pad, plan.group_pad):
        assert size & (size - 1) == 0  # tl.arange needs powers of two
