"""The block-group KV cache: allocators, block tables, device/host KV tensors, the per-sequence KV
table (sequence_table.py), host-copy reuse (reuse.py), the copy engines (copy_engine.py) and the
swap manager that moves sequences between the pools with them (swap_manager.py)."""

from fastswitch.cache.allocator import PLACEMENTS, BlockAllocator, BlockGroupAllocator, KVBlockAllocator, Run
from fastswitch.cache.block_manager import BlockManager, copy_runs
from fastswitch.cache.kv_cache import KVCache
from fastswitch.cache.reuse import HostCopy, HostReuseTracker, SwapOutPlan

__all__ = [
    "PLACEMENTS",
    "BlockAllocator",
    "BlockGroupAllocator",
    "BlockManager",
    "HostCopy",
    "HostReuseTracker",
    "KVBlockAllocator",
    "KVCache",
    "Run",
    "SwapOutPlan",
    "copy_runs",
]
