"""Stateful property tests: random allocate / extend / free sequences against a model of ownership.

After every step: each block is free or owned by exactly one group, free runs are sorted, disjoint
and coalesced, free + used = total, and an allocation succeeds whenever enough blocks are free.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from fastswitch.cache import BlockAllocator, BlockGroupAllocator, BlockManager, copy_runs

NUM_BLOCKS = 48
SEQS = range(6)


def blocks_of(runs: list[tuple[int, int]]) -> list[int]:
    return [b for start, length in runs for b in range(start, start + length)]


class AllocatorMachine(RuleBasedStateMachine):
    """Drives one allocator; subclasses pick which."""

    groups = Bundle("groups")
    allocator_class: type = BlockGroupAllocator

    def __init__(self) -> None:
        super().__init__()
        self.allocator = self.allocator_class(NUM_BLOCKS)
        self.owner: dict[int, tuple[int, int]] = {}  # block -> the group (as allocated) owning it

    def _own(self, group):
        start, length = group
        for block in range(start, start + length):
            assert block not in self.owner, f"block {block} handed out twice"
            self.owner[block] = group

    @rule(target=groups, n=st.integers(1, NUM_BLOCKS))
    def allocate(self, n):
        num_free = self.allocator.num_free
        free_before = self.allocator.free_runs()
        if n > num_free:
            with pytest.raises(ValueError, match=f"n={n}.*num_free={num_free}"):
                self.allocator.allocate(n)
            assert self.allocator.free_runs() == free_before
            return []
        runs = self.allocator.allocate(n)  # must succeed: enough blocks are free
        assert sum(length for _, length in runs) == n
        # As few runs as free space allows: no fewer runs of the free space could hold n.
        lengths = sorted((length for _, length in free_before), reverse=True)
        fewest = next(k for k in range(1, len(lengths) + 1) if sum(lengths[:k]) >= n)
        if isinstance(self.allocator, BlockGroupAllocator):
            assert len(runs) == fewest
        for run in runs:
            self._own(run)
        return runs

    @rule(runs=groups, k=st.integers(0, 6))
    def extend(self, runs, k):
        if not runs:
            return
        group = runs[-1]
        if any(b not in self.owner for b in range(group[0], group[0] + group[1])):
            return  # freed since
        room = self.allocator.room_after(group)
        grew = self.allocator.extend(group, k)
        if isinstance(self.allocator, BlockGroupAllocator):
            assert grew == (k <= room)
        if grew and k:
            self._own((group[0] + group[1], k))

    @rule(runs=consumes(groups), data=st.data())
    def free(self, runs, data):
        # Free what is still owned of these runs, maybe only a part of each run (also valid).
        owned = []
        for start, length in runs:
            blocks = [b for b in range(start, start + length) if b in self.owner]
            if blocks:
                cut = data.draw(st.integers(1, len(blocks)))
                owned.extend(blocks[:cut])
        self.allocator.free([(b, 1) for b in owned])
        for b in owned:
            del self.owner[b]

    @precondition(lambda self: self.owner)
    @rule(data=st.data())
    def free_twice_raises(self, data):
        block = data.draw(st.sampled_from(sorted(self.owner)))
        free_before = self.allocator.free_runs()
        with pytest.raises(ValueError):
            self.allocator.free([(block, 1), (block, 1)])
        free_blocks = blocks_of(free_before)
        if free_blocks:
            with pytest.raises(ValueError):
                self.allocator.free([(data.draw(st.sampled_from(free_blocks)), 1)])
        assert self.allocator.free_runs() == free_before

    @invariant()
    def free_runs_sorted_disjoint_coalesced(self):
        runs = self.allocator.free_runs()
        for (s1, n1), (s2, _) in zip(runs, runs[1:]):
            assert s1 + n1 < s2, f"runs ({s1}, {n1}) and starting {s2} overlap or are not coalesced"
        assert all(n >= 1 for _, n in runs)

    @invariant()
    def every_block_free_or_owned_once(self):
        free = set(blocks_of(self.allocator.free_runs()))
        assert free.isdisjoint(self.owner)
        assert len(free) + len(self.owner) == NUM_BLOCKS
        assert self.allocator.num_free == len(free)


class VllmAllocatorMachine(AllocatorMachine):
    allocator_class = BlockAllocator


class BlockManagerMachine(RuleBasedStateMachine):
    """Block tables over growth, truncation and free, in both modes."""

    def __init__(self) -> None:
        super().__init__()
        self.manager = BlockManager(NUM_BLOCKS, block_size=4, block_groups=True)
        self.tokens: dict[int, int] = {}

    @rule(mode=st.booleans())
    def reset_mode(self, mode):
        if not self.tokens:
            self.manager = BlockManager(NUM_BLOCKS, block_size=4, block_groups=mode)

    @rule(seq=st.sampled_from(SEQS), grow=st.integers(0, 40))
    def ensure_capacity(self, seq, grow):
        tokens = self.tokens.get(seq, 0) + grow
        needed = self.manager.blocks_needed(seq, tokens)
        if needed > self.manager.num_free:
            free_before = self.manager.num_free
            with pytest.raises(ValueError, match=f"num_free={free_before}"):
                self.manager.ensure_capacity(seq, tokens)
            assert self.manager.num_free == free_before
            return
        table_before = self.manager.block_table(seq) if self.manager.has(seq) else []
        added = self.manager.ensure_capacity(seq, tokens)
        self.tokens[seq] = tokens
        table = self.manager.block_table(seq)
        assert table[: len(table_before)] == table_before  # growth never moves existing blocks
        assert table[len(table_before) :] == blocks_of(added)
        assert len(table) == -(-tokens // 4)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        self.manager.free(seq)
        del self.tokens[seq]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def truncate(self, data):
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        keep = data.draw(st.integers(0, self.manager.num_blocks_of(seq)))
        table = self.manager.block_table(seq)
        freed = self.manager.truncate(seq, keep)
        assert self.manager.block_table(seq) == table[:keep] and blocks_of(freed) == table[keep:]
        self.tokens[seq] = min(self.tokens[seq], keep * 4)

    @invariant()
    def tables_disjoint_and_account_for_every_block(self):
        tables = [self.manager.block_table(s) for s in self.tokens]
        used = [b for t in tables for b in t]
        assert len(used) == len(set(used))
        assert len(used) + self.manager.num_free == NUM_BLOCKS
        assert all(self.manager.allocator.is_allocated(b) for b in used)
        for seq, table in zip(self.tokens, tables):
            if self.manager.block_groups:  # groups that touch are merged: one copy, not two
                assert self.manager.num_groups(seq) == len(copy_runs(table, table))
            else:
                assert self.manager.num_groups(seq) == len(table)

    @invariant()
    def kept_tables_and_counts_match_the_tokens(self):
        # block_table and num_blocks_of answer from state kept beside the groups: it must not drift.
        for seq in self.tokens:
            assert self.manager.num_blocks_of(seq) == len(self.manager.block_table(seq)) == -(-self.tokens[seq] // 4)
        assert all(self.manager.has(seq) == (seq in self.tokens) for seq in SEQS)
        assert self.manager.num_blocks_of("never seen") == 0


TestGroupAllocator = AllocatorMachine.TestCase
TestVllmAllocator = VllmAllocatorMachine.TestCase
TestBlockManager = BlockManagerMachine.TestCase
