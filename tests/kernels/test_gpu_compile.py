"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU.

The interpreter runs a kernel's Python, not its compilation, so layout, shared-memory and type errors
that only the GPU compiler sees would pass every other test here. Triton's Linux wheels bundle
ptxas, so the full pipeline down to a cubin runs on CPU. It runs in a subprocess because this test
session imported the kernels under TRITON_INTERPRET=1. Slow (tens of seconds of compilation).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CONFIGS = [  # (dtype, head_dim, group, block_q, block_n, num_splits, dot precision)
    ("bf16", 128, 4, 1, 64, 1, "tf32"),  # Llama-3-8B decode
    ("bf16", 128, 4, 16, 64, 8, "tf32"),  # prefill tile with flash-decoding splits
    ("fp16", 80, 8, 8, 64, 1, "tf32"),  # head dim masked to 128
    ("bf16", 256, 1, 32, 32, 1, "tf32"),
    ("fp32", 64, 2, 32, 64, 4, "ieee"),
]
STRIDES = (
    "stride_qt stride_qh stride_qd stride_kb stride_ks stride_kh stride_kd "
    "stride_vb stride_vs stride_vh stride_vd stride_bt"
).split()


def compile_all() -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    from fastswitch.kernels.attention_plan import MIN_DOT_SIZE, next_power_of_two
    from fastswitch.kernels.triton_attention import merge_splits_kernel, paged_attention_kernel
    from fastswitch.kernels.triton_block_copy import copy_blocks_kernel
    from fastswitch.kernels.triton_store import store_kv_kernel

    target = GPUTarget("cuda", 90, 32)

    def build(kernel, signature: dict, constants: dict) -> None:
        signature = {**signature, **{name: "constexpr" for name in constants}}
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
        triton.compile(source, target=target, options={"num_warps": 4})

    for dtype, head_dim, group, block_q, block_n, splits, precision in CONFIGS:
        pointer = f"*{dtype}"
        signature = {
            "out_ptr": pointer if splits == 1 else "*fp32", "lse_ptr": "*fp32",
            "q_ptr": pointer, "k_ptr": pointer, "v_ptr": pointer, "block_tables_ptr": "*i32",
            "seq_lens_ptr": "*i32", "query_start_loc_ptr": "*i32", "work_items_ptr": "*i32",
            "scale_log2": "fp32", "num_tokens": "i32", "num_q_heads": "i32", **{name: "i32" for name in STRIDES},
        }
        group_pad = next_power_of_two(group)
        build(paged_attention_kernel, signature, {
            "HEAD_DIM": head_dim, "HEAD_DIM_PAD": max(MIN_DOT_SIZE, next_power_of_two(head_dim)),
            "BLOCK_SIZE": 16, "GROUP": group, "GROUP_PAD": group_pad, "BLOCK_Q": block_q,
            "BLOCK_M": max(MIN_DOT_SIZE, block_q * group_pad), "BLOCK_N": block_n, "NUM_SPLITS": splits,
            "DOT_PRECISION": precision, "ONE_QUERY_PER_SEQ": block_q == 1,
        })
    build(
        merge_splits_kernel,
        {"out_ptr": "*bf16", "partial_ptr": "*fp32", "lse_ptr": "*fp32", "num_tokens": "i32"},
        {"NUM_HEADS": 32, "HEAD_DIM": 128, "NUM_SPLITS": 5, "SPLITS_PAD": 8, "BLOCK_E": 512},
    )
    store_strides = [f"stride_{a}_{b}" for a in ("key", "value") for b in "thd"]
    store_strides += [f"stride_{a}{b}" for a in "kv" for b in "bshd"]
    build(
        store_kv_kernel,
        {"key_ptr": "*bf16", "value_ptr": "*bf16", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
         "slot_mapping_ptr": "*i64", "num_tokens": "i32", **{name: "i32" for name in store_strides}},
        {"NUM_HEADS": 3, "HEAD_DIM": 80, "HEAD_DIM_PAD": 128, "ROW_PAD": 512, "BLOCK_SIZE": 16, "BLOCK_T": 8},
    )
    build(
        copy_blocks_kernel,
        {"src_ptr": "*i32", "dst_ptr": "*i32", "src_ids_ptr": "*i32", "dst_ids_ptr": "*i32", "words_per_block": "i32"},
        {"BLOCK": 4096},
    )


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton bundles ptxas only in its Linux wheels")
def test_kernels_compile_for_sm90() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, __file__], env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


if __name__ == "__main__":
    compile_all()
