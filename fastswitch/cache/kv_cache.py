"""One KV tensor per device, block-major: [num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim].

Block-major means a run of consecutive block ids is one contiguous byte range that holds every
layer's K and V of those blocks, so a block group moves between devices in one copy call whatever
the number of layers. Attention reads a layer through the strided views `key(layer)` and
`value(layer)`. The host pool is the same class on device "cpu" (pinned when CUDA exists, so that
copies to and from the GPU are real DMA and can run asynchronously).
"""

from __future__ import annotations

import torch

from fastswitch.cache.block_manager import copy_runs

KEY, VALUE = 0, 1  # index of K and V along dimension 2 of the cache


class KVCache:
    def __init__(
        self,
        num_blocks: int,
        num_layers: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype | str = torch.float16,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
    ) -> None:
        sizes = dict(
            num_blocks=num_blocks, num_layers=num_layers, block_size=block_size,
            num_kv_heads=num_kv_heads, head_dim=head_dim,
        )
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if isinstance(dtype, str):
            named = getattr(torch, dtype, None)
            if not isinstance(named, torch.dtype):
                raise ValueError(f"dtype={dtype!r} is not a torch dtype name")
            dtype = named
        device = torch.device(device)
        if pin_memory and (device.type != "cpu" or not torch.cuda.is_available()):
            raise ValueError(
                f"pin_memory=True needs device 'cpu' and CUDA present (device={device}, "
                f"cuda available={torch.cuda.is_available()})"
            )
        self.num_blocks = num_blocks
        self.num_layers = num_layers
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.pinned = pin_memory
        # Zeros, not empty: padded slots of a block are read by attention before they are masked, and
        # garbage NaNs there would survive a multiplication by zero.
        self.data = torch.zeros(
            (num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim),
            dtype=dtype, device=device, pin_memory=pin_memory,
        )

    @classmethod
    def host_pool_for(cls, device_cache: KVCache, num_blocks: int) -> KVCache:
        """The swap space of device_cache: same block shape and dtype, on the CPU, pinned if CUDA exists.

        Its blocks are handed out by a separate `BlockManager` of num_blocks (keyed by seq_id), which
        a `HostReuseTracker` owns so that it can evict spare host copies for room."""
        return cls(
            num_blocks, device_cache.num_layers, device_cache.block_size, device_cache.num_kv_heads,
            device_cache.head_dim, device_cache.dtype, "cpu", pin_memory=torch.cuda.is_available(),
        )

    def key(self, layer: int) -> torch.Tensor:
        """Layer's K of every block: a strided view [num_blocks, block_size, Hkv, D]."""
        return self.data[:, self._check_layer(layer), KEY]

    def value(self, layer: int) -> torch.Tensor:
        """Layer's V of every block: a strided view [num_blocks, block_size, Hkv, D]."""
        return self.data[:, self._check_layer(layer), VALUE]

    def copy_blocks(self, src_blocks: list[int], dst_blocks: list[int]) -> None:
        """Copies block src_blocks[i] to dst_blocks[i] within this cache (all layers, K and V), one copy
        per run that is contiguous on both sides. The two lists must not share a block."""
        if set(src_blocks) & set(dst_blocks):
            raise ValueError("a block copy within one cache needs disjoint source and destination blocks")
        for block in (*src_blocks, *dst_blocks):
            if not 0 <= block < self.num_blocks:
                raise ValueError(f"block {block} is outside 0..{self.num_blocks - 1}")
        for src, dst, length in copy_runs(src_blocks, dst_blocks):
            self.data[dst : dst + length].copy_(self.data[src : src + length])

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: all layers, K and V."""
        return self.data[0].numel() * self.data.element_size()

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer={layer} is outside 0..{self.num_layers - 1}")
        return layer

    def __repr__(self) -> str:
        return (
            f"KVCache(num_blocks={self.num_blocks}, num_layers={self.num_layers}, block_size={self.block_size}, "
            f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, dtype={self.dtype}, "
            f"device={self.device}, pinned={self.pinned}, {self.num_bytes / 2**20:.1f} MiB)"
        )
