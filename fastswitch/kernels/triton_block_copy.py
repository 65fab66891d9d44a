"""Triton pack/unpack: gather block runs of the block-major cache into one staging tensor, and back.

A block of the cache [num_blocks, layers, 2, block_size, Hkv, D] is one contiguous byte range holding
every layer's K and V. Both directions are the same kernel: copy whole blocks from a list of source
ids to a list of destination ids. The cache is viewed as 32-bit words, so the copy moves raw bits
(bit-exact for every dtype, NaN payloads included) and never does float arithmetic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastswitch.kernels.attention_plan import next_power_of_two
from fastswitch.kernels.checks import check_block_major_cache, check_runs, check_staging, new_staging
from fastswitch.kernels.dispatch import triton_interpreting

WORDS_PER_PROGRAM_GPU = 4096  # 16 KiB per program: enough in flight per SM, many programs per block
WORDS_PER_PROGRAM_INTERPRETER = 1 << 16  # the interpreter pays per program: take big bites


@triton.jit
def copy_blocks_kernel(
    src_ptr, dst_ptr, src_ids_ptr, dst_ids_ptr,  # src/dst: int32 words; ids: int32 [num_copies]
    words_per_block,
    BLOCK: tl.constexpr,
):
    copy = tl.program_id(0)
    chunk = tl.program_id(1)
    src_block = tl.load(src_ids_ptr + copy).to(tl.int64)
    dst_block = tl.load(dst_ids_ptr + copy).to(tl.int64)
    words = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = words < words_per_block
    data = tl.load(src_ptr + src_block * words_per_block + words, mask=mask)
    tl.store(dst_ptr + dst_block * words_per_block + words, data, mask=mask)


def _as_words(blocks: torch.Tensor) -> torch.Tensor:
    """View a contiguous [n, ...] tensor as int32 words [n, words_per_block] without copying (a block
    is a whole number of words: check_block_major_cache admits only 2- and 4-byte dtypes)."""
    return blocks.reshape(blocks.shape[0], -1).view(torch.uint8).view(torch.int32)


def _run_block_ids(runs: list[tuple[int, int]]) -> torch.Tensor:
    """Expand runs [(start, length), ...] into the block ids they cover, in order."""
    starts = torch.tensor([start for start, _ in runs], dtype=torch.int64)
    lengths = torch.tensor([length for _, length in runs], dtype=torch.int64)
    first_index = torch.cumsum(lengths, 0) - lengths
    index = torch.arange(int(lengths.sum()))
    return (torch.repeat_interleave(starts - first_index, lengths) + index).to(torch.int32)


def _copy_blocks(src: torch.Tensor, dst: torch.Tensor, src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    src_words, dst_words = _as_words(src), _as_words(dst)
    words_per_block = src_words.shape[1]
    interpreting = src.device.type != "cuda" or triton_interpreting()
    limit = WORDS_PER_PROGRAM_INTERPRETER if interpreting else WORDS_PER_PROGRAM_GPU
    block = min(next_power_of_two(words_per_block), limit)
    grid = (src_ids.shape[0], triton.cdiv(words_per_block, block))
    copy_blocks_kernel[grid](
        src_words, dst_words, src_ids.to(src.device), dst_ids.to(src.device), words_per_block, BLOCK=block
    )


def pack_blocks_triton(
    cache: torch.Tensor, runs: list[tuple[int, int]], out: torch.Tensor | None = None
) -> torch.Tensor:
    """The Triton twin of `reference.pack_blocks`."""
    check_block_major_cache(cache)
    total = check_runs(runs, cache.shape[0])
    staging = new_staging(cache, total) if out is None else out
    check_staging(staging, cache, total)
    if total:
        _copy_blocks(cache, staging, _run_block_ids(runs), torch.arange(total, dtype=torch.int32))
    return staging


def unpack_blocks_triton(staging: torch.Tensor, cache: torch.Tensor, runs: list[tuple[int, int]]) -> None:
    """The Triton twin of `reference.unpack_blocks`."""
    check_block_major_cache(cache)
    total = check_runs(runs, cache.shape[0])
    check_staging(staging, cache, total)
    if total:
        _copy_blocks(staging, cache, torch.arange(total, dtype=torch.int32), _run_block_ids(runs))
