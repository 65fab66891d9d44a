"""Swap manager and copy engine on real KV tensors: round trips, copy granularity, reuse, async."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyJob, CopyPair, TorchCopyEngine, pair_runs, slice_runs
from fastswitch.cache.kv_cache import KVCache
from fastswitch.cache.swap_manager import SwapManager

LAYERS, BLOCK, HEADS, DIM = 3, 4, 2, 8


def runs_of(lengths: list[int], gap: int = 1) -> list[tuple[int, int]]:
    runs, start = [], 0
    for length in lengths:
        runs.append((start, length))
        start += length + gap
    return runs


@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.data())
def test_pair_runs_is_contiguous_on_both_sides_and_order_preserving(src_lengths, data):
    total = sum(src_lengths)
    cuts = sorted(data.draw(st.sets(st.integers(1, total - 1), max_size=5))) if total > 1 else []
    dst_lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    src, dst = runs_of(src_lengths, gap=2), runs_of(dst_lengths, gap=3)
    pairs = pair_runs(src, dst)
    flatten = lambda runs: [b for s, n in runs for b in range(s, s + n)]  # noqa: E731
    assert [p.src + i for p in pairs for i in range(p.length)] == flatten(src)
    assert [p.dst + i for p in pairs for i in range(p.length)] == flatten(dst)
    # Splits happen only at run boundaries of either side: no more pairs than boundaries allow.
    assert len(pairs) <= len(src) + len(dst) - 1


def test_pair_runs_rejects_unequal_totals():
    with pytest.raises(ValueError, match="3 blocks .* 2"):
        pair_runs([(0, 3)], [(5, 2)])


def test_slice_runs_takes_the_middle_of_a_table():
    assert slice_runs([(10, 3), (20, 2), (30, 4)], 2, 6) == [(12, 1), (20, 2), (30, 1)]


def make_manager(block_groups=True, asynchronous=False, kv_reuse=False, device_blocks=16, host_blocks=16):
    device = KVCache(device_blocks, LAYERS, BLOCK, HEADS, DIM, torch.float32)
    host = KVCache.host_pool_for(device, host_blocks)
    copies = TorchCopyEngine(device, host, asynchronous=asynchronous)
    manager = SwapManager(
        BlockManager(device_blocks, BLOCK, block_groups), BlockManager(host_blocks, BLOCK, block_groups),
        copies, LAYERS, device.block_bytes, asynchronous, kv_reuse,
    )
    return manager, device, host


def fill(device: KVCache, table: list[int]) -> torch.Tensor:
    values = torch.randn(len(table), *device.data.shape[1:])
    device.data[table] = values
    return values


@pytest.mark.parametrize("block_groups", [True, False])
@pytest.mark.parametrize("asynchronous", [True, False])
def test_round_trip_restores_kv_and_counts_calls(block_groups, asynchronous):
    manager, device, _ = make_manager(block_groups, asynchronous)
    table = manager.allocate("a", 5 * BLOCK)
    values = fill(device, table)
    manager.swap_out("a", 5 * BLOCK, blocking=False)
    while manager.num_in_flight:
        manager.wait_any()
    manager.allocate("b", 10 * BLOCK)  # takes blocks "a" had, so "a" comes back elsewhere
    manager.swap_in("a", blocking=True)
    assert manager.is_ready("a")
    new_table = manager.block_table("a")
    assert torch.equal(device.data[new_table], values)
    stats = manager.stats
    expected_out_calls = 1 if block_groups else 5 * LAYERS * 2
    assert stats.swap_out_bytes == stats.swap_in_bytes == 5 * device.block_bytes
    assert stats.copy_calls >= expected_out_calls + (1 if block_groups else 5 * LAYERS * 2)
    if not block_groups:
        assert stats.copy_calls == 2 * 5 * LAYERS * 2
    manager.drop("a")
    manager.drop("b")
    manager.close()
    assert manager.device.num_free == 16 and manager.host.num_free == 16


def test_async_swap_out_keeps_blocks_until_its_copy_lands():
    manager, device, _ = make_manager(asynchronous=True)
    manager.allocate("a", 16 * BLOCK)
    manager.copy_engine._worker.submit(lambda: __import__("time").sleep(0.2))  # hold the worker busy
    manager.swap_out("a", 16 * BLOCK, blocking=False)
    assert manager.num_free_device_blocks == 0 and manager.num_pending_free_blocks == 16
    assert not manager.is_ready("a") and manager.location("a") == "host"
    manager.wait_any()
    assert manager.num_free_device_blocks == 16 and manager.is_ready("a")
    manager.drop("a")
    manager.close()


def test_kv_reuse_copies_only_blocks_added_since_the_last_swap_out():
    manager, device, _ = make_manager(kv_reuse=True)
    table = manager.allocate("a", 3 * BLOCK + 1)
    values = fill(device, table)
    manager.swap_out("a", 3 * BLOCK + 1, blocking=True)
    manager.swap_in("a", blocking=True)
    assert manager.stats.swap_out_blocks == 4
    table = manager.allocate("a", 6 * BLOCK)
    more = fill(device, table[3:])
    manager.swap_out("a", 6 * BLOCK, blocking=True)
    # The 3 full blocks are on the host unchanged; the partial 4th and the 2 new ones are copied.
    assert manager.stats.swap_out_blocks == 4 + 3
    assert manager.stats.reused_blocks == 3
    manager.swap_in("a", blocking=True)
    table = manager.block_table("a")
    assert torch.equal(device.data[table[:3]], values[:3])
    assert torch.equal(device.data[table[3:]], more)
    manager.drop("a")
    manager.close()
    assert manager.host.num_free == 16


def test_kept_host_copies_are_dropped_lru_under_host_pressure():
    manager, _, _ = make_manager(kv_reuse=True, device_blocks=16, host_blocks=8)
    for name in ("a", "b"):
        manager.allocate(name, 4 * BLOCK)
        manager.swap_out(name, 4 * BLOCK, blocking=True)
    for name in ("a", "b"):
        manager.swap_in(name, blocking=True)  # both keep a host copy: the host pool is full
    assert manager.host.num_free == 0
    manager.allocate("c", 4 * BLOCK)
    assert manager.can_swap_out("c", 4 * BLOCK)
    manager.swap_out("c", 4 * BLOCK, blocking=True)
    assert manager.stats.host_copies_dropped == 1
    # "a" was swapped in first, so its kept copy went; "b" kept its whole copy: nothing to copy.
    assert manager.host_copies.record("a") is None
    before = manager.stats.swap_out_blocks
    assert manager.can_swap_out("b", 4 * BLOCK)
    manager.swap_out("b", 4 * BLOCK, blocking=True)
    assert manager.stats.swap_out_blocks == before
    for name in ("a", "b", "c"):
        manager.drop(name)
    manager.close()
    assert manager.host.num_free == 8 and manager.device.num_free == 16


def test_swap_in_in_flight_cannot_be_swapped_out_and_a_drop_waits_for_it():
    manager, device, _ = make_manager(asynchronous=True)
    table = manager.allocate("a", 4 * BLOCK)
    fill(device, table)
    manager.swap_out("a", 4 * BLOCK, blocking=True)
    manager.copy_engine._worker.submit(lambda: __import__("time").sleep(0.2))
    manager.swap_in("a", blocking=False)
    assert not manager.is_ready("a") and not manager.can_swap_out("a", 4 * BLOCK)
    with pytest.raises(ValueError, match="copy in flight=True"):
        manager.swap_out("a", 4 * BLOCK, blocking=False)
    manager.drop("a")  # aborted while its swap-in lands: blocks come back once the copy is done
    assert manager.device.num_free == 12 and manager.host.num_free == 12
    manager.close()
    assert manager.device.num_free == 16 and manager.host.num_free == 16


def test_drop_during_copy_frees_after_it_lands():
    manager, _, _ = make_manager(asynchronous=True)
    manager.allocate("a", 4 * BLOCK)
    manager.copy_engine._worker.submit(lambda: __import__("time").sleep(0.2))
    manager.swap_out("a", 4 * BLOCK, blocking=False)
    manager.drop("a")
    assert manager.location("a") == "none"
    assert manager.device.num_free == 12 and manager.host.num_free == 12
    manager.close()
    assert manager.device.num_free == 16 and manager.host.num_free == 16


def test_copy_job_counts():
    job = CopyJob("out", (CopyPair(0, 4, 3), CopyPair(7, 1, 2)), per_layer=False, num_layers=30, block_bytes=10)
    assert (job.num_blocks, job.num_bytes, job.num_calls) == (5, 50, 2)
    vllm = CopyJob("out", job.pairs, per_layer=True, num_layers=30, block_bytes=10)
    assert vllm.num_calls == 5 * 30 * 2
