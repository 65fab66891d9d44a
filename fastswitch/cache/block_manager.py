"""Per-sequence block tables of one device's KV pool.

A sequence owns a list of groups (runs of consecutive blocks); its block table, what attention
reads, is the concatenation of the groups, and the number of groups is the number of copy calls its
swap needs. With `block_groups=True` a sequence grows by extending its last group in place and only
starts a new group when the blocks behind it are taken; with `block_groups=False` every block is its
own group, as in vLLM 0.3.3.

The same class manages the host (swap) pool too: one `BlockManager` per pool, keyed by whatever
hashable key the caller uses (device stays, (seq_id, epoch), on the device; seq_id on the host).

The block table and block count of each sequence are kept beside its groups and updated with them:
the scheduler asks for both every step, and rebuilding them from the groups was most of a simulated
run's time in vLLM mode, where a table is a list of one-block groups.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from fastswitch.cache.allocator import BlockAllocator, BlockGroupAllocator, KVBlockAllocator, Run


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, block_groups: bool = True, placement: str = "spread"
    ) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be a positive integer")
        self.block_size = block_size
        self.block_groups = block_groups
        self.allocator: KVBlockAllocator = (
            BlockGroupAllocator(num_blocks, placement) if block_groups else BlockAllocator(num_blocks)
        )
        self._groups: dict[Hashable, list[Run]] = {}
        self._tables: dict[Hashable, list[int]] = {}  # the concatenation of each sequence's groups

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def has(self, seq_id: Hashable) -> bool:
        return seq_id in self._groups

    def num_groups(self, seq_id: Hashable) -> int:
        """Copy calls a swap of this sequence needs (per copy direction, all layers at once)."""
        return len(self._groups_of(seq_id))

    def num_blocks_of(self, seq_id: Hashable) -> int:
        table = self._tables.get(seq_id)
        return 0 if table is None else len(table)

    def block_table(self, seq_id: Hashable) -> list[int]:
        self._groups_of(seq_id)  # the unknown-sequence error
        return list(self._tables[seq_id])  # a copy: callers may keep or change it

    def blocks_for_tokens(self, num_tokens: int) -> int:
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens={num_tokens!r} must be a non-negative integer")
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        """New blocks seq_id needs to hold num_tokens tokens (0 for a sequence already that large)."""
        return max(0, self.blocks_for_tokens(num_tokens) - self.num_blocks_of(seq_id))

    def can_fit(self, seq_id: Hashable, num_tokens: int) -> bool:
        return self.blocks_needed(seq_id, num_tokens) <= self.num_free

    def ensure_capacity(self, seq_id: Hashable, num_tokens: int) -> list[Run]:
        """Grows seq_id (registering it if new) to hold num_tokens tokens; returns the runs added.

        Growth first extends the last group as far as the free blocks behind it reach, then takes
        the rest as new groups. Raises ValueError, changing nothing, when too few blocks are free.
        """
        needed = self.blocks_needed(seq_id, num_tokens)
        if needed > self.num_free:
            raise ValueError(
                f"sequence {seq_id!r} needs {needed} more blocks for num_tokens={num_tokens}, "
                f"but only num_free={self.num_free} of {self.num_blocks} blocks are free"
            )
        groups = self._groups.setdefault(seq_id, [])
        table = self._tables.setdefault(seq_id, [])
        added: list[Run] = []
        if needed and groups:
            start, length = groups[-1]
            grow = min(needed, self.allocator.room_after(groups[-1]))
            if grow and self.allocator.extend(groups[-1], grow):
                groups[-1] = (start, length + grow)
                added.append((start + length, grow))
                needed -= grow
        if needed:
            new_runs = self.allocator.allocate(needed)
            added.extend(new_runs)
            # None of them touches the last group or each other: the last group took every free
            # block behind it, and the allocator keeps adjacent free runs merged into one.
            groups.extend(new_runs)
        for start, length in added:  # growth appends: the table is the old one plus the added runs
            table.extend(range(start, start + length))
        return added

    def truncate(self, seq_id: Hashable, num_blocks: int) -> list[Run]:
        """Keeps the first num_blocks blocks of seq_id and frees the rest; returns the freed runs."""
        groups = self._groups_of(seq_id)
        if not isinstance(num_blocks, int) or not 0 <= num_blocks <= self.num_blocks_of(seq_id):
            raise ValueError(
                f"cannot truncate {seq_id!r} to num_blocks={num_blocks!r}: it holds {self.num_blocks_of(seq_id)}"
            )
        kept: list[Run] = []
        freed: list[Run] = []
        remaining = num_blocks
        for start, length in groups:
            keep = min(length, remaining)
            remaining -= keep
            if keep:
                kept.append((start, keep))
            if keep < length:
                freed.append((start + keep, length - keep))
        self.allocator.free(freed)
        self._groups[seq_id] = kept
        del self._tables[seq_id][num_blocks:]
        return freed

    def free(self, seq_id: Hashable) -> None:
        """Frees every block of seq_id and forgets it."""
        self.allocator.free(self._groups_of(seq_id))
        del self._groups[seq_id]
        del self._tables[seq_id]

    def _groups_of(self, seq_id: Hashable) -> list[Run]:
        if seq_id not in self._groups:
            raise ValueError(f"unknown sequence {seq_id!r}: it holds no blocks in this pool")
        return self._groups[seq_id]


def copy_runs(src_blocks: Sequence[int], dst_blocks: Sequence[int]) -> list[tuple[int, int, int]]:
    """Splits a copy of src_blocks[i] -> dst_blocks[i] into the fewest (src_start, dst_start, length)
    pieces that are contiguous on both sides: in the block-major layout, one copy call each."""
    if len(src_blocks) != len(dst_blocks):
        raise ValueError(f"cannot pair {len(src_blocks)} source blocks with {len(dst_blocks)} destination blocks")
    pieces: list[tuple[int, int, int]] = []
    for src, dst in zip(src_blocks, dst_blocks):
        if pieces:
            s, d, n = pieces[-1]
            if s + n == src and d + n == dst:
                pieces[-1] = (s, d, n + 1)
                continue
        pieces.append((src, dst, 1))
    return pieces
