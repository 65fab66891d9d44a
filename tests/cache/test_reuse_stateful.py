"""Stateful property test of the reuse bookkeeping over random swap lifecycles of a few sequences.

After every step: records never point at freed host blocks (every block of every record is allocated,
no two records share one), host blocks are accounted for, and no copy that is pinned or the only copy
of a swapped-out sequence was evicted or changed.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastswitch.cache import BlockManager, HostReuseTracker, copy_runs

HOST_BLOCKS = 24
SEQ_IDS = "abcdef"
SEQS = st.sampled_from(SEQ_IDS)


class ReuseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = HostReuseTracker(BlockManager(HOST_BLOCKS, block_size=2))
        self.state: dict[str, str] = {}  # seq -> "swapping_out" | "out" | "swapping_in" (protected)
        self.protected_table: dict[str, list[int]] = {}  # host tables that must not change meanwhile

    @rule(seq=SEQS, num_blocks=st.integers(0, 10))
    def begin_swap_out(self, seq, num_blocks):
        t = self.tracker
        if self.state.get(seq) in ("swapping_out", "out", "swapping_in"):
            assert not t.can_begin_swap_out(seq, num_blocks)
            with pytest.raises(ValueError, match="cannot swap out"):
                t.begin_swap_out(seq, num_blocks)
            return
        valid = t.reusable_blocks(seq)
        old_table = t.host.block_table(seq) if t.record(seq) else []
        reused = min(valid, num_blocks)
        need = num_blocks - reused
        available = t.host.num_free + len(old_table) - reused + t.evictable_blocks(keep=seq)
        assert t.can_begin_swap_out(seq, num_blocks) == (need <= available)
        if need > available:
            free_before = t.host.num_free
            with pytest.raises(ValueError, match="host pool cannot hold"):
                t.begin_swap_out(seq, num_blocks)
            assert t.host.num_free == free_before and t.reusable_blocks(seq) == valid
            return
        plan = t.begin_swap_out(seq, num_blocks)  # must succeed: eviction can make the room
        assert plan.first_block == reused
        table = t.host.block_table(seq)
        assert table[:reused] == old_table[:reused]  # reused blocks stay where they were
        assert table[reused:] == plan.host_blocks and len(table) == num_blocks
        for evicted in plan.evicted:
            assert self.state.pop(evicted, None) in (None, "resident")
        self.state[seq] = "swapping_out"
        self.protected_table[seq] = table

    @rule(seq=SEQS, data=st.data())
    def finish_swap_out(self, seq, data):
        if self.state.get(seq) != "swapping_out":
            with pytest.raises(ValueError):
                self.tracker.finish_swap_out(seq, 0)
            return
        full = data.draw(st.integers(0, len(self.protected_table[seq])))
        self.tracker.finish_swap_out(seq, full)
        self.state[seq] = "out"

    @rule(seq=SEQS)
    def begin_swap_in(self, seq):
        if self.state.get(seq) != "out":
            with pytest.raises(ValueError):
                self.tracker.begin_swap_in(seq)
            return
        assert self.tracker.begin_swap_in(seq) == self.protected_table[seq]
        self.state[seq] = "swapping_in"

    @rule(seq=SEQS)
    def finish_swap_in(self, seq):
        if self.state.get(seq) != "swapping_in":
            with pytest.raises(ValueError):
                self.tracker.finish_swap_in(seq)
            return
        valid = self.tracker.reusable_blocks(seq)
        self.tracker.finish_swap_in(seq)
        table = self.protected_table.pop(seq)
        if valid:  # the full blocks stay where they were, the partial last one is freed
            assert self.tracker.host.block_table(seq) == table[:valid]
            self.state[seq] = "resident"
        else:
            assert self.tracker.record(seq) is None
            del self.state[seq]

    @rule(seq=SEQS)
    def drop(self, seq):
        t = self.tracker
        if self.state.get(seq) in ("swapping_out", "swapping_in"):
            with pytest.raises(ValueError, match="in flight"):
                t.drop(seq)
            return
        free_before, held = t.host.num_free, t.host.num_blocks_of(seq)
        t.drop(seq)  # a kept copy, or the sole copy of a swapped-out sequence (an aborted request)
        assert t.record(seq) is None and t.host.num_free == free_before + held
        self.state.pop(seq, None)
        self.protected_table.pop(seq, None)

    @invariant()
    def records_point_only_at_live_host_blocks(self):
        t = self.tracker
        seen: set[int] = set()
        for seq in filter(t.host.has, SEQ_IDS):
            assert t.record(seq) is not None, f"host blocks of {seq} have no record"
            table = t.host.block_table(seq)
            # the table the host pool keeps (grown and truncated in place) is the one its groups spell:
            # the groups are merged where they touch, so there is one per contiguous run of the table
            assert t.host.num_groups(seq) == len(copy_runs(table, table))
            assert t.host.num_blocks_of(seq) == len(table)
            assert all(t.host.allocator.is_allocated(b) for b in table)
            assert seen.isdisjoint(table)
            seen.update(table)
            assert t.reusable_blocks(seq) <= len(table)
        assert all((t.record(seq) is not None) == t.host.has(seq) for seq in SEQ_IDS)  # no record without host blocks
        assert len(seen) + t.host.num_free == HOST_BLOCKS

    @invariant()
    def protected_copies_survive_unchanged(self):
        for seq, table in self.protected_table.items():
            assert self.tracker.record(seq) is not None, f"{seq} was evicted while {self.state[seq]}"
            assert self.tracker.host.block_table(seq) == table


TestReuse = ReuseMachine.TestCase
