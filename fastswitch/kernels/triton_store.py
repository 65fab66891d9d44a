"""Triton store: write one layer's new keys and values into their slots of the paged cache.

One program per token copies its [Hkv, D] key and value rows. Values are moved without arithmetic,
so the cache holds exactly the bits of `key` and `value`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastswitch.kernels.attention_plan import next_power_of_two
from fastswitch.kernels.checks import check_store_kv


@triton.jit
def store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_key_t, stride_key_h, stride_key_d,
    stride_value_t, stride_value_h, stride_value_d,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)  # int64: block ids times the block stride can pass 2^31
    block_id = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_PAD)[:, None]
    dims = tl.arange(0, HEAD_DIM_PAD)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HEAD_DIM)
    key = tl.load(key_ptr + token * stride_key_t + heads * stride_key_h + dims * stride_key_d, mask=mask)
    value = tl.load(value_ptr + token * stride_value_t + heads * stride_value_h + dims * stride_value_d, mask=mask)
    k_slot = k_cache_ptr + block_id * stride_kb + offset * stride_ks
    v_slot = v_cache_ptr + block_id * stride_vb + offset * stride_vs
    tl.store(k_slot + heads * stride_kh + dims * stride_kd, key, mask=mask)
    tl.store(v_slot + heads * stride_vh + dims * stride_vd, value, mask=mask)


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
    store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping.contiguous(),
        *key.stride(), *value.stride(), *k_cache.stride(), *v_cache.stride(),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEADS_PAD=next_power_of_two(num_heads),
        HEAD_DIM_PAD=next_power_of_two(head_dim), BLOCK_SIZE=k_cache.shape[1],
    )
