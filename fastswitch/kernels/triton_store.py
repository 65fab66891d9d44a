"""Triton store: write one layer's new keys and values into their slots of the paged cache.

A program copies the [Hkv, D] key and value rows of TOKENS_PER_PROGRAM tokens, each row flattened to
Hkv * D elements. Values are moved without arithmetic, so the cache holds exactly the bits of `key`
and `value`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastswitch.kernels.attention_plan import next_power_of_two
from fastswitch.kernels.checks import check_store_kv

# Several tokens per program: the interpreter pays per program, and on a GPU a program still moves
# only a few KiB.
TOKENS_PER_PROGRAM = 8


@triton.jit
def store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    num_tokens,
    stride_key_t, stride_key_h, stride_key_d,
    stride_value_t, stride_value_h, stride_value_d,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, ROW_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_valid = tokens < num_tokens
    tokens = tokens.to(tl.int64)
    # int64 slots: block ids times the block stride can pass 2^31.
    slots = tl.load(slot_mapping_ptr + tokens, mask=token_valid, other=0)
    block_ids = (slots // BLOCK_SIZE)[:, None]
    offsets = (slots % BLOCK_SIZE)[:, None]
    elements = tl.arange(0, ROW_PAD)
    heads = (elements // HEAD_DIM_PAD)[None, :]
    dims = (elements % HEAD_DIM_PAD)[None, :]
    mask = token_valid[:, None] & (heads < NUM_HEADS) & (dims < HEAD_DIM)
    rows = tokens[:, None]
    key = tl.load(key_ptr + rows * stride_key_t + heads * stride_key_h + dims * stride_key_d, mask=mask)
    value = tl.load(value_ptr + rows * stride_value_t + heads * stride_value_h + dims * stride_value_d, mask=mask)
    k_slots = k_cache_ptr + block_ids * stride_kb + offsets * stride_ks
    v_slots = v_cache_ptr + block_ids * stride_vb + offsets * stride_vs
    tl.store(k_slots + heads * stride_kh + dims * stride_kd, key, mask=mask)
    tl.store(v_slots + heads * stride_vh + dims * stride_vd, value, mask=mask)


def store_kv_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """The Triton twin of `reference.store_kv`."""
    check_store_kv(key, value, k_cache, v_cache, slot_mapping)
    num_tokens, num_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    head_dim_pad = next_power_of_two(head_dim)
    block_t = min(TOKENS_PER_PROGRAM, next_power_of_two(num_tokens))
    store_kv_kernel[(triton.cdiv(num_tokens, block_t),)](
        key, value, k_cache, v_cache, slot_mapping.contiguous(), num_tokens,
        *key.stride(), *value.stride(), *k_cache.stride(), *v_cache.stride(),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        ROW_PAD=next_power_of_two(num_heads) * head_dim_pad, BLOCK_SIZE=k_cache.shape[1], BLOCK_T=block_t,
    )
