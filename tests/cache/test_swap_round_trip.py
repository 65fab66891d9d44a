"""Data-level round trips through the pieces a swap uses: block tables, reuse plans, copy_runs, KVCache.

A conversation decodes, is swapped out (copying only blocks the host lacks), swapped back into
different device blocks, and decodes on, over and over amid other sequences that hold device blocks
and other conversations that crowd the host. After every swap-in its K/V must equal what was
written, token for token.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.cache import BlockManager, HostReuseTracker, KVCache, copy_runs

BLOCK, LAYERS, HEADS, DIM = 4, 2, 1, 3


def write_tokens(cache: KVCache, table: list[int], start: int, values: torch.Tensor) -> None:
    """values: [n, LAYERS, 2, HEADS, DIM] for tokens start.. of a sequence with this block table."""
    for i, value in enumerate(values):
        pos = start + i
        cache.data[table[pos // BLOCK], :, :, pos % BLOCK] = value


def read_tokens(cache: KVCache, table: list[int], n: int) -> torch.Tensor:
    return torch.stack([cache.data[table[pos // BLOCK], :, :, pos % BLOCK] for pos in range(n)])


def copy(src: KVCache, dst: KVCache, src_blocks: list[int], dst_blocks: list[int]) -> int:
    pieces = copy_runs(src_blocks, dst_blocks)
    for s, d, n in pieces:
        dst.data[d : d + n].copy_(src.data[s : s + n])
    return len(pieces)


@given(
    cycles=st.lists(
        st.tuples(st.integers(1, 9), st.integers(0, 6), st.integers(0, 3)),  # new tokens, noise blocks, crowd
        min_size=1, max_size=6,
    ),
    reuse=st.booleans(),
)
def test_kv_survives_repeated_swaps_with_reuse(cycles, reuse):
    device = KVCache(24, LAYERS, BLOCK, HEADS, DIM, torch.float32)
    host = KVCache.host_pool_for(device, 16)
    blocks = BlockManager(24, BLOCK)
    tracker = HostReuseTracker(BlockManager(16, BLOCK), keep_after_swap_in=reuse)
    written = torch.empty(0, LAYERS, 2, HEADS, DIM)
    copied_blocks = 0
    for step, (new_tokens, noise, crowd) in enumerate(cycles):
        # Decode: append tokens with distinct values.
        start = len(written)
        blocks.ensure_capacity("c", start + new_tokens)
        values = torch.randn(new_tokens, LAYERS, 2, HEADS, DIM)
        write_tokens(device, blocks.block_table("c"), start, values)
        written = torch.cat([written, values])
        # Swap out, copying only what the host lacks.
        table = blocks.block_table("c")
        plan = tracker.begin_swap_out("c", len(table))
        copy(device, host, table[plan.first_block :], plan.host_blocks)
        copied_blocks += len(plan.host_blocks)
        tracker.finish_swap_out("c", len(written) // BLOCK)
        blocks.free("c")
        device.data.zero_()  # nothing on the device survives; the host copy must be complete
        # Others take device blocks (so the swap-in lands elsewhere) and crowd the host.
        blocks.ensure_capacity(f"noise{step}", noise * BLOCK)
        if crowd and tracker.host.num_free + tracker.evictable_blocks() >= crowd:
            tracker.begin_swap_out(f"other{step}", crowd)
            tracker.finish_swap_out(f"other{step}", crowd)
            tracker.begin_swap_in(f"other{step}")
            tracker.finish_swap_in(f"other{step}")
        # Swap in and check every token.
        host_blocks = tracker.begin_swap_in("c")
        blocks.ensure_capacity("c", len(written))
        copy(host, device, host_blocks, blocks.block_table("c"))
        tracker.finish_swap_in("c")
        assert torch.equal(read_tokens(device, blocks.block_table("c"), len(written)), written)
        blocks.free(f"noise{step}")
    total_blocks = -(-len(written) // BLOCK)
    if not reuse:
        # Without reuse every swap-out copies every block it has at that time.
        assert copied_blocks >= total_blocks + len(cycles) - 1
