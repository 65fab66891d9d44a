"""pack/unpack on both backends (Triton on the kernel device): round trips bit-exact for every dtype,
untouched blocks untouched."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.kernels import pack_blocks, unpack_blocks
from kernel_batches import for_backend

BACKENDS = ("torch", "triton")
BIT_WIDTHS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int, backend: str = "torch") -> torch.Tensor:
    """Arbitrary bit patterns, NaNs with payloads and denormals included, on the device where
    `backend` runs: float math would alter them."""
    integer = BIT_WIDTHS[dtype]
    info = torch.iinfo(integer)
    generator = torch.Generator().manual_seed(seed)
    (bits,) = for_backend(backend, torch.randint(info.min, info.max, shape, dtype=integer, generator=generator))
    return bits.view(dtype)


@st.composite
def disjoint_runs(draw: st.DrawFn, num_blocks: int) -> list[tuple[int, int]]:
    """Non-overlapping (start, length) runs in a random order, as a fragmented allocator hands them out."""
    cuts = sorted(draw(st.sets(st.integers(0, num_blocks), min_size=2, max_size=8)))
    runs = [(a, b - a) for a, b in zip(cuts, cuts[1:]) if draw(st.booleans())]
    return draw(st.permutations(runs)) if runs else [(cuts[0], cuts[1] - cuts[0])]


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(BIT_WIDTHS[tensor.dtype])


@given(
    dtype=st.sampled_from(tuple(BIT_WIDTHS)),
    backend=st.sampled_from(BACKENDS),
    source_runs=disjoint_runs(12),
    data=st.data(),
)
def test_pack_then_unpack_elsewhere_moves_exact_bits(
    dtype: torch.dtype, backend: str, source_runs: list[tuple[int, int]], data: st.DataObject
) -> None:
    shape = (12, 2, 2, 8, 2, 16)  # [blocks, layers, K/V, block_size, Hkv, D]
    source = random_bits(shape, dtype, seed=len(source_runs), backend=backend)
    source_before = source.clone()
    staging = pack_blocks(source, source_runs, backend=backend)
    source_ids = [start + i for start, length in source_runs for i in range(length)]
    assert torch.equal(bits(staging), bits(source[source_ids]))
    assert torch.equal(bits(source), bits(source_before))

    # Unpack into other runs of the same total length in a second cache.
    total = len(source_ids)
    target = random_bits(shape, dtype, seed=total + 1, backend=backend)
    target_before = target.clone()
    target_ids = sorted(data.draw(st.permutations(range(12)))[:total])
    target_runs = [(block, 1) for block in data.draw(st.permutations(target_ids))]
    unpack_blocks(staging, target, target_runs, backend=backend)
    written = [start for start, _ in target_runs]
    assert torch.equal(bits(target[written]), bits(staging))
    untouched = [i for i in range(12) if i not in written]
    assert torch.equal(bits(target[untouched]), bits(target_before[untouched]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unpack_checks_everything_before_writing(backend: str) -> None:
    cache, staging = for_backend(backend, torch.zeros(6, 1, 2, 8, 1, 16), torch.ones(3, 1, 2, 8, 1, 16))
    with pytest.raises(ValueError, match="staging has shape"):
        unpack_blocks(staging, cache, [(0, 2)], backend=backend)
    with pytest.raises(ValueError, match="overlap"):
        unpack_blocks(staging, cache, [(0, 2), (1, 1)], backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        unpack_blocks(staging.half(), cache, [(0, 3)], backend=backend)
    assert not cache.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_rejects_a_cache_that_is_not_block_major(backend: str) -> None:
    cache, flat, bytes_cache = for_backend(
        backend,
        torch.zeros(6, 1, 2, 16, 1, 16),
        torch.zeros(6, 2, 8, 16),
        torch.zeros(6, 1, 2, 8, 1, 3, dtype=torch.uint8),
    )
    with pytest.raises(ValueError, match="contiguous"):
        pack_blocks(cache[:, :, :, :8], [(0, 1)], backend=backend)
    with pytest.raises(ValueError, match="expected"):
        pack_blocks(flat, [(0, 1)], backend=backend)
    with pytest.raises(ValueError, match="cache.dtype=torch.uint8"):
        pack_blocks(bytes_cache, [(0, 1)], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_into_a_given_buffer_reuses_it(backend: str) -> None:
    cache = random_bits((6, 1, 2, 8, 1, 16), torch.float16, seed=3, backend=backend)
    (buffer,) = for_backend(backend, torch.zeros(3, 1, 2, 8, 1, 16, dtype=torch.float16))
    staging = pack_blocks(cache, [(4, 2), (1, 1)], backend=backend, out=buffer)
    assert staging.data_ptr() == buffer.data_ptr()
    assert torch.equal(bits(buffer), bits(cache[[4, 5, 1]]))
    with pytest.raises(ValueError, match="staging has shape"):
        pack_blocks(cache, [(0, 2)], backend=backend, out=buffer)
