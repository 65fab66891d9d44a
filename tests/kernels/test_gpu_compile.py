"""The Triton kernels compile for the GPUs they target, in the tile sizes the launcher picks there.

The interpreter runs a kernel's Python, not its compilation, so layout, shared-memory and type errors
that only the GPU compiler sees would pass every other test here. Triton's Linux wheels bundle
ptxas, so the full pipeline down to a cubin runs on a machine without a GPU. For each target (the
paper's A10 and A100, and an H100) and each serving shape below, the test plans the call as the
launcher would on that device, compiles exactly that kernel, and checks the shared memory Triton
allocated against the device's limit and against the plan's bound (the bound is what lets the plan
pick tiles without compiling). It runs in a subprocess because this test session imported the
kernels under TRITON_INTERPRET=1. About half a minute of compilation.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# (name, compute capability, SMs, shared memory a program may opt into, from the CUDA programming guide)
TARGETS = [("A10", 86, 72, 99 * 1024), ("A100", 80, 108, 163 * 1024), ("H100", 90, 132, 227 * 1024)]
SHAPES = [  # (what, dtype, Hq, Hkv, D, query lens, sequence lens)
    ("Llama-3-8B decode, 32 x 4k", "bf16", 32, 8, 128, [1] * 32, [4096] * 32),
    ("Llama-3-8B decode, 4 x 16k (splits)", "bf16", 32, 8, 128, [1] * 4, [16384] * 4),
    ("Llama-3-8B prefill 2k", "bf16", 32, 8, 128, [2048], [2048]),
    ("Qwen2.5-32B chunked prefill (group 5)", "bf16", 40, 8, 128, [512, 1], [1536, 700]),
    ("SmolLM2 mixed batch (group 3)", "fp16", 9, 3, 64, [100, 1, 1], [100, 300, 40]),
    ("head dim 80 prefill", "fp16", 32, 32, 80, [256], [256]),
    ("head dim 256 prefill", "bf16", 8, 4, 256, [512], [512]),
    ("fp32 head dim 128 prefill", "fp32", 32, 8, 128, [512], [512]),
    ("fp32 head dim 256 prefill", "fp32", 8, 4, 256, [512], [512]),
    ("fp32 decode with splits", "fp32", 16, 8, 64, [1] * 2, [8192] * 2),
]
STRIDES = (
    "stride_qt stride_qh stride_qd stride_kb stride_ks stride_kh stride_kd "
    "stride_vb stride_vs stride_vh stride_vd stride_bt"
).split()


def compile_all() -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    from fastswitch.kernels.attention_plan import (
        merge_block_size,
        next_power_of_two,
        plan_attention,
        shared_memory_bound,
    )
    from fastswitch.kernels.triton_attention import merge_splits_kernel, paged_attention_kernel
    from fastswitch.kernels.triton_block_copy import copy_blocks_kernel
    from fastswitch.kernels.triton_store import store_kv_kernel

    def build(kernel, target, signature: dict, constants: dict, num_warps: int = 4):
        signature = {**signature, **{name: "constexpr" for name in constants}}
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
        return triton.compile(source, target=target, options={"num_warps": num_warps})

    failures, compiled = [], {}
    for device, capability, num_sms, shared_limit in TARGETS:
        target = GPUTarget("cuda", capability, 32)
        for what, dtype, num_q_heads, num_kv_heads, head_dim, query_lens, seq_lens in SHAPES:
            full_precision = dtype == "fp32"
            plan = plan_attention(
                query_lens, max(seq_lens), num_q_heads, num_kv_heads, head_dim,
                num_sms, shared_memory=shared_limit, full_precision=full_precision,
            )
            pointer = f"*{dtype}"
            signature = {
                "out_ptr": pointer if plan.num_splits == 1 else "*fp32", "lse_ptr": "*fp32",
                "q_ptr": pointer, "k_ptr": pointer, "v_ptr": pointer, "block_tables_ptr": "*i32",
                "seq_lens_ptr": "*i32", "query_start_loc_ptr": "*i32", "work_items_ptr": "*i32",
                "scale_log2": "fp32", "num_tokens": "i32", "num_q_heads": "i32", **{name: "i32" for name in STRIDES},
            }
            constants = {
                "HEAD_DIM": head_dim, "HEAD_DIM_PAD": plan.head_dim_pad, "BLOCK_SIZE": 16, "GROUP": plan.group,
                "GROUP_PAD": plan.group_pad, "BLOCK_Q": plan.block_q, "BLOCK_M": plan.block_m,
                "BLOCK_N": plan.block_n, "NUM_SPLITS": plan.num_splits,
                "DOT_PRECISION": "ieee" if full_precision else "tf32", "ONE_QUERY_PER_SEQ": max(query_lens) == 1,
            }
            key = (capability, dtype, plan.num_warps, tuple(sorted(constants.items())))
            if key not in compiled:
                compiled[key] = build(paged_attention_kernel, target, signature, constants, plan.num_warps)
            shared = compiled[key].metadata.shared
            bound = shared_memory_bound(plan.block_m, plan.block_n, plan.head_dim_pad, full_precision)
            print(f"{device} {what}: tiles {plan.block_m}x{plan.block_n}x{plan.head_dim_pad}, "
                  f"{plan.num_splits} splits, {plan.num_warps} warps, "
                  f"shared {shared} B (bound {bound}, limit {shared_limit})")
            if not shared <= min(bound, shared_limit):
                failures.append(f"{device} {what}: shared {shared} B, bound {bound}, limit {shared_limit}")
            if plan.num_splits > 1:
                splits_pad = next_power_of_two(plan.num_splits)
                build(
                    merge_splits_kernel, target,
                    {"out_ptr": pointer, "partial_ptr": "*fp32", "lse_ptr": "*fp32", "num_tokens": "i32"},
                    {"NUM_HEADS": num_q_heads, "HEAD_DIM": head_dim, "NUM_SPLITS": plan.num_splits,
                     "SPLITS_PAD": splits_pad,
                     "BLOCK_E": merge_block_size(num_q_heads * head_dim, plan.num_splits, False)},
                )
        store_strides = [f"stride_{a}_{b}" for a in ("key", "value") for b in "thd"]
        store_strides += [f"stride_{a}{b}" for a in "kv" for b in "bshd"]
        build(
            store_kv_kernel, target,
            {"key_ptr": "*bf16", "value_ptr": "*bf16", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
             "slot_mapping_ptr": "*i64", "num_tokens": "i32", **{name: "i32" for name in store_strides}},
            {"NUM_HEADS": 3, "HEAD_DIM": 80, "HEAD_DIM_PAD": 128, "ROW_PAD": 512, "BLOCK_SIZE": 16, "BLOCK_T": 8},
        )
        build(
            copy_blocks_kernel, target,
            {"src_ptr": "*i32", "dst_ptr": "*i32", "src_ids_ptr": "*i32", "dst_ids_ptr": "*i32",
             "words_per_block": "i32"},
            {"BLOCK": 4096},
        )
    if failures:
        raise SystemExit("tiles that do not fit:\n" + "\n".join(failures))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton bundles ptxas only in its Linux wheels")
def test_kernels_compile_for_a10_a100_and_h100_within_shared_memory() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, __file__], env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


if __name__ == "__main__":
    compile_all()
