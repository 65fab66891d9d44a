"""Plain-torch twins of the kernels: the test oracle, and the fast path on CPU.

Same signatures as the public functions in `fastswitch.kernels` (without `backend`), same checks,
same results up to floating-point summation order.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from fastswitch.kernels.checks import (
    BatchLayout,
    check_block_major_cache,
    check_paged_attention,
    check_runs,
    check_staging,
    new_staging,
    check_store_kv,
)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float | None = None,
    *,
    layout: BatchLayout | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens over each sequence's paged KV; returns [T, Hq, D] in q's dtype.

    q [T, Hq, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks] int32;
    seq_lens [B] int32 (cached + new); query_start_loc [B + 1] int32. Query i of sequence b sits at
    position seq_lens[b] - q_len_b + i and sees keys at positions <= its own. `layout`: host copies of
    query_start_loc and seq_lens, when the caller has them (see BatchLayout).
    """
    layout = check_paged_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, layout)
    head_dim = q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    for b in range(layout.num_seqs):
        query_len, seq_len = layout.query_len(b), layout.seq_lens[b]
        if query_len == 0:
            continue
        num_used_blocks = -(-seq_len // block_size)
        block_ids = block_tables[b, :num_used_blocks].long()
        # Gather the sequence's blocks into contiguous [Hkv, L, D] keys and values.
        keys = rearrange(k_cache[block_ids].flatten(0, 1)[:seq_len].float(), "l h d -> h l d")
        values = rearrange(v_cache[block_ids].flatten(0, 1)[:seq_len].float(), "l h d -> h l d")
        start = layout.query_start_loc[b]
        # Query heads sharing a KV head become rows of one matrix product: [Hkv, group * q_len, D].
        queries = rearrange(q[start : start + query_len].float(), "t (h g) d -> h (g t) d", h=num_kv_heads)
        scores = (queries @ keys.transpose(1, 2) * scale).view(num_kv_heads, -1, query_len, seq_len)
        # Causal by position: the queries are the last query_len tokens of the sequence.
        query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
        hidden = torch.arange(seq_len, device=q.device)[None, :] > query_pos[:, None]
        scores.masked_fill_(hidden, float("-inf"))
        attended = torch.softmax(scores, dim=-1).flatten(1, 2) @ values
        out[start : start + query_len] = rearrange(attended, "h (g t) d -> t (h g) d", t=query_len).to(q.dtype)
    return out


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write one layer's new K and V [T, Hkv, D] into cache slots (slot = block_id * block_size + offset)."""
    check_store_kv(key, value, k_cache, v_cache, slot_mapping)
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    block_ids, offsets = slot_mapping // block_size, slot_mapping % block_size
    # Advanced indexing on a strided view writes through to the block-major cache.
    k_cache[block_ids, offsets] = key
    v_cache[block_ids, offsets] = value


def pack_blocks(cache: torch.Tensor, runs: list[tuple[int, int]], out: torch.Tensor | None = None) -> torch.Tensor:
    """Gather block runs of the block-major cache [N, layers, 2, bs, Hkv, D] into one contiguous tensor
    (into `out` when given, e.g. a reused staging buffer)."""
    check_block_major_cache(cache)
    total = check_runs(runs, cache.shape[0])
    staging = new_staging(cache, total) if out is None else out
    check_staging(staging, cache, total)
    offset = 0
    for start, length in runs:
        staging[offset : offset + length].copy_(cache[start : start + length])
        offset += length
    return staging


def unpack_blocks(staging: torch.Tensor, cache: torch.Tensor, runs: list[tuple[int, int]]) -> None:
    """Scatter a staging tensor [total, layers, 2, bs, Hkv, D] into block runs of the cache, in order."""
    check_block_major_cache(cache)
    total = check_runs(runs, cache.shape[0])
    check_staging(staging, cache, total)
    offset = 0
    for start, length in runs:
        cache[start : start + length].copy_(staging[offset : offset + length])
        offset += length
