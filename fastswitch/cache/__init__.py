"""The block-group KV cache: allocators, block tables, device/host KV tensors, host-copy reuse."""

from fastswitch.cache.allocator import BlockAllocator, BlockGroupAllocator, KVBlockAllocator, Run
from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.kv_cache import KVCache

__all__ = [
    "BlockAllocator",
    "BlockGroupAllocator",
    "BlockManager",
    "KVBlockAllocator",
    "KVCache",
    "Run",
]
