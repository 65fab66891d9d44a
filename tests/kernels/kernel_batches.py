"""Hypothesis strategies for kernel tests: packed batches over a fragmented paged cache.

A batch mixes prefill (nothing cached), chunked prefill (a cached prefix plus several new tokens) and
decode (one new token) sequences. Block ids are a random permutation of the pool, so every sequence
is scattered as a fragmented allocator would leave it, and K/V are strided views of a block-major
cache [num_blocks, num_layers, 2, block_size, Hkv, D], as the engine passes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 80, 96, 128, 256)
BLOCK_SIZES = (8, 16, 24, 32, 64, 128)  # 24: the kernel gathers per token, so no power of two is needed
GQA_RATIOS = (1, 2, 4, 8)
NUM_LAYERS = 2


# Where the Triton kernels run in these tests: compiled on a GPU when there is one, else on the CPU
# under the interpreter. The torch twins and the definitions they are checked against stay on the CPU.
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def for_backend(backend: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors on the device where `backend` runs (the CPU for the torch twins)."""
    device = torch.device("cpu") if backend == "torch" else KERNEL_DEVICE
    return tuple(tensor.to(device) for tensor in tensors)


@dataclass
class PagedBatch:
    q: torch.Tensor  # [T, Hq, D]
    block_tables: torch.Tensor  # [B, max_blocks] int32
    seq_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    scale: float | None
    cache: torch.Tensor  # block-major [num_blocks, num_layers, 2, block_size, Hkv, D]
    layer: int  # the layer whose K and V the batch attends over

    @property
    def k_cache(self) -> torch.Tensor:  # [num_blocks, block_size, Hkv, D], a strided view of `cache`
        return self.cache[:, self.layer, 0]

    @property
    def v_cache(self) -> torch.Tensor:
        return self.cache[:, self.layer, 1]

    def args(self) -> tuple:
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens, self.query_start_loc, self.scale)

    def on(self, device: torch.device) -> PagedBatch:
        """The same batch on another device, K and V still strided views of one block-major cache."""
        q, tables, lens, starts, cache = (
            t.to(device) for t in (self.q, self.block_tables, self.seq_lens, self.query_start_loc, self.cache)
        )
        return PagedBatch(q, tables, lens, starts, self.scale, cache, self.layer)


@st.composite
def sequence_shapes(draw: st.DrawFn, max_context: int, kinds: tuple[str, ...]) -> tuple[int, int]:
    """(num_cached, num_new) for one sequence of a kind among prefill, chunked prefill and decode."""
    kind = draw(st.sampled_from(kinds))
    if kind == "prefill":
        return 0, draw(st.integers(1, 40))
    if kind == "chunked":
        return draw(st.integers(1, max_context)), draw(st.integers(2, 20))
    return draw(st.integers(0, max_context)), 1


@st.composite
def paged_batches(
    draw: st.DrawFn,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    head_dims: tuple[int, ...] = HEAD_DIMS,
    block_sizes: tuple[int, ...] = BLOCK_SIZES,
    max_seqs: int = 4,
    max_context: int = 100,
    kinds: tuple[str, ...] = ("prefill", "chunked", "decode"),
) -> PagedBatch:
    dtype = draw(st.sampled_from(dtypes))
    head_dim = draw(st.sampled_from(head_dims))
    block_size = draw(st.sampled_from(block_sizes))
    num_kv_heads = draw(st.integers(1, 2))
    num_q_heads = num_kv_heads * draw(st.sampled_from(GQA_RATIOS))
    shapes = draw(st.lists(sequence_shapes(max_context, kinds), min_size=1, max_size=max_seqs))
    scale = draw(st.sampled_from((None, 0.05, 0.3)))
    seed = draw(st.integers(0, 2**31 - 1))

    seq_lens = [cached + new for cached, new in shapes]
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + draw(st.integers(1, 4))  # spare blocks the batch must not read
    block_ids = draw(st.permutations(range(num_blocks)))
    max_blocks = max(blocks_per_seq) + draw(st.integers(0, 2))  # padded tables, as the engine builds them
    tables, next_id = [], 0
    for count in blocks_per_seq:
        tables.append(list(block_ids[next_id : next_id + count]) + [0] * (max_blocks - count))
        next_id += count

    generator = torch.Generator().manual_seed(seed)
    cache = torch.randn((num_blocks, NUM_LAYERS, 2, block_size, num_kv_heads, head_dim), generator=generator).to(dtype)
    layer = draw(st.integers(0, NUM_LAYERS - 1))
    starts = [0]
    for _, new in shapes:
        starts.append(starts[-1] + new)
    q = torch.randn((starts[-1], num_q_heads, head_dim), generator=generator).to(dtype)
    return PagedBatch(
        q=q,
        block_tables=torch.tensor(tables, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        scale=scale,
        cache=cache,
        layer=layer,
    )


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """As tight as the output dtype allows: the backends differ by summation order and one final rounding."""
    return {
        torch.float32: {"atol": 1e-5, "rtol": 1e-5},
        torch.float16: {"atol": 1e-3, "rtol": 1e-3},
        torch.bfloat16: {"atol": 1e-2, "rtol": 1.6e-2},
    }[dtype]
