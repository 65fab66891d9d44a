"""Block ids whose element offset passes 2^31: the kernels must index in int64.

On the CPU the cache is a lazily backed allocation of about 8.6 GB of which only the few blocks used
are ever touched, so the test needs little real memory; on a GPU it takes 8.6 GB of device memory.
An int32 offset would wrap and read or write outside the cache (a wrong answer or a crash), which is
what this guards against.
"""

from __future__ import annotations

import pytest
import torch

from fastswitch.kernels import pack_blocks, reference, store_kv, unpack_blocks
from fastswitch.kernels.triton_attention import paged_attention_triton
from kernel_batches import KERNEL_DEVICE

BLOCK_ELEMENTS = 1 * 2 * 8 * 1 * 16  # layers * K/V * block_size * Hkv * D
NUM_BLOCKS = (1 << 31) // BLOCK_ELEMENTS + 64


@pytest.fixture(scope="module")
def huge_cache() -> torch.Tensor:
    try:
        return torch.empty(NUM_BLOCKS, 1, 2, 8, 1, 16, dtype=torch.float32, device=KERNEL_DEVICE)
    except RuntimeError as error:  # a machine that refuses ~8.6 GB of address space (or a small GPU)
        pytest.skip(f"cannot reserve the address space: {error}")


def test_attention_reads_blocks_past_the_int32_range(huge_cache: torch.Tensor) -> None:
    ids = [NUM_BLOCKS - 1, NUM_BLOCKS - 40, 3]
    generator = torch.Generator().manual_seed(0)
    for block in ids:
        huge_cache[block] = torch.randn(huge_cache.shape[1:], generator=generator)
    device = huge_cache.device
    args = (
        torch.randn(2, 2, 16, generator=generator).to(device),
        huge_cache[:, 0, 0],
        huge_cache[:, 0, 1],
        torch.tensor([ids], dtype=torch.int32, device=device),
        torch.tensor([20], dtype=torch.int32, device=device),
        torch.tensor([0, 2], dtype=torch.int32, device=device),
    )
    torch.testing.assert_close(paged_attention_triton(*args), reference.paged_attention(*args), atol=1e-5, rtol=1e-5)


def test_store_and_pack_unpack_past_the_int32_range(huge_cache: torch.Tensor) -> None:
    last = NUM_BLOCKS - 1
    device = huge_cache.device
    key, value = torch.randn(2, 1, 16, device=device), torch.randn(2, 1, 16, device=device)
    slots = torch.tensor([last * 8 + 7, (last - 1) * 8], dtype=torch.int64, device=device)
    store_kv(key, value, huge_cache[:, 0, 0], huge_cache[:, 0, 1], slots, backend="triton")
    assert torch.equal(huge_cache[last, 0, 0, 7], key[0]) and torch.equal(huge_cache[last - 1, 0, 1, 0], value[1])

    staging = pack_blocks(huge_cache, [(last - 1, 2)], backend="triton")
    assert torch.equal(staging, huge_cache[last - 1 :])
    unpack_blocks(staging, huge_cache, [(last - 3, 2)], backend="triton")
    assert torch.equal(huge_cache[last - 3 : last - 1], staging)
