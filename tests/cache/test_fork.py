"""SwapManager.fork and KVCache.copy_blocks: a sequence's KV copied block for block to a new one (n > 1)."""

from __future__ import annotations

import pytest
import torch

from fastswitch.cache.kv_cache import KVCache
from test_swap_manager import BLOCK, fill, make_manager


@pytest.mark.parametrize("block_groups", [True, False])
def test_fork_copies_the_parents_blocks_and_leaves_them_alone(block_groups):
    manager, device, _ = make_manager(block_groups=block_groups, device_blocks=16)
    manager.allocate("other", 2 * BLOCK)  # the parent's blocks do not start at 0
    table = manager.allocate("parent", 3 * BLOCK - 1)
    values = fill(device, table)
    src, dst = manager.fork("parent", "child", 3 * BLOCK - 1)
    assert src == table and len(dst) == 3 and not set(dst) & set(table)
    device.copy_blocks(src, dst)
    assert torch.equal(device.data[dst], values) and torch.equal(device.data[table], values)
    assert manager.location("child") == "device" and manager.sequences.block_table("child") == dst
    # the child is an ordinary sequence from here: it grows, swaps out and back, and is dropped
    manager.allocate("child", 3 * BLOCK + 2)
    manager.swap_out("child", 3 * BLOCK + 2, blocking=True)
    manager.swap_in("child", blocking=True)
    assert torch.equal(device.data[manager.sequences.block_table("child")[:3]], values)
    manager.drop("child")
    manager.drop("parent")
    manager.drop("other")
    assert manager.num_free_device_blocks == 16


def test_fork_without_room_changes_nothing_and_refuses_what_it_cannot_do():
    manager, _, _ = make_manager(device_blocks=5)
    manager.allocate("parent", 3 * BLOCK)
    assert manager.fork("parent", "child", 3 * BLOCK) is None
    assert manager.location("child") == "none" and manager.num_free_device_blocks == 2
    with pytest.raises(ValueError, match="it already holds KV"):
        manager.fork("parent", "parent", BLOCK)
    with pytest.raises(ValueError, match="holds 3 blocks, fewer than 20 tokens need"):
        manager.fork("parent", "child", 20)
    manager.swap_out("parent", 3 * BLOCK, blocking=True)
    with pytest.raises(ValueError, match="cannot fork 'parent': location=host"):
        manager.fork("parent", "child", BLOCK)


def test_copy_blocks_needs_disjoint_blocks():
    cache = KVCache(4, 1, BLOCK, 1, 2, torch.float32)
    with pytest.raises(ValueError, match="disjoint"):
        cache.copy_blocks([0, 1], [1, 2])
