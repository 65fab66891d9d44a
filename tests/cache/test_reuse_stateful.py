"""Stateful property test of the reuse bookkeeping over random swap lifecycles of a few conversations.

After every step: records never point at freed host blocks (every block of every record is allocated,
no two records share one), host blocks are accounted for, and no copy that is pinned or the only copy
of a swapped-out conversation was evicted or changed.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastswitch.cache import BlockManager, HostReuseTracker

HOST_BLOCKS = 24
CONVS = st.sampled_from("abcdef")


class ReuseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = HostReuseTracker(BlockManager(HOST_BLOCKS, block_size=2))
        self.state: dict[str, str] = {}  # conv -> "swapping_out" | "out" | "swapping_in" (protected)
        self.protected_table: dict[str, list[int]] = {}  # host tables that must not change meanwhile

    @rule(conv=CONVS, num_blocks=st.integers(0, 10))
    def begin_swap_out(self, conv, num_blocks):
        t = self.tracker
        if self.state.get(conv) in ("swapping_out", "out", "swapping_in"):
            assert not t.can_begin_swap_out(conv, num_blocks)
            with pytest.raises(ValueError, match="cannot swap out"):
                t.begin_swap_out(conv, num_blocks)
            return
        valid = t.reusable_blocks(conv)
        old_table = t.host.block_table(conv) if conv in t else []
        reused = min(valid, num_blocks)
        need = num_blocks - reused
        available = t.host.num_free + len(old_table) - reused + t.evictable_blocks(keep=conv)
        assert t.can_begin_swap_out(conv, num_blocks) == (need <= available)
        if need > available:
            free_before = t.host.num_free
            with pytest.raises(ValueError, match="host pool cannot hold"):
                t.begin_swap_out(conv, num_blocks)
            assert t.host.num_free == free_before and t.reusable_blocks(conv) == valid
            return
        plan = t.begin_swap_out(conv, num_blocks)  # must succeed: eviction can make the room
        assert plan.first_block == reused
        table = t.host.block_table(conv)
        assert table[:reused] == old_table[:reused]  # reused blocks stay where they were
        assert table[reused:] == plan.host_blocks and len(table) == num_blocks
        for evicted in plan.evicted:
            assert self.state.pop(evicted, None) in (None, "resident")
        self.state[conv] = "swapping_out"
        self.protected_table[conv] = table

    @rule(conv=CONVS, data=st.data())
    def finish_swap_out(self, conv, data):
        if self.state.get(conv) != "swapping_out":
            with pytest.raises(ValueError):
                self.tracker.finish_swap_out(conv, 0)
            return
        full = data.draw(st.integers(0, len(self.protected_table[conv])))
        self.tracker.finish_swap_out(conv, full)
        self.state[conv] = "out"

    @rule(conv=CONVS)
    def begin_swap_in(self, conv):
        if self.state.get(conv) != "out":
            with pytest.raises(ValueError):
                self.tracker.begin_swap_in(conv)
            return
        assert self.tracker.begin_swap_in(conv) == self.protected_table[conv]
        self.state[conv] = "swapping_in"

    @rule(conv=CONVS)
    def finish_swap_in(self, conv):
        if self.state.get(conv) != "swapping_in":
            with pytest.raises(ValueError):
                self.tracker.finish_swap_in(conv)
            return
        valid = self.tracker.reusable_blocks(conv)
        self.tracker.finish_swap_in(conv)
        table = self.protected_table.pop(conv)
        if valid:  # the full blocks stay where they were, the partial last one is freed
            assert self.tracker.host.block_table(conv) == table[:valid]
            self.state[conv] = "resident"
        else:
            assert conv not in self.tracker
            del self.state[conv]

    @rule(conv=CONVS, from_block=st.integers(0, 6))
    def invalidate(self, conv, from_block):
        if self.state.get(conv) in ("swapping_out", "out", "swapping_in"):
            with pytest.raises(ValueError):
                self.tracker.invalidate(conv, from_block)
            return
        self.tracker.invalidate(conv, from_block)
        if conv in self.tracker:
            assert self.tracker.reusable_blocks(conv) <= from_block
        else:
            self.state.pop(conv, None)

    @rule(num_blocks=st.integers(0, HOST_BLOCKS))
    def make_room(self, num_blocks):
        t = self.tracker
        if num_blocks - t.host.num_free > t.evictable_blocks():
            with pytest.raises(ValueError):
                t.make_room(num_blocks)
            return
        for conv in t.make_room(num_blocks):
            assert self.state.pop(conv) == "resident"
        assert t.host.num_free >= num_blocks

    @invariant()
    def records_point_only_at_live_host_blocks(self):
        t = self.tracker
        seen: set[int] = set()
        for conv in t.host.seq_ids():
            assert conv in t, f"host blocks of {conv} have no record"
            table = t.host.block_table(conv)
            # the table the host pool keeps (grown and truncated in place) is the one its groups spell
            assert table == [b for start, n in t.host.groups(conv) for b in range(start, start + n)]
            assert t.host.num_blocks_of(conv) == len(table)
            assert all(t.host.allocator.is_allocated(b) for b in table)
            assert seen.isdisjoint(table)
            seen.update(table)
            assert t.reusable_blocks(conv) <= len(table)
        assert len(t) == len(t.host.seq_ids())
        assert len(seen) + t.host.num_free == HOST_BLOCKS

    @invariant()
    def protected_copies_survive_unchanged(self):
        for conv, table in self.protected_table.items():
            assert conv in self.tracker, f"{conv} was evicted while {self.state[conv]}"
            assert self.tracker.host.block_table(conv) == table


TestReuse = ReuseMachine.TestCase
