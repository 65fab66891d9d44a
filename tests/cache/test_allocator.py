"""Example-based tests of the two allocators; tests/cache/test_allocator_stateful.py holds the invariants."""

import pytest

from fastswitch.cache import BlockAllocator, BlockGroupAllocator


def test_fresh_allocation_is_one_run_at_the_start():
    a = BlockGroupAllocator(64)
    assert a.allocate(10) == [(0, 10)]
    assert a.num_free == 54
    assert a.free_runs() == [(10, 54)]


def test_new_group_leaves_half_the_slack_behind_the_live_group():
    a = BlockGroupAllocator(100)
    first = a.allocate(10)[0]
    second = a.allocate(10)[0]
    # 90 free blocks after the first group: 80 of slack, half of it stays behind the first group.
    assert second == (50, 10)
    assert a.room_after(first) == 40 and a.room_after(second) == 40


def test_extend_grows_in_place_only_into_free_blocks():
    a = BlockGroupAllocator(100)
    g = a.allocate(4)[0]
    other = a.allocate(4)[0]
    room = a.room_after(g)
    assert a.extend(g, room)
    assert not a.extend((g[0], g[1] + room), 1)  # `other` sits right behind now
    assert a.num_free == 100 - 8 - room
    assert other[0] == g[1] + room


def test_allocate_takes_several_runs_when_no_run_is_large_enough():
    a = BlockGroupAllocator(10)
    a.allocate(10)
    a.free([(1, 2), (5, 1), (7, 3)])
    runs = a.allocate(5)
    # Fewest runs: the 3-run whole, then the remainder from the smallest run that holds it, last.
    assert runs == [(7, 3), (1, 2)]
    assert a.num_free == 1 and a.free_runs() == [(5, 1)]


def test_failed_allocation_names_both_numbers_and_changes_nothing():
    a = BlockGroupAllocator(8)
    a.allocate(5)
    before = a.free_runs()
    with pytest.raises(ValueError, match=r"n=4.*num_free=3"):
        a.allocate(4)
    assert a.free_runs() == before and a.num_free == 3


@pytest.mark.parametrize("cls", [BlockGroupAllocator, BlockAllocator])
def test_double_free_and_foreign_free_raise_without_change(cls):
    a = cls(16)
    runs = [a.allocate(1)[0] for _ in range(3)]
    a.free(runs[:1])
    before = (a.num_free, a.free_runs())
    with pytest.raises(ValueError):
        a.free(runs)  # runs[0] is free already
    with pytest.raises(ValueError):
        a.free([(10, 2)])  # never allocated
    with pytest.raises(ValueError):
        a.free([runs[1], runs[1]])  # the same run twice in one call
    assert (a.num_free, a.free_runs()) == before


def test_free_coalesces_neighbours():
    a = BlockGroupAllocator(12)
    a.allocate(12)
    a.free([(3, 1), (5, 1)])
    assert a.free_runs() == [(3, 1), (5, 1)]
    a.free([(4, 1)])
    assert a.free_runs() == [(3, 3)]
    a.free([(0, 3), (6, 6)])
    assert a.free_runs() == [(0, 12)]


def test_free_part_of_a_group():
    a = BlockGroupAllocator(10)
    a.allocate(6)
    a.free([(2, 2)])
    assert a.free_runs() == [(2, 2), (6, 4)]


def test_vllm_allocator_hands_out_single_blocks_and_never_extends():
    a = BlockAllocator(8)
    runs = a.allocate(3)
    assert runs == [(0, 1), (1, 1), (2, 1)]
    assert not a.extend(runs[-1], 1)
    assert a.room_after(runs[-1]) == 0
    a.free(runs)
    # LIFO like vLLM: the last freed block comes back first.
    assert a.allocate(1) == [(2, 1)]
    assert a.free_runs() == [(0, 2), (3, 5)]


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_pool_size_raises(bad):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockGroupAllocator(bad)


def test_bad_extend_raises():
    a = BlockGroupAllocator(8)
    g = a.allocate(2)[0]
    with pytest.raises(ValueError, match="k=-1"):
        a.extend(g, -1)
    with pytest.raises(ValueError, match="not allocated"):
        a.extend((5, 1), 1)
