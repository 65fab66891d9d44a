"""How a paged-attention call is cut into programs: tile sizes, work items and flash-decoding splits.

Pure Python, no Triton, so the choices can be tested (and read) on their own. A program handles one
work item (a sequence and a tile of its queries) for one KV head and one split of the KV range; the
query heads sharing that KV head are folded into the tile's rows, so a decode step of a GQA model
still gives tl.dot a full tile.

Tiles are sized to the device's shared memory per program (99 KB on an A10, 163 KB on an A100, 227 KB
on an H100): `shared_memory_bound` is an upper bound on what the compiled kernel stages there, and the
plan halves its key step, then its query tile, until the bound fits. The compile check
(tests/kernels/test_gpu_compile.py) holds the bound to what Triton really allocates on each target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_DOT_SIZE = 16  # tl.dot needs every dimension >= 16
PREFILL_ROWS = 64  # rows (query tokens x grouped heads) of a prefill tile on a GPU
MIN_KEYS_PER_SPLIT = 512  # below this a split costs more in merging than it gains in parallelism
MAX_SPLITS = 32
PROGRAMS_PER_SM = 4  # enough resident programs to hide memory latency
FP32_BYTES = 4  # tiles are staged in fp32 whatever the cache dtype: the kernel converts on load


def next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class AttentionPlan:
    group: int  # query heads per KV head
    group_pad: int  # group rounded up to a power of two: the row pattern of a tile
    block_q: int  # query tokens per tile
    block_m: int  # rows of a tile, >= 16
    block_n: int  # keys per inner iteration
    head_dim_pad: int  # head dim rounded up to a power of two >= 16; masked beyond head_dim
    num_splits: int  # KV range splits per tile (flash-decoding), merged by log-sum-exp
    work_items: list[tuple[int, int]]  # (sequence, first query token of the tile)
    num_warps: int


def choose_num_splits(num_programs: int, max_kv_len: int, num_sms: int) -> int:
    """Split the KV range only when the batch alone leaves the device's SMs idle, and only so far
    that each split still reads at least MIN_KEYS_PER_SPLIT keys."""
    wanted = -(-PROGRAMS_PER_SM * num_sms // max(1, num_programs))
    affordable = max(1, max_kv_len // MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, affordable, MAX_SPLITS))


def merge_block_size(row_size: int, num_splits: int, interpreting: bool) -> int:
    """Elements of a token's [Hq * D] output row that one merge program combines over the splits.
    The interpreter merges a whole row per program; a GPU keeps an [S, BLOCK_E] tile of about 4096
    values in registers."""
    if interpreting:
        return next_power_of_two(row_size)
    return max(128, 4096 // next_power_of_two(num_splits))


def shared_memory_bound(block_m: int, block_n: int, head_dim_pad: int, full_precision: bool) -> int:
    """Bytes of shared memory a program of these tiles needs at most: the K and V tiles, the
    probabilities, and a row scratch for the softmax reductions; with full-precision (ieee) products
    the query tile too. Measured, not derived: see the module docstring."""
    values = 2 * block_n * head_dim_pad + block_m * block_n + 2 * max(block_m, block_n)
    if full_precision:
        values += block_m * head_dim_pad
    return FP32_BYTES * values


def plan_attention(
    query_lens: Sequence[int],
    max_seq_len: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    num_sms: int,
    num_splits: int | None = None,
    *,
    shared_memory: int | None = None,
    full_precision: bool = False,
) -> AttentionPlan:
    """Pick tile sizes and work items for a batch of sequences with query_lens new tokens each, the
    longest max_seq_len tokens long (cached + new).

    num_sms is 1 under the interpreter (programs run serially); shared_memory is the device's bytes of
    shared memory per program (None: no limit, as under the interpreter); full_precision: the kernel
    multiplies in ieee fp32 (fp32 caches), which stages the query tile in shared memory as well.
    """
    group = num_q_heads // num_kv_heads
    group_pad = next_power_of_two(group)
    max_query_len = max(query_lens, default=0)
    head_dim_pad = max(MIN_DOT_SIZE, next_power_of_two(head_dim))
    # Decode (one query per sequence) keeps one token per tile; prefill stacks tokens up to
    # PREFILL_ROWS rows, half as many for 256-wide heads, so that the fp32 accumulator [rows, D] a
    # program keeps in registers is no larger than for 128-wide heads.
    prefill_rows = PREFILL_ROWS // 2 if head_dim_pad >= 256 else PREFILL_ROWS
    block_q = min(next_power_of_two(max(1, max_query_len)), max(1, prefill_rows // group_pad))
    # Keep a [block_n, head_dim] K and V tile in registers: fewer keys per step for wide heads.
    block_n = 32 if head_dim_pad >= 256 else 64
    if shared_memory is not None:
        block_q, block_n = _fit_shared_memory(block_q, block_n, group_pad, head_dim_pad, full_precision, shared_memory)
    block_m = max(MIN_DOT_SIZE, block_q * group_pad)
    work_items = [(b, start) for b, query_len in enumerate(query_lens) for start in range(0, query_len, block_q)]
    if num_splits is None:
        num_splits = choose_num_splits(len(work_items) * num_kv_heads, max_seq_len, num_sms)
    if num_splits < 1:
        raise ValueError(f"num_splits={num_splits} must be at least 1")
    num_warps = 8 if block_m * head_dim_pad >= 128 * 128 else 4
    return AttentionPlan(
        group=group,
        group_pad=group_pad,
        block_q=block_q,
        block_m=block_m,
        block_n=block_n,
        head_dim_pad=head_dim_pad,
        num_splits=num_splits,
        work_items=work_items,
        num_warps=num_warps,
    )


def _fit_shared_memory(
    block_q: int, block_n: int, group_pad: int, head_dim_pad: int, full_precision: bool, shared_memory: int
) -> tuple[int, int]:
    """Halve the key step, then the query tile, until the tiles fit. The smallest tiles (16 x 16 x
    256) need at most about 50 KB, which every GPU the kernel targets has; on a device with less the
    launch fails with Triton's OutOfResources error rather than computing anything wrong."""

    def fits(q: int, n: int) -> bool:
        return shared_memory_bound(max(MIN_DOT_SIZE, q * group_pad), n, head_dim_pad, full_precision) <= shared_memory

    while not fits(block_q, block_n):
        if block_n > MIN_DOT_SIZE:
            block_n //= 2
        elif block_q > 1:
            block_q //= 2
        else:
            break
    return block_q, block_n
