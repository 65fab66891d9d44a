"""Swap manager and copy engine on real KV tensors: round trips, copy granularity, reuse, async."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyJob, CopyPair, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.cache.swap_manager import SwapManager

LAYERS, BLOCK, HEADS, DIM = 3, 4, 2, 8
# Where the device pool lives: a GPU too when there is one, so the CUDA path (pinned host pool, copy
# stream and events, the pack kernel) runs for real there.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_manager(
    block_groups=True, asynchronous=False, kv_reuse=False, device_blocks=16, host_blocks=16, pack_min_runs=None,
    device_type="cpu",
):
    device = KVCache(device_blocks, LAYERS, BLOCK, HEADS, DIM, torch.float32, device=device_type)
    host = KVCache.host_pool_for(device, host_blocks)
    copies = TorchCopyEngine(device, host, asynchronous=asynchronous)
    manager = SwapManager(
        BlockManager(device_blocks, BLOCK, block_groups), BlockManager(host_blocks, BLOCK, block_groups),
        copies, LAYERS, device.block_bytes, asynchronous, kv_reuse, pack_min_runs=pack_min_runs,
    )
    return manager, device, host


def hold_copy_worker(manager: SwapManager, seconds: float = 0.2) -> None:
    """Keeps the copy engine's worker busy, so that copies submitted next are still in flight a while."""
    manager.copy_engine._worker.submit(lambda: time.sleep(seconds))


def fill(device: KVCache, table: list[int]) -> torch.Tensor:
    values = torch.randn(len(table), *device.data.shape[1:], device=device.device)
    device.data[table] = values
    return values


@pytest.mark.parametrize("device_type", DEVICES)
@pytest.mark.parametrize("block_groups", [True, False])
@pytest.mark.parametrize("asynchronous", [True, False])
def test_round_trip_restores_kv_and_counts_calls(block_groups, asynchronous, device_type):
    manager, device, _ = make_manager(block_groups, asynchronous, device_type=device_type)
    table = manager.allocate("a", 5 * BLOCK)
    values = fill(device, table)
    manager.swap_out("a", 5 * BLOCK, blocking=False)
    while manager.num_in_flight:
        manager.wait_any()
    manager.allocate("b", 10 * BLOCK)  # takes blocks "a" had, so "a" comes back elsewhere
    manager.swap_in("a", blocking=True)
    assert manager.is_ready("a")
    new_table = manager.sequences.block_table("a")
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


@given(
    lengths=st.lists(st.integers(1, 3 * BLOCK), min_size=2, max_size=5),
    block_groups=st.booleans(),
    kv_reuse=st.booleans(),
    growth=st.integers(0, 2 * BLOCK),
    device_type=st.sampled_from(DEVICES),
)
def test_swap_round_trips_preserve_every_sequence(lengths, block_groups, kv_reuse, growth, device_type):
    manager, device, _ = make_manager(
        block_groups, kv_reuse=kv_reuse, device_blocks=16, host_blocks=32, device_type=device_type
    )
    names = [f"s{i}" for i in range(len(lengths))]
    expected = {}
    for name, n in zip(names, lengths):
        expected[name] = fill(device, manager.allocate(name, n))
    for name, n in zip(names, lengths):
        manager.swap_out(name, n, blocking=True)
    manager.allocate("filler", BLOCK)  # shifts where the sequences land on the way back
    for name, n in zip(names, lengths):
        manager.swap_in(name, blocking=True)
        table = manager.sequences.block_table(name)
        assert torch.equal(device.data[table], expected[name])
        if growth and manager.device_blocks_needed(name, n + growth) <= manager.num_free_device_blocks:
            table = manager.allocate(name, n + growth)
            # Tokens are appended: blocks from the one holding position n on change, full ones never.
            first_written = n // BLOCK
            expected[name] = torch.cat([expected[name][:first_written], fill(device, table[first_written:])])
            lengths[names.index(name)] = n + growth
        manager.swap_out(name, lengths[names.index(name)], blocking=True)
    for name in names:
        manager.swap_in(name, blocking=True)
        assert torch.equal(device.data[manager.sequences.block_table(name)], expected[name])
        manager.drop(name)
    manager.drop("filler")
    manager.close()
    assert manager.device.num_free == 16 and manager.host.num_free == 32


def test_async_swap_out_keeps_blocks_until_its_copy_lands():
    manager, device, _ = make_manager(asynchronous=True)
    manager.allocate("a", 16 * BLOCK)
    hold_copy_worker(manager)
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
    table = manager.sequences.block_table("a")
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
    hold_copy_worker(manager)
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
    hold_copy_worker(manager)
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


@pytest.mark.parametrize("asynchronous", [True, False])
def test_fragmented_sequence_moves_in_one_packed_call_each_way(asynchronous):
    manager, device, _ = make_manager(asynchronous=asynchronous, pack_min_runs=2)
    for name in ("a", "b", "c", "d"):
        manager.allocate(name, 2 * BLOCK)
    manager.drop("b")
    manager.drop("d")
    # "a" grows into b's old blocks, then past c into d's: three runs on the device.
    table = manager.allocate("a", 6 * BLOCK)
    assert manager.device.num_groups(manager.sequences.record("a").stay) >= 2
    values = fill(device, table)
    manager.swap_out("a", 6 * BLOCK, blocking=True)
    assert manager.stats.copy_calls == 1
    manager.allocate("e", 3 * BLOCK)  # "a" comes back to different, again fragmented blocks
    manager.swap_in("a", blocking=True)
    assert manager.stats.copy_calls == 2
    assert torch.equal(device.data[manager.sequences.block_table("a")], values)
    for name in ("a", "c", "e"):
        manager.drop(name)
    manager.close()


def test_pack_threshold_is_checked():
    with pytest.raises(ValueError, match="pack_min_runs=1"):
        make_manager(pack_min_runs=1)
