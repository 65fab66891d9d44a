"""Plain-torch twins of the kernels: the test oracle, and the fast path on CPU.

Same signatures as the public functions in `fastswitch.kernels` (without `backend`), same checks,
same results up to floating-point summation order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from fastswitch.kernels.attention_batch import AttentionBatch
from fastswitch.kernels.checks import (
    check_block_major_cache,
    check_paged_attention,
    check_runs,
    check_staging,
    check_store_kv,
    new_staging,
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
    layout: AttentionBatch | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens over each sequence's paged KV; returns [T, Hq, D] in q's dtype.

    q [T, Hq, D]; k_cache/v_cache [num_blocks, block_size, Hkv, D]; block_tables [B, max_blocks] int32;
    seq_lens [B] int32 (cached + new); query_start_loc [B + 1] int32. Query i of sequence b sits at
    position seq_lens[b] - q_len_b + i and sees keys at positions <= its own. `layout`: host copies of
    query_start_loc and seq_lens, when the caller has them (see AttentionBatch).

    All decodes (q_len 1) are attended in one batched call; each longer query (prefill, chunked
    prefill) in its own, so a prefill never pads the decodes' queries to its length.
    """
    layout = check_paged_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, layout)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    starts, lens = layout.query_start_loc, layout.seq_lens
    decodes = [b for b in range(layout.num_seqs) if layout.query_len(b) == 1]
    if decodes and len(decodes) == layout.num_seqs:  # a decode step: token b is sequence b's one query
        return _attend(q[:, None], k_cache, v_cache, block_tables, lens, scale)[:, 0]
    out = torch.empty_like(q)
    if decodes:
        rows = torch.tensor([starts[b] for b in decodes], device=q.device)
        tables = block_tables[torch.tensor(decodes, device=q.device)]
        out[rows] = _attend(q[rows, None], k_cache, v_cache, tables, [lens[b] for b in decodes], scale)[:, 0]
    for b in range(layout.num_seqs):
        if layout.query_len(b) > 1:
            start, end = starts[b], starts[b + 1]
            out[start:end] = _attend(q[None, start:end], k_cache, v_cache, block_tables[b : b + 1], [lens[b]], scale)[0]
    return out


def _attend(
    queries: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: list[int],
    scale: float,
) -> torch.Tensor:
    """B sequences with t new tokens each: queries [B, t, Hq, D] -> [B, t, Hq, D] in their dtype.

    Every sequence's blocks are gathered into one padded [B, Hkv, L, D] batch, L the longest sequence
    rounded up to whole blocks; a mask hides the padding and, for t > 1, the future.
    """
    num_seqs, query_len, num_q_heads, _ = queries.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    device = queries.device
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    padded_len = max(blocks_per_seq) * block_size
    # Table entries past a sequence's last block may be anything: re-read its first block there.
    in_use = torch.arange(max(blocks_per_seq), device=device) < torch.tensor(blocks_per_seq, device=device)[:, None]
    block_ids = torch.where(in_use, block_tables[:, : in_use.shape[1]], block_tables[:, :1]).long()
    unwritten = _unwritten_rows(seq_lens, block_size, padded_len, device)
    keys = _gather(k_cache, block_ids, unwritten)  # [B, Hkv, L, D] fp32
    values = _gather(v_cache, block_ids, unwritten)
    # Query heads sharing a KV head become rows of one matrix product: [B, Hkv, group * t, D].
    group = num_q_heads // num_kv_heads
    folded = rearrange(queries.float(), "b t (h g) d -> b h (g t) d", h=num_kv_heads)
    mask = None  # a decode whose keys fill the padded length sees them all
    if query_len > 1 or sum(seq_lens) < num_seqs * padded_len:
        # Causal by position: the queries are the last t tokens of each sequence.
        query_pos = torch.tensor(seq_lens, device=device)[:, None] - query_len + torch.arange(query_len, device=device)
        visible = torch.arange(padded_len, device=device) <= query_pos[:, :, None]  # [B, t, L]
        mask = repeat(visible, "b t l -> b 1 (g t) l", g=group)
    attended = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=scale)
    return rearrange(attended, "b h (g t) d -> b t (h g) d", g=group).to(queries.dtype)


def _unwritten_rows(seq_lens: list[int], block_size: int, padded_len: int, device: torch.device) -> torch.Tensor | None:
    """Flat indices b * L + p of the gathered rows past sequence b's end that hold no key of it: the tail
    of its last block and, for a sequence shorter than a block, that tail again in each padded block.

    They may hold stale or non-finite values, and the mask is not enough: a weight of 0 times NaN is NaN.
    Every other padded row re-reads a written slot of the sequence's first block, and is only masked.
    """
    rows: list[int] = []
    for b, seq_len in enumerate(seq_lens):
        start, last_block_end = b * padded_len, -(-seq_len // block_size) * block_size
        rows += range(start + seq_len, start + last_block_end)
        if seq_len < block_size:
            rows += [start + p + i for p in range(block_size, padded_len, block_size) for i in range(seq_len, block_size)]
    return torch.tensor(rows, device=device) if rows else None


def _gather(cache: torch.Tensor, block_ids: torch.Tensor, unwritten: torch.Tensor | None) -> torch.Tensor:
    """The blocks block_ids [B, nb] of cache [num_blocks, bs, Hkv, D] as fp32 [B, Hkv, nb * bs, D], with
    rows `unwritten` (flat indices b * nb * bs + position) zeroed. One index_select for the batch: per
    block or per sequence, the copies' overhead is what costs."""
    num_seqs = block_ids.shape[0]
    tokens = rearrange(cache.index_select(0, block_ids.flatten()).float(), "(b n) s h d -> (b n s) h d", b=num_seqs)
    if unwritten is not None:
        tokens.index_fill_(0, unwritten, 0.0)
    return rearrange(tokens, "(b l) h d -> b h l d", b=num_seqs)


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
