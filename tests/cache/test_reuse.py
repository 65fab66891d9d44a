"""Host-copy reuse: what a swap-out copies, what is kept, and what LRU eviction may drop."""

import pytest

from fastswitch.cache import BlockManager, HostReuseTracker, copy_runs

BLOCK = 4


def tracker(num_host_blocks: int = 32, keep: bool = True) -> HostReuseTracker:
    return HostReuseTracker(BlockManager(num_host_blocks, BLOCK), keep_after_swap_in=keep)


def swap_out(t, seq, num_blocks, num_full):
    plan = t.begin_swap_out(seq, num_blocks)
    t.finish_swap_out(seq, num_full)
    return plan


def swap_in(t, seq):
    blocks = t.begin_swap_in(seq)
    t.finish_swap_in(seq)
    return blocks


def test_second_swap_out_copies_only_new_blocks():
    t = tracker()
    first = swap_out(t, "c", num_blocks=5, num_full=4)  # 4 full blocks + 1 partial
    assert first.first_block == 0 and len(first.host_blocks) == 5
    host_table = swap_in(t, "c")
    assert host_table == first.host_blocks
    # After swap-in only the 4 full blocks stay; the partial one changes with the next token.
    assert t.host.block_table("c") == host_table[:4]
    second = swap_out(t, "c", num_blocks=7, num_full=6)
    assert second.first_block == 4 and len(second.host_blocks) == 3
    assert t.host.block_table("c")[:4] == host_table[:4]


def test_reuse_off_frees_the_host_copy_after_swap_in():
    t = tracker(keep=False)
    swap_out(t, "c", 5, 4)
    swap_in(t, "c")
    assert t.record("c") is None and t.host.num_free == 32
    assert swap_out(t, "c", 5, 4).first_block == 0


def test_lru_eviction_spares_pinned_and_swapped_out_copies():
    t = tracker(num_host_blocks=12)
    for seq in ("old", "pinned", "sole"):
        swap_out(t, seq, 4, 4)
    swap_in(t, "old")
    swap_in(t, "pinned")
    plan = t.begin_swap_out("pinned", 4)  # reuses all 4, pins them
    assert plan.first_block == 4 and plan.host_blocks == []
    new = t.begin_swap_out("new", 4)  # host is full: only "old" may go
    assert new.evicted == ["old"]
    assert t.record("pinned") and t.record("sole") and t.record("old") is None
    with pytest.raises(ValueError, match="host pool cannot hold"):
        t.begin_swap_out("another", 1)
    assert t.record("another") is None


def test_eviction_is_least_recently_used_first():
    t = tracker(num_host_blocks=8)
    for seq in ("a", "b"):
        swap_out(t, seq, 4, 4)
    swap_in(t, "b")
    swap_in(t, "a")  # "a" used last: "b" is the older one
    assert t.begin_swap_out("new", 4).evicted == ["b"]
    assert t.record("a") and t.record("b") is None and t.host.num_free == 0


def test_drop_frees_a_kept_copy_and_a_sole_copy():
    t = tracker()
    swap_out(t, "kept", 6, 5)
    swap_in(t, "kept")
    assert t.reusable_blocks("kept") == 5 and t.host.num_blocks_of("kept") == 5
    swap_out(t, "sole", 3, 3)  # swapped out: the host copy is the only one (an aborted request drops it)
    t.drop("kept")
    t.drop("sole")
    assert t.record("kept") is None and t.record("sole") is None and t.host.num_free == 32


def test_in_flight_copies_cannot_be_dropped_or_swapped_again():
    t = tracker()
    t.begin_swap_out("c", 3)
    with pytest.raises(ValueError, match="in flight"):
        t.drop("c")
    with pytest.raises(ValueError, match="cannot swap out"):
        t.begin_swap_out("c", 3)
    with pytest.raises(ValueError, match="is swapping_out, not swapped_out"):
        t.begin_swap_in("c")
    with pytest.raises(ValueError, match="is swapping_out, not swapping_in"):
        t.finish_swap_in("c")
    t.finish_swap_out("c", 2)
    with pytest.raises(ValueError, match="is swapped_out, not swapping_in"):
        t.finish_swap_in("c")


def test_copy_runs_pairs_contiguous_pieces():
    assert copy_runs([4, 5, 6, 9, 10], [0, 1, 7, 8, 9]) == [(4, 0, 2), (6, 7, 1), (9, 8, 2)]
    assert copy_runs([], []) == []
    with pytest.raises(ValueError, match="pair 2 source"):
        copy_runs([1, 2], [3])
