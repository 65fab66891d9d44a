"""AttentionBatch: one step's packed sequences as paged attention reads them.

The new tokens of B sequences run as one packed batch of T tokens; sequence b's queries are tokens
query_start_loc[b] .. query_start_loc[b + 1] - 1, and it holds seq_lens[b] tokens in all (cached +
new), its KV in the cache blocks of row b of block_tables. The kernels read the tensors on the
device; the host lists say the same and spare a device-to-host read per call (on a GPU, a
synchronisation): the torch twin slices sequences with them, the Triton launcher sizes its grid.

The ModelRunner builds one per step (`from_host`: it has the lists already) and every layer of the
step passes it to `paged_attention`. A caller that has only the tensors passes none, and the check
reads it (`fastswitch.kernels.checks.check_paged_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AttentionBatch:
    query_start_loc: list[int]  # [B + 1], cumulative new-token counts, from 0 to T
    seq_lens: list[int]  # [B], cached + new tokens of each sequence
    block_tables: torch.Tensor  # [B, max_blocks] int32 on the device, each row a sequence's block ids
    query_start_loc_tensor: torch.Tensor  # query_start_loc as int32 on the device
    seq_lens_tensor: torch.Tensor  # seq_lens as int32 on the device
    # The torch twin's call plans over these block tables, by (block size, GQA group): built at a
    # step's first layer, read by the others. The batch and its tables stay as they are for the step.
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_host(cls, query_start_loc: list[int], seq_lens: list[int], block_tables: torch.Tensor) -> AttentionBatch:
        """The batch whose lists the caller holds: copies them next to block_tables."""
        device = block_tables.device
        return cls(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_tables=block_tables,
            query_start_loc_tensor=torch.tensor(query_start_loc, dtype=torch.int32).to(device),
            seq_lens_tensor=torch.tensor(seq_lens, dtype=torch.int32).to(device),
        )

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def query_len(self, b: int) -> int:
        """New tokens of sequence b in this step."""
        return self.query_start_loc[b + 1] - self.query_start_loc[b]

    @property
    def query_lens(self) -> list[int]:
        return [self.query_len(b) for b in range(self.num_seqs)]
