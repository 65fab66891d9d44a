"""Unsupported shapes, dtypes and backends raise ValueError naming them, on both backends alike."""

from __future__ import annotations

import pytest
import torch

from fastswitch.kernels import paged_attention, resolve_backend, store_kv
from kernel_batches import for_backend

BACKENDS = ("torch", "triton")


def on_backend(backend: str, arguments: dict) -> dict:
    return dict(zip(arguments, for_backend(backend, *arguments.values())))


def batch(
    num_q_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    block_size: int = 8,
    cache_dtype: torch.dtype = torch.float32,
) -> dict:
    cache = torch.zeros(4, block_size, num_kv_heads, head_dim, dtype=cache_dtype)
    return {
        "q": torch.zeros(3, num_q_heads, head_dim),
        "k_cache": cache,
        "v_cache": cache,
        "block_tables": torch.tensor([[0, 1], [2, 0]], dtype=torch.int32),
        "seq_lens": torch.tensor([10, 2], dtype=torch.int32),
        "query_start_loc": torch.tensor([0, 1, 3], dtype=torch.int32),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_q_heads": 3}, "Hq=3 is not a multiple of Hkv=2"),
        ({"head_dim": 288}, "head dim 288"),
        ({"block_size": 4}, "block_size=4"),
        ({"block_size": 256}, "block_size=256"),
        ({"cache_dtype": torch.float16}, "dtypes differ"),
    ],
)
def test_unsupported_shapes_and_dtypes_are_named(backend: str, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paged_attention(**on_backend(backend, batch(**changes)), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seq_lens", [10, 20], "seq_lens\\[1\\]=20"),  # longer than its 2 blocks of 8
        ("seq_lens", [10, 1], "seq_lens\\[1\\]=1"),  # shorter than its 2 new tokens
        ("query_start_loc", [0, 1, 2], "from 0 to T=3"),
        ("query_start_loc", [0, 4, 3], "decreases at sequence 1"),
        ("block_tables", [[0, 1], [2, 9]], "valid ids are \\[0, 4\\)"),
    ],
)
def test_inconsistent_batch_layouts_are_named(backend: str, field: str, value: list, message: str) -> None:
    arguments = batch()
    arguments[field] = torch.tensor(value, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        paged_attention(**on_backend(backend, arguments), backend=backend)


def test_index_tensors_must_be_int32() -> None:
    arguments = batch()
    arguments["seq_lens"] = arguments["seq_lens"].long()
    with pytest.raises(ValueError, match="seq_lens.dtype=torch.int64 must be torch.int32"):
        paged_attention(**arguments)


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_rejects_mismatched_dtypes_before_writing(backend: str) -> None:
    cache, row, slot, int32_slot = for_backend(
        backend, torch.zeros(2, 8, 1, 16), torch.ones(1, 1, 16), torch.tensor([3]), torch.tensor([3], dtype=torch.int32)
    )
    with pytest.raises(ValueError, match="dtypes differ"):
        store_kv(row.half(), row.half(), cache, cache, slot, backend=backend)
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        store_kv(row, row, cache, cache, int32_slot, backend=backend)
    assert not cache.any()


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", cpu) == "triton"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="cannot run on cpu tensors"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        resolve_backend("cuda", cpu)


def test_public_names_stay_functions_after_the_triton_modules_load() -> None:
    # A submodule named like a public function would replace it on the package when first imported.
    import fastswitch.kernels as kernels
    import fastswitch.kernels.triton_attention
    import fastswitch.kernels.triton_block_copy
    import fastswitch.kernels.triton_store  # noqa: F401

    for name in ("paged_attention", "store_kv", "pack_blocks", "unpack_blocks"):
        assert callable(getattr(kernels, name)), name
