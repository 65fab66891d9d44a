"""The Triton store kernel (on the kernel device) against its torch twin: the same bits in the same
slots, nothing else touched."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.kernels import reference
from fastswitch.kernels.triton_store import store_kv_triton
from kernel_batches import for_backend


@given(
    dtype=st.sampled_from((torch.float32, torch.float16, torch.bfloat16)),
    block_size=st.sampled_from((8, 16, 32)),
    num_kv_heads=st.integers(1, 3),
    head_dim=st.sampled_from((16, 64, 80)),
    data=st.data(),
)
def test_store_matches_the_twin_bit_for_bit(
    dtype: torch.dtype, block_size: int, num_kv_heads: int, head_dim: int, data: st.DataObject
) -> None:
    num_blocks = 5
    slots = data.draw(st.lists(st.integers(0, num_blocks * block_size - 1), min_size=0, max_size=20, unique=True))
    layer = data.draw(st.integers(0, 1))
    generator = torch.Generator().manual_seed(len(slots) + layer)
    cache = torch.randn(num_blocks, 2, 2, block_size, num_kv_heads, head_dim, generator=generator).to(dtype)
    fused = torch.randn(len(slots), 2, num_kv_heads, head_dim, generator=generator).to(dtype)
    key, value = fused[:, 0], fused[:, 1]  # strided views, as a fused KV projection yields them
    slot_mapping = torch.tensor(slots, dtype=torch.int64)

    expected = cache.clone()
    reference.store_kv(key, value, expected[:, layer, 0], expected[:, layer, 1], slot_mapping)
    cache, fused, slot_mapping = for_backend("triton", cache, fused, slot_mapping)
    store_kv_triton(fused[:, 0], fused[:, 1], cache[:, layer, 0], cache[:, layer, 1], slot_mapping)
    assert torch.equal(cache.cpu().view(torch.uint8), expected.view(torch.uint8))
