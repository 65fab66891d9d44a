"""ModelRunner: one forward over a list of chunks (prefills, prefill pieces, decodes), packed together.

It takes the scheduler's chunks as they are (`fastswitch.sched.ScheduledChunk`, from the engine's
executor) or, on a tensor-parallel worker, the `fastswitch.parallel.messages.StepChunk`s of rank 0's
message: anything with the fields of `Chunk`. A chunk is the new tokens of one sequence plus where its KV lives:
`num_cached` tokens are already in the cache, and the chunk's tokens go to positions num_cached ..
num_cached + len - 1 of its block table. The runner packs the chunks into the inputs of the Llama
forward (token ids, positions, the cache slot of each new token, and the `AttentionBatch` that every
layer hands `paged_attention`), runs it, and returns the logits of each chunk's last token only: the
lm_head over every prefill token would cost a vocab-sized matmul per token for nothing.
`forward_every_token` adds every token's logits for the chunks that ask (prompt logprobs).

Sizing helpers for the KV cache (from the model's config) live here too, so that whoever builds the
cache needs no knowledge of the model beyond the runner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from fastswitch.kernels import AttentionBatch
from fastswitch.models.cpu_allocator import keep_freed_memory
from fastswitch.models.llama import LlamaForServing

if TYPE_CHECKING:
    from fastswitch.cache.kv_cache import KVCache

# On CPU the pool is zero-filled host memory and runs are tests, demos and benchmarks: 1 GiB holds
# ~23k tokens of SmolLM2-135M in fp32, which is plenty, without taking a shared machine's RAM.
CPU_KV_CACHE_BUDGET_BYTES = 1 << 30
# On a GPU, the share of the memory left free after loading the weights that the pool may take.
GPU_KV_CACHE_FRACTION = 0.8


class Chunk(Protocol):
    """What the runner reads of a chunk (read-only, so frozen records fit too)."""

    @property
    def token_ids(self) -> Sequence[int]:
        """The new tokens of this sequence in this step."""

    @property
    def num_cached(self) -> int:
        """Tokens of the sequence already in the cache."""

    @property
    def block_table(self) -> Sequence[int]:
        """The sequence's block ids, covering at least num_cached + len(token_ids) tokens."""


@dataclass(frozen=True)
class KVCacheSpec:
    """What the model needs from a KV cache: the KVCache constructor's model-dependent arguments."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def block_bytes(self, block_size: int) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * block_size * self.num_kv_heads * self.head_dim * element


def kv_cache_spec(model: LlamaForServing) -> KVCacheSpec:
    return KVCacheSpec(model.num_layers, model.num_kv_heads, model.head_dim, model.dtype)


def default_num_blocks(
    spec: KVCacheSpec, block_size: int, max_num_seqs: int, max_model_len: int, device: torch.device
) -> int:
    """Blocks for max_num_seqs sequences of max_model_len tokens, capped by the device's memory budget."""
    wanted = max_num_seqs * math.ceil(max_model_len / block_size)
    if device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * GPU_KV_CACHE_FRACTION)
    else:
        budget = CPU_KV_CACHE_BUDGET_BYTES
    affordable = budget // spec.block_bytes(block_size)
    if affordable < 1:
        raise ValueError(
            f"one KV block needs {spec.block_bytes(block_size)} bytes but the budget on {device} is {budget} bytes"
        )
    return min(wanted, affordable)


class ModelRunner:
    def __init__(self, model: LlamaForServing, kv_cache: KVCache, backend: str = "auto") -> None:
        expected = kv_cache_spec(model)
        actual = KVCacheSpec(kv_cache.num_layers, kv_cache.num_kv_heads, kv_cache.head_dim, kv_cache.data.dtype)
        if actual != expected:
            raise ValueError(f"KV cache {actual} does not fit the model, which needs {expected}")
        if kv_cache.data.device != model.device:
            raise ValueError(f"KV cache is on {kv_cache.data.device} but the model is on {model.device}")
        self.model = model
        self.kv_cache = kv_cache
        self.backend = backend
        if model.device.type == "cpu":
            keep_freed_memory()  # a step's large temporaries are reused, not faulted in again (see there)

    def _check_chunks(self, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            raise ValueError("forward needs at least one chunk")
        block_size, num_blocks, vocab = self.kv_cache.block_size, self.kv_cache.num_blocks, self.model.vocab_size
        for index, chunk in enumerate(chunks):
            if not chunk.token_ids:
                raise ValueError(f"chunk {index} has no new tokens")
            if chunk.num_cached < 0:
                raise ValueError(f"chunk {index} has num_cached={chunk.num_cached} < 0")
            end = chunk.num_cached + len(chunk.token_ids)
            if len(chunk.block_table) * block_size < end:
                raise ValueError(
                    f"chunk {index} needs {math.ceil(end / block_size)} blocks for {end} tokens "
                    f"but its block table has {len(chunk.block_table)}"
                )
            if min(chunk.block_table) < 0 or max(chunk.block_table) >= num_blocks:
                raise ValueError(f"chunk {index} has block ids outside 0..{num_blocks - 1}")
            if min(chunk.token_ids) < 0 or max(chunk.token_ids) >= vocab:
                raise ValueError(f"chunk {index} has token ids outside the vocabulary 0..{vocab - 1}")

    def prepare(self, chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionBatch]:
        """Packed inputs of one step: token ids [T], positions [T], slot mapping [T] and the attention batch."""
        self._check_chunks(chunks)
        block_size = self.kv_cache.block_size
        query_lens = [len(c.token_ids) for c in chunks]
        seq_ends = [c.num_cached + n for c, n in zip(chunks, query_lens)]
        # Only the blocks that hold tokens: a table may reserve more, attention never needs them.
        tables = [list(c.block_table[: math.ceil(end / block_size)]) for c, end in zip(chunks, seq_ends)]
        max_blocks = max(len(t) for t in tables)
        block_tables = torch.zeros((len(chunks), max_blocks), dtype=torch.int32)
        for row, table in enumerate(tables):
            block_tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
        positions = torch.cat([torch.arange(c.num_cached, end) for c, end in zip(chunks, seq_ends)])
        # Each token's block is found from its own sequence's table row: gather by (row, position // bs).
        rows = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(query_lens))
        slot_mapping = block_tables[rows, positions // block_size].long() * block_size + positions % block_size
        starts = [0]
        for n in query_lens:
            starts.append(starts[-1] + n)
        input_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)

        device = self.model.device
        # _check_chunks has checked every block id against the cache: the promise a batch's host
        # lists ask for (paged_attention then reads nothing back from the device).
        batch = AttentionBatch.from_host(starts, seq_ends, block_tables.to(device))
        return input_ids.to(device), positions.to(device), slot_mapping.to(device), batch

    def run(self, chunks: Sequence[Chunk]) -> tuple[torch.Tensor, AttentionBatch]:
        """The forward of one step: hidden states [T, hidden] after the final norm, and the batch
        (its query_start_loc says which rows are whose). The chunks' K/V land in the cache."""
        input_ids, positions, slot_mapping, batch = self.prepare(chunks)
        hidden = self.model(input_ids, positions, slot_mapping, batch, self.kv_cache, self.backend)
        return hidden, batch

    @torch.inference_mode()
    def forward(self, chunks: Sequence[Chunk]) -> torch.Tensor:
        """Run every chunk's new tokens; return fp32 logits [len(chunks), vocab] of each chunk's last token."""
        return self.forward_every_token(chunks, ())[0]

    @torch.inference_mode()
    def forward_every_token(
        self, chunks: Sequence[Chunk], every_token: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """`forward`, plus the fp32 logits [len(token_ids), vocab] of every token of the chunks whose
        indices are in every_token (what prompt logprobs need); the lm_head runs on those rows only."""
        hidden, batch = self.run(chunks)  # [T, hidden]
        starts = batch.query_start_loc
        rows = [end - 1 for end in starts[1:]]
        spans: dict[int, tuple[int, int]] = {}
        for index in sorted(set(every_token)):
            if not 0 <= index < len(chunks):
                raise ValueError(f"every_token index {index} is outside 0..{len(chunks) - 1}")
            spans[index] = (len(rows), len(rows) + starts[index + 1] - starts[index])
            rows.extend(range(starts[index], starts[index + 1]))
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=hidden.device)]).float()
        return logits[: len(chunks)], {index: logits[a:b] for index, (a, b) in spans.items()}
