"""Partition: which slice of a model one tensor-parallel rank holds, and the all-reduce that joins them.

Megatron-style: attention heads and the MLP's intermediate rows are split evenly across ranks
(column-parallel q/k/v and gate/up, row-parallel o and down, one all-reduce after each of the last
two). KV heads are split too when there are at least as many as ranks; with fewer, each KV head is
replicated on the ranks whose query heads use it. Embeddings, norms and the LM head are replicated.

A size-1 partition is the whole model and never communicates, so the single-device forward runs
the same code with no cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def check_tensor_parallel_size(size: int, num_heads: int, num_kv_heads: int, intermediate_size: int) -> None:
    """ValueError naming the value and the limit when a model cannot be split over size ranks."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"tensor_parallel_size={size!r} must be a positive integer")
    if num_heads % size:
        raise ValueError(f"tensor_parallel_size={size} does not divide num_attention_heads={num_heads}")
    if num_kv_heads % size and size % num_kv_heads:
        raise ValueError(
            f"tensor_parallel_size={size} neither divides nor is a multiple of num_key_value_heads={num_kv_heads}"
        )
    if intermediate_size % size:
        raise ValueError(f"tensor_parallel_size={size} does not divide intermediate_size={intermediate_size}")


@dataclass(frozen=True)
class Partition:
    rank: int = 0
    size: int = 1
    group: ProcessGroup | None = None  # joins the ranks (None for size 1)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank={self.rank} is outside 0..{self.size - 1}")
        if self.size > 1 and self.group is None:
            raise ValueError(f"a partition over {self.size} ranks needs a process group")

    def even_slice(self, total: int) -> tuple[int, int]:
        """This rank's [start, stop) of total items split evenly (total divisible by size)."""
        share = total // self.size
        return self.rank * share, (self.rank + 1) * share

    def kv_head_slice(self, num_kv_heads: int) -> tuple[int, int]:
        """This rank's KV heads: an even share, or the one head its query heads use when replicated."""
        if num_kv_heads >= self.size:
            return self.even_slice(num_kv_heads)
        head = self.rank // (self.size // num_kv_heads)
        return head, head + 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums x over the ranks in place (x must be contiguous); the identity for one rank."""
        if self.size > 1 and self.group is not None:  # a group is there whenever size > 1 (__post_init__)
            self.group.allreduce([x]).wait()
        return x


WHOLE_MODEL = Partition()
