"""Tiling and flash-decoding choices of the Triton paged attention."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastswitch.kernels.attention_plan import (
    MAX_SPLITS,
    MIN_DOT_SIZE,
    MIN_KEYS_PER_SPLIT,
    choose_num_splits,
    plan_attention,
    shared_memory_bound,
)


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
    plan = plan_attention(query_lens, max(query_lens) + 5, num_kv_heads * ratio, num_kv_heads, head_dim, num_sms=1)
    covered = [(b, plan_start + i) for b, plan_start in plan.work_items for i in range(plan.block_q)]
    every_query = [(b, i) for b, n in enumerate(query_lens) for i in range(n)]
    assert sorted(p for p in covered if p[1] < query_lens[p[0]]) == every_query
    assert plan.block_m >= max(MIN_DOT_SIZE, plan.block_q * plan.group_pad)
    assert plan.head_dim_pad >= max(MIN_DOT_SIZE, head_dim)
    assert plan.group_pad >= ratio
    for size in (plan.block_m, plan.block_n, plan.head_dim_pad, plan.group_pad):
        assert size & (size - 1) == 0  # tl.arange needs powers of two


@given(
    query_len=st.integers(1, 2048),
    ratio=st.sampled_from((1, 2, 4, 5, 8)),
    head_dim=st.sampled_from((64, 80, 96, 128, 256)),
    full_precision=st.booleans(),
    shared_memory=st.sampled_from((64 * 1024, 99 * 1024, 163 * 1024, 227 * 1024)),
)
def test_tiles_shrink_to_fit_the_devices_shared_memory(
    query_len: int, ratio: int, head_dim: int, full_precision: bool, shared_memory: int
) -> None:
    shape = ([query_len], query_len + 100, 2 * ratio, 2, head_dim)
    unlimited = plan_attention(*shape, num_sms=1, full_precision=full_precision)
    plan = plan_attention(*shape, num_sms=1, shared_memory=shared_memory, full_precision=full_precision)
    assert shared_memory_bound(plan.block_m, plan.block_n, plan.head_dim_pad, full_precision) <= shared_memory
    assert plan.block_n >= MIN_DOT_SIZE and plan.block_m >= MIN_DOT_SIZE
    assert plan.block_n <= unlimited.block_n and plan.block_q <= unlimited.block_q
    unlimited_bound = shared_memory_bound(unlimited.block_m, unlimited.block_n, unlimited.head_dim_pad, full_precision)
    if unlimited_bound <= shared_memory:
        assert plan == unlimited  # tiles that fit are left alone


def test_fp32_prefill_tiles_shrink_on_an_a10_but_not_on_an_h100() -> None:
    a10 = plan_attention([512], 512, 32, 8, 128, num_sms=72, shared_memory=99 * 1024, full_precision=True)
    h100 = plan_attention([512], 512, 32, 8, 128, num_sms=132, shared_memory=227 * 1024, full_precision=True)
    assert (a10.block_m, a10.block_n) == (64, 32)
    assert (h100.block_m, h100.block_n) == (64, 64)
