"""Plain-torch twins of the kernels: the test oracle, and the fast path on CPU.

Same signatures as the public functions in `fastswitch.kernels` (without `backend`), same checks,
same results up to floating-point summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import repeat

from fastswitch.kernels.attention_batch import AttentionBatch
from fastswitch.kernels.checks import (
    check_block_major_cache,
    check_paged_attention,
    check_runs,
    check_staging,
    check_store_kv,
    new_staging,
)

# Decode sequences are split in two length groups only when that gathers at least this many fewer key
# rows: the fixed cost of one more batched call (gathers, SDPA, the scatter of its rows) in gathered
# rows, measured on one CPU core with SmolLM2's shapes (3 KV heads of 64).
GROUP_OVERHEAD_ROWS = 256


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

    The work is cut into batched calls by `_plan_calls` (see there); the plan depends only on the
    batch, so the layers of a step share it through the AttentionBatch they all get.
    """
    layout = check_paged_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, layout)
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    group = q.shape[1] // k_cache.shape[2]
    calls = _plan_for(layout, block_tables, k_cache.shape[1], group)
    if len(calls) == 1 and isinstance(calls[0].rows, slice) and calls[0].rows == slice(0, q.shape[0]):
        return _run(calls[0], q, k_cache, v_cache, scale)  # one call covers every token, in order
    out = torch.empty_like(q)
    for call in calls:
        out[call.rows] = _run(call, q, k_cache, v_cache, scale)
    return out


@dataclass(frozen=True)
class _Call:
    """One batched attention call: B sequences with t new tokens each, their keys gathered and padded
    to the longest of them (whole blocks)."""

    rows: slice | torch.Tensor  # the B * t rows of q (and of the output), sequence-major
    query_len: int  # t
    block_ids: torch.Tensor  # [B, nb] long: the blocks to gather
    unwritten: torch.Tensor | None  # gathered rows to zero (see _unwritten_rows)
    mask: torch.Tensor | None  # [B, 1, group * t, L] fp32: 0 where a folded query row sees a key, -inf
    # where not; None: it sees all
    causal_len: int  # > 0: one whole prompt of that many tokens, attended causally over its first keys


def _plan_for(layout: AttentionBatch, block_tables: torch.Tensor, block_size: int, group: int) -> list[_Call]:
    """The calls of this batch, planned once per step and kept on its AttentionBatch; tables other than
    the batch's own are planned afresh."""
    starts, lens = layout.query_start_loc, layout.seq_lens
    if block_tables is not layout.block_tables:
        return _plan_calls(starts, lens, block_tables, block_size, group)
    key = (block_size, group)
    if key not in layout.plans:
        layout.plans[key] = _plan_calls(starts, lens, block_tables, block_size, group)
    return layout.plans[key]


def _plan_calls(
    starts: list[int], lens: list[int], block_tables: torch.Tensor, block_size: int, group: int
) -> list[_Call]:
    """Decodes (q_len 1) in one batched call, or two when splitting them by length saves more padding
    than a call costs (GROUP_OVERHEAD_ROWS); each longer query (prefill, chunked prefill) in its own,
    so a prefill never pads the decodes' queries to its length. A prefill from position 0 is plain
    causal attention over its own keys, with no mask to build or apply."""
    device = block_tables.device
    query_lens = [starts[b + 1] - starts[b] for b in range(len(lens))]
    decodes = [b for b, n in enumerate(query_lens) if n == 1]
    calls = []
    for part in _split_by_length(decodes, lens, block_size):
        if len(part) == len(lens):  # every sequence decodes: token b is sequence b's query
            rows: slice | torch.Tensor = slice(0, len(part))
        else:
            rows = torch.tensor([starts[b] for b in part], device=device)
        tables = block_tables[torch.tensor(part, device=device)]
        calls.append(_batched_call(rows, 1, [lens[b] for b in part], tables, block_size, group))
    for b, query_len in enumerate(query_lens):
        if query_len <= 1:
            continue
        rows = slice(starts[b], starts[b + 1])
        if query_len == lens[b]:
            blocks = block_tables[b : b + 1, : -(-query_len // block_size)].long()
            calls.append(_Call(rows, query_len, blocks, None, None, causal_len=query_len))
        else:
            calls.append(_batched_call(rows, query_len, [lens[b]], block_tables[b : b + 1], block_size, group))
    return calls


def _split_by_length(seqs: list[int], lens: list[int], block_size: int) -> list[list[int]]:
    """seqs as one group, or as a short and a long group when that gathers fewer key rows by more than
    GROUP_OVERHEAD_ROWS. A group pads every sequence to its longest, in whole blocks."""
    if not seqs:
        return []
    ordered = sorted(seqs, key=lambda b: lens[b])
    padded = [-(-lens[b] // block_size) * block_size for b in ordered]
    whole = len(ordered) * padded[-1]
    best, cut = whole, 0
    for k in range(1, len(ordered)):
        rows = k * padded[k - 1] + (len(ordered) - k) * padded[-1] + GROUP_OVERHEAD_ROWS
        if rows < best:
            best, cut = rows, k
    if cut == 0:
        return [seqs]
    return [ordered[:cut], ordered[cut:]]


def _batched_call(
    rows: slice | torch.Tensor,
    query_len: int,
    seq_lens: list[int],
    block_tables: torch.Tensor,
    block_size: int,
    group: int,
) -> _Call:
    """The call for sequences seq_lens, tables block_tables [B, max_blocks], with query_len new tokens each:
    the queries are the last query_len tokens of each sequence, and see keys at positions <= their own."""
    device = block_tables.device
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_seqs, padded_len = len(seq_lens), max(blocks_per_seq) * block_size
    # Table entries past a sequence's last block may be anything: re-read its first block there.
    in_use = torch.arange(max(blocks_per_seq), device=device) < torch.tensor(blocks_per_seq, device=device)[:, None]
    block_ids = torch.where(in_use, block_tables[:, : in_use.shape[1]], block_tables[:, :1]).long()
    mask = None  # a decode whose keys fill the padded length sees them all
    if query_len > 1 or sum(seq_lens) < num_seqs * padded_len:
        query_pos = torch.tensor(seq_lens, device=device)[:, None] - query_len + torch.arange(query_len, device=device)
        visible = torch.arange(padded_len, device=device) <= query_pos[:, :, None]  # [B, t, L]
        # Additive, as SDPA would turn a boolean mask at every call (the queries are fp32).
        hidden = torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))
        mask = repeat(hidden, "b t l -> b 1 (g t) l", g=group)
    unwritten = _unwritten_rows(seq_lens, block_size, padded_len, device)
    return _Call(rows, query_len, block_ids, unwritten, mask, causal_len=0)


def _run(call: _Call, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float) -> torch.Tensor:
    """The call's output rows [B * t, Hq, D] in q's dtype, computed in fp32.

    Batched: query heads sharing a KV head become rows of one matrix product, [B, Hkv, group * t, D],
    masked by call.mask. Causal: SDPA's is_causal over the prompt's K and V, each shared by its GQA group
    of query heads (enable_gqa)."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = q.shape[1] // num_kv_heads
    queries = q[call.rows].float()
    if call.causal_len:
        keys = _gather(k_cache, call.block_ids, None)[:, :, : call.causal_len]
        values = _gather(v_cache, call.block_ids, None)[:, :, : call.causal_len]
        prompt = queries.transpose(0, 1)[None]  # [1, Hq, t, D]
        attended = F.scaled_dot_product_attention(prompt, keys, values, is_causal=True, scale=scale, enable_gqa=True)
        return attended[0].transpose(0, 1).to(q.dtype)
    keys = _gather(k_cache, call.block_ids, call.unwritten)  # [B, Hkv, L, D] fp32
    values = _gather(v_cache, call.block_ids, call.unwritten)
    # Plain views rather than einops: these run at every layer of every step, where its per-call
    # overhead showed in profiles. "(b t) (h g) d -> b h (g t) d" and back.
    num_seqs, query_len = keys.shape[0], call.query_len
    folded = queries.view(num_seqs, query_len, num_kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    folded = folded.reshape(num_seqs, num_kv_heads, group * query_len, head_dim)
    attended = F.scaled_dot_product_attention(folded, keys, values, attn_mask=call.mask, scale=scale)
    attended = attended.view(num_seqs, num_kv_heads, group, query_len, head_dim).permute(0, 3, 1, 2, 4)
    return attended.reshape(num_seqs * query_len, num_kv_heads * group, head_dim).to(q.dtype)


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
            tail = range(seq_len, block_size)
            rows += [start + p + i for p in range(block_size, padded_len, block_size) for i in tail]
    return torch.tensor(rows, device=device) if rows else None


def _gather(cache: torch.Tensor, block_ids: torch.Tensor, unwritten: torch.Tensor | None) -> torch.Tensor:
    """The blocks block_ids [B, nb] of cache [num_blocks, bs, Hkv, D] as fp32 [B, Hkv, nb * bs, D], with
    rows `unwritten` (flat indices b * nb * bs + position) zeroed. One index_select for the batch: per
    block or per sequence, the copies' overhead is what costs."""
    num_seqs, num_kv_heads, head_dim = block_ids.shape[0], cache.shape[2], cache.shape[3]
    tokens = cache.index_select(0, block_ids.flatten()).float().view(-1, num_kv_heads, head_dim)  # [(b n s), h, d]
    if unwritten is not None:
        tokens.index_fill_(0, unwritten, 0.0)
    return tokens.view(num_seqs, -1, num_kv_heads, head_dim).transpose(1, 2)


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write one layer's new K and V [T, Hkv, D] into cache slots (slot = block_id * block_size + offset)."""
    check_store_kv(key, value, k_cache, v_cache, slot_mapping)
    block_size = k_cache.shape[1]
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
