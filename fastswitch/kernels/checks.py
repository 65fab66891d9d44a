"""Argument checks shared by the Triton kernels and their torch twins.

Both backends call the same checks, so a call that one backend rejects the other rejects too, with the
same message, and nothing is written before the check passes.
"""

from __future__ import annotations

import torch

from fastswitch.kernels.attention_batch import AttentionBatch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 128
MAX_HEAD_DIM = 256


def _check_dtype(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}.dtype={tensor.dtype} is not supported; use one of {SUPPORTED_DTYPES}")


def _check_index_tensor(name: str, tensor: torch.Tensor, ndim: int, device: torch.device) -> None:
    if tensor.dtype != torch.int32:
        raise ValueError(f"{name}.dtype={tensor.dtype} must be torch.int32")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {ndim} dimensions")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but q is on {device}")


def check_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    layout: AttentionBatch | None = None,
) -> AttentionBatch:
    """Check shapes, dtypes and the batch; return it as an AttentionBatch, whose host lists both
    backends read (the torch twin to slice sequences, the Triton launcher to size its grid).

    Without `layout` the lists are read from the tensors in one transfer (on a GPU, one
    synchronisation), together with the range of block ids, which is checked against the cache. With
    it, that check is the caller's promise (the ModelRunner checks the block ids it packs).
    """
    if q.dim() != 3:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected [T, Hq, D]")
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache has shape {tuple(k_cache.shape)}; expected [num_blocks, block_size, Hkv, D]")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} differs from k_cache shape {tuple(k_cache.shape)}")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_dtype(name, tensor)
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"dtypes differ: q {q.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}")
    if not q.device == k_cache.device == v_cache.device:
        raise ValueError(f"devices differ: q {q.device}, k_cache {k_cache.device}, v_cache {v_cache.device}")
    num_tokens, num_q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, cache_head_dim = k_cache.shape
    if cache_head_dim != head_dim:
        raise ValueError(f"cache head dim {cache_head_dim} differs from q head dim {head_dim}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is not supported; it must lie in [1, {MAX_HEAD_DIM}]")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads != 0:
        raise ValueError(f"Hq={num_q_heads} is not a multiple of Hkv={num_kv_heads}")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block_size={block_size} is not supported; it must lie in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]"
        )
    _check_index_tensor("block_tables", block_tables, 2, q.device)
    _check_index_tensor("seq_lens", seq_lens, 1, q.device)
    _check_index_tensor("query_start_loc", query_start_loc, 1, q.device)
    num_seqs = block_tables.shape[0]
    if seq_lens.shape[0] != num_seqs:
        raise ValueError(f"seq_lens has {seq_lens.shape[0]} entries but block_tables has {num_seqs} rows")
    if query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(f"query_start_loc has {query_start_loc.shape[0]} entries; expected B + 1 = {num_seqs + 1}")

    if layout is None:
        layout = _read_layout(block_tables, seq_lens, query_start_loc, num_blocks)
    elif len(layout.query_start_loc) != num_seqs + 1 or len(layout.seq_lens) != num_seqs:
        raise ValueError(
            f"layout holds {len(layout.query_start_loc)} query starts and {len(layout.seq_lens)} lengths; "
            f"the batch has B={num_seqs} sequences"
        )
    max_blocks = block_tables.shape[1]
    starts, lens = layout.query_start_loc, layout.seq_lens
    if starts[0] != 0 or starts[-1] != num_tokens:
        raise ValueError(f"query_start_loc must run from 0 to T={num_tokens}; got {starts[0]}..{starts[-1]}")
    for b in range(num_seqs):
        query_len = starts[b + 1] - starts[b]
        if query_len < 0:
            raise ValueError(f"query_start_loc decreases at sequence {b}: {starts[b]} -> {starts[b + 1]}")
        if not query_len <= lens[b] <= max_blocks * block_size:
            raise ValueError(
                f"seq_lens[{b}]={lens[b]} must lie in "
                f"[q_len={query_len}, max_blocks * block_size={max_blocks * block_size}]"
            )
    return layout


def _read_layout(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor, num_blocks: int
) -> AttentionBatch:
    """Read the host lists, and the range of block ids, in one transfer."""
    num_seqs = seq_lens.shape[0]
    extremes = [block_tables.min().view(1), block_tables.max().view(1)] if block_tables.numel() else []
    host = torch.cat([query_start_loc, seq_lens, *extremes]).tolist()
    if extremes and not 0 <= host[-2] <= host[-1] < num_blocks:
        raise ValueError(f"block_tables holds ids in [{host[-2]}, {host[-1]}]; valid ids are [0, {num_blocks})")
    return AttentionBatch(
        query_start_loc=host[: num_seqs + 1],
        seq_lens=host[num_seqs + 1 : 2 * num_seqs + 1],
        block_tables=block_tables,
        query_start_loc_tensor=query_start_loc,
        seq_lens_tensor=seq_lens,
    )


def check_store_kv(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Check shapes and dtypes of one layer's store. Slot values are not read: that would cost a sync per layer."""
    if key.dim() != 3 or value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must both be [T, Hkv, D]")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must both be "
            "[num_blocks, block_size, Hkv, D]"
        )
    if key.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"key heads/dim {tuple(key.shape[1:])} differ from the cache's {tuple(k_cache.shape[2:])}")
    for name, tensor in (("key", key), ("value", value), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_dtype(name, tensor)
    if not key.dtype == value.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(
            f"dtypes differ: key {key.dtype}, value {value.dtype}, k_cache {k_cache.dtype}, v_cache {v_cache.dtype}"
        )
    if not key.device == value.device == k_cache.device == v_cache.device == slot_mapping.device:
        raise ValueError("key, value, k_cache, v_cache and slot_mapping must share one device")
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != (key.shape[0],):
        raise ValueError(
            f"slot_mapping must be int64 of shape [T={key.shape[0]}]; "
            f"got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )


def check_runs(runs: list[tuple[int, int]], num_blocks: int) -> int:
    """Check that runs lie inside the cache and do not overlap; return their total length in blocks."""
    spans = []
    for start, length in runs:
        if length < 1:
            raise ValueError(f"run ({start}, {length}) has length {length}; runs must hold at least one block")
        if start < 0 or start + length > num_blocks:
            raise ValueError(f"run ({start}, {length}) exceeds the cache's {num_blocks} blocks")
        spans.append((start, start + length))
    spans.sort()
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        if next_start < end:
            raise ValueError(f"runs overlap at block {next_start}")
    return sum(length for _, length in runs)


def check_block_major_cache(cache: torch.Tensor) -> None:
    if cache.dim() != 6:
        raise ValueError(
            f"cache has shape {tuple(cache.shape)}; expected [num_blocks, num_layers, 2, block_size, Hkv, D]"
        )
    # With 2- or 4-byte elements and the K/V axis of 2, a block is a whole number of 32-bit words,
    # which the Triton copy moves.
    _check_dtype("cache", cache)
    if not cache.is_contiguous():
        raise ValueError("cache must be contiguous: a run of blocks is then one byte range")


def new_staging(cache: torch.Tensor, total_blocks: int) -> torch.Tensor:
    """An empty staging tensor for total_blocks blocks of `cache`: the layout check_staging accepts."""
    return torch.empty((total_blocks, *cache.shape[1:]), dtype=cache.dtype, device=cache.device)


def check_staging(staging: torch.Tensor, cache: torch.Tensor, total_blocks: int) -> None:
    expected = (total_blocks, *cache.shape[1:])
    if tuple(staging.shape) != expected:
        raise ValueError(f"staging has shape {tuple(staging.shape)}; the runs need {expected}")
    if staging.dtype != cache.dtype:
        raise ValueError(f"staging.dtype={staging.dtype} differs from cache.dtype={cache.dtype}")
    if staging.device != cache.device:
        raise ValueError(
            f"staging is on {staging.device} but cache is on {cache.device}; copy it across in one call first"
        )
    if not staging.is_contiguous():
        raise ValueError("staging must be contiguous")
