"""Kernels of the data path: paged attention, KV store, and pack/unpack of block runs for swapping.

Each public function dispatches at call time (see `dispatch.py`) to a Triton kernel or to its torch
twin in `reference.py`; both check their arguments identically and agree up to summation order.
"""

from __future__ import annotations

import torch

from fastswitch.kernels import reference
from fastswitch.kernels.attention_batch import AttentionBatch
from fastswitch.kernels.dispatch import BACKENDS, resolve_backend


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
    *,
    layout: AttentionBatch | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens q [T, Hq, D] over the paged cache; returns [T, Hq, D].

    k_cache / v_cache [num_blocks, block_size, Hkv, D] (any strides); block_tables [B, max_blocks]
    int32; seq_lens [B] int32 = cached + new tokens; query_start_loc [B + 1] int32 cumulative. Query i
    of sequence b sits at position seq_lens[b] - q_len_b + i. scale defaults to 1/sqrt(D). `layout`:
    the AttentionBatch of these tensors, whose host lists spare a device sync per call.
    """
    args = (q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale)
    if resolve_backend(backend, q.device) == "triton":
        from fastswitch.kernels.triton_attention import paged_attention_triton

        return paged_attention_triton(*args, layout=layout)
    return reference.paged_attention(*args, layout=layout)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    backend: str = "auto",
) -> None:
    """Write one layer's new key/value [T, Hkv, D] into the cache slots given by slot_mapping [T] int64."""
    if resolve_backend(backend, key.device) == "triton":
        from fastswitch.kernels.triton_store import store_kv_triton

        store_kv_triton(key, value, k_cache, v_cache, slot_mapping)
        return
    reference.store_kv(key, value, k_cache, v_cache, slot_mapping)


def pack_blocks(
    cache: torch.Tensor, runs: list[tuple[int, int]], backend: str = "auto", *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Gather block runs (start, length) of the block-major cache into one contiguous staging tensor.

    cache [num_blocks, num_layers, 2, block_size, Hkv, D] contiguous; returns [total, num_layers, 2,
    block_size, Hkv, D], written into `out` when given (a staging buffer reused across swaps).
    """
    if resolve_backend(backend, cache.device) == "triton":
        from fastswitch.kernels.triton_block_copy import pack_blocks_triton

        return pack_blocks_triton(cache, runs, out)
    return reference.pack_blocks(cache, runs, out)


def unpack_blocks(
    staging: torch.Tensor, cache: torch.Tensor, runs: list[tuple[int, int]], backend: str = "auto"
) -> None:
    """Scatter a staging tensor back into block runs of the cache (the inverse of pack_blocks)."""
    if resolve_backend(backend, cache.device) == "triton":
        from fastswitch.kernels.triton_block_copy import unpack_blocks_triton

        unpack_blocks_triton(staging, cache, runs)
        return
    reference.unpack_blocks(staging, cache, runs)


__all__ = [
    "BACKENDS",
    "AttentionBatch",
    "paged_attention",
    "store_kv",
    "pack_blocks",
    "unpack_blocks",
    "resolve_backend",
]
