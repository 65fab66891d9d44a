"""Triton paged attention: one kernel for prefill, chunked prefill and decode over a paged KV cache.

A program takes one tile of a sequence's queries, for one KV head and every query head sharing it
(rows = token x head in group), and streams that sequence's keys and values through an online
softmax. Keys are gathered token by token through the block table, so any block size and any cache
strides work and a sequence scattered over many block groups reads the same as a contiguous one.

Flash-decoding: when the batch is too small to fill the device, each tile's KV range is cut into
splits handled by separate programs; each writes a normalised partial output and its log-sum-exp,
and `merge_splits_kernel` combines them.

Numerics: bf16/fp16 are loaded and converted to fp32 (the interpreter computes bf16 wrongly), and
block ids are widened to int64 before they are multiplied by the block stride.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from fastswitch.kernels.attention_batch import AttentionBatch
from fastswitch.kernels.attention_plan import merge_block_size, next_power_of_two, plan_attention
from fastswitch.kernels.checks import check_paged_attention
from fastswitch.kernels.dispatch import triton_interpreting

LOG2_E = 1.4426950408889634
# Finite stand-in for -inf as the running max: a row whose keys are all masked in a split then gets
# exp2(-inf - M) = 0 instead of exp2(-inf + inf) = nan.
NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def paged_attention_kernel(
    out_ptr, lse_ptr,  # out [T, Hq, D] when NUM_SPLITS == 1, else fp32 partials [S, T, Hq, D]; lse fp32 [S, T, Hq]
    q_ptr, k_ptr, v_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, work_items_ptr,
    scale_log2,  # softmax scale times log2(e): the kernel works in base 2
    num_tokens, num_q_heads,
    stride_qt, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_bt,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, ONE_QUERY_PER_SEQ: tl.constexpr,
):
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if ONE_QUERY_PER_SEQ:  # pure decode: work item b is sequence b, and nothing was uploaded
        seq = item
        tile_start = 0
    else:
        seq = tl.load(work_items_ptr + 2 * item)
        tile_start = tl.load(work_items_ptr + 2 * item + 1)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    tok = tile_start + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_valid = (rows // GROUP_PAD < BLOCK_Q) & (tok < q_len) & (rows % GROUP_PAD < GROUP)
    q_pos = seq_len - q_len + tok  # causal position of each row's token
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM

    token_index = (q_start + tok).to(tl.int64)
    q_offsets = token_index[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd
    q = tl.load(q_ptr + q_offsets, mask=row_valid[:, None] & dim_valid[None, :], other=0.0).to(tl.float32)

    # Keys up to the last query of the tile, cut into NUM_SPLITS ranges of whole BLOCK_N steps.
    kv_end = seq_len - q_len + tl.minimum(tile_start + BLOCK_Q, q_len)
    # Plain integer ceil-divisions: tl.cdiv is a nested jit call, which the interpreter makes costly.
    split_len = ((kv_end + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    kv_lo = split * split_len
    kv_hi = tl.minimum(kv_lo + split_len, kv_end)

    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    for kv_start in range(kv_lo, kv_hi, BLOCK_N):
        kv_pos = kv_start + tl.arange(0, BLOCK_N)
        kv_valid = kv_pos < kv_hi
        block_ids = tl.load(
            block_tables_ptr + seq * stride_bt + kv_pos // BLOCK_SIZE, mask=kv_valid, other=0
        ).to(tl.int64)
        slots = kv_pos % BLOCK_SIZE
        kv_mask = kv_valid[:, None] & dim_valid[None, :]
        k_offsets = (
            block_ids[:, None] * stride_kb + slots[:, None] * stride_ks
            + kv_head * stride_kh + dims[None, :] * stride_kd
        )
        k = tl.load(k_ptr + k_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        visible = (kv_pos[None, :] <= q_pos[:, None]) & kv_valid[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_offsets = (
            block_ids[:, None] * stride_vb + slots[:, None] * stride_vs
            + kv_head * stride_vh + dims[None, :] * stride_vd
        )
        v = tl.load(v_ptr + v_offsets, mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_index = token_index[:, None] * num_q_heads * HEAD_DIM + head[:, None] * HEAD_DIM + dims[None, :]
    store_mask = row_valid[:, None] & dim_valid[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + out_index, acc.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        split_offset = split.to(tl.int64) * num_tokens * num_q_heads
        tl.store(out_ptr + split_offset * HEAD_DIM + out_index, acc, mask=store_mask)
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + split_offset + token_index * num_q_heads + head, lse, mask=row_valid)


@triton.jit
def merge_splits_kernel(
    out_ptr, partial_ptr, lse_ptr,  # out [T, Hq, D]; partial fp32 [S, T, Hq, D]; lse fp32 [S, T, Hq] (base 2)
    num_tokens,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    # A token's Hq * D outputs are one flat row; a program merges BLOCK_E elements of it over the splits.
    token = tl.program_id(0).to(tl.int64)
    elements = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    splits = tl.arange(0, SPLITS_PAD)[:, None].to(tl.int64)
    row_size = NUM_HEADS * HEAD_DIM
    in_row = elements < row_size
    mask = (splits < NUM_SPLITS) & in_row[None, :]
    heads = elements // HEAD_DIM
    lse = tl.load(lse_ptr + (splits * num_tokens + token) * NUM_HEADS + heads[None, :], mask=mask, other=float("-inf"))
    # Every row sees at least one key (its own), so some split has a finite lse; only the padding
    # elements past the row have an infinite max, and they are not stored.
    lse_max = tl.where(in_row, tl.max(lse, 0), 0.0)
    weights = tl.exp2(lse - lse_max[None, :])
    partial = tl.load(partial_ptr + (splits * num_tokens + token) * row_size + elements[None, :], mask=mask, other=0.0)
    merged = tl.sum(partial * weights, 0) / tl.where(in_row, tl.sum(weights, 0), 1.0)
    tl.store(out_ptr + token * row_size + elements, merged.to(out_ptr.dtype.element_ty), mask=in_row)


@functools.cache
def _cuda_limits(device_index: int) -> tuple[int, int]:
    """(multiprocessors, bytes of shared memory a program may opt into) of a CUDA device."""
    properties = triton.runtime.driver.active.utils.get_device_properties(device_index)
    return properties["multiprocessor_count"], properties["max_shared_mem"]


def _device_limits(device: torch.device) -> tuple[int, int | None]:
    """(SMs to fill, shared memory per program) for planning; under the interpreter programs run one
    after another (splitting only adds work) and have no shared-memory limit."""
    if device.type != "cuda" or triton_interpreting():
        return 1, None
    return _cuda_limits(torch.cuda.current_device() if device.index is None else device.index)


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float | None = None,
    num_splits: int | None = None,
    *,
    layout: AttentionBatch | None = None,
) -> torch.Tensor:
    """The Triton twin of `reference.paged_attention`; num_splits forces the flash-decoding split count."""
    layout = check_paged_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, layout)
    num_tokens, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    num_sms, shared_memory = _device_limits(q.device)
    # fp32 caches need full-precision products; tf32 is exact for bf16/fp16 inputs to QK^T.
    full_precision = q.dtype == torch.float32
    plan = plan_attention(
        layout.query_lens, max(layout.seq_lens, default=0), num_q_heads, num_kv_heads, head_dim, num_sms, num_splits,
        shared_memory=shared_memory, full_precision=full_precision,
    )
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if not plan.work_items:
        return out
    # The kernel indexes these with unit stride along their last dimension (a no-op when they are).
    block_tables, seq_lens, query_start_loc = (t.contiguous() for t in (block_tables, seq_lens, query_start_loc))
    # A decode step (one query per sequence) needs no work-item table: the kernel derives it, and the
    # host-to-device copy, which would stall the host on a GPU, is skipped.
    one_query_per_seq = layout.query_start_loc == list(range(layout.num_seqs + 1))
    if one_query_per_seq:
        work_items = query_start_loc  # not read
    else:
        work_items = torch.tensor(plan.work_items, dtype=torch.int32).to(q.device)
    if plan.num_splits == 1:
        target, lse = out, out  # lse is not written without splits
    else:
        target = torch.empty((plan.num_splits, num_tokens, num_q_heads, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((plan.num_splits, num_tokens, num_q_heads), dtype=torch.float32, device=q.device)
    dot_precision = "ieee" if full_precision else "tf32"
    grid = (len(plan.work_items), num_kv_heads, plan.num_splits)
    paged_attention_kernel[grid](
        target, lse, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, work_items,
        scale * LOG2_E, num_tokens, num_q_heads,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), block_tables.stride(0),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=plan.head_dim_pad, BLOCK_SIZE=block_size,
        GROUP=plan.group, GROUP_PAD=plan.group_pad, BLOCK_Q=plan.block_q, BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n, NUM_SPLITS=plan.num_splits, DOT_PRECISION=dot_precision,
        ONE_QUERY_PER_SEQ=one_query_per_seq,
        num_warps=plan.num_warps,
    )
    if plan.num_splits > 1:
        row_size = num_q_heads * head_dim
        block_e = merge_block_size(row_size, plan.num_splits, triton_interpreting())
        merge_splits_kernel[(num_tokens, triton.cdiv(row_size, block_e))](
            out, target, lse, num_tokens,
            NUM_HEADS=num_q_heads, HEAD_DIM=head_dim, NUM_SPLITS=plan.num_splits,
            SPLITS_PAD=next_power_of_two(plan.num_splits), BLOCK_E=block_e,
        )
    return out
