"""TensorParallelExecutor: the engine's Executor when the model is split over ranks.

Each `execute` sends the step (the chunks, and the swap copies issued since the last step) to every
worker in one message, then has rank 0's own `ModelExecutor` run its shard of the forward, which
meets the workers' shards in the all-reduces; rank 0 alone computes the logits (the LM head is
replicated) and samples, once. Clock and per-request state are rank 0's executor's.

It wraps rather than extends that executor. Its `fork` (SamplingParams.n > 1) copies the prompt's KV
blocks on rank 0's shard at once and queues the same block copies for every worker: they make them at
the start of the next step, before that step's swap copies and forward, the first that can read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastswitch.parallel.messages import StepChunk
from fastswitch.sched.request import ScheduledChunk

if TYPE_CHECKING:
    from fastswitch.executor import ModelExecutor
    from fastswitch.parallel.workers import WorkerGroup


class TensorParallelExecutor:
    def __init__(self, rank0: ModelExecutor, workers: WorkerGroup) -> None:
        self.rank0 = rank0
        self.workers = workers

    def now(self) -> float:
        return self.rank0.now()

    def execute(self, chunks: list[ScheduledChunk]) -> list[int | None]:
        self.workers.send_step([StepChunk(c.token_ids, c.num_cached, c.block_table) for c in chunks])
        try:
            return self.rank0.execute(chunks)
        except RuntimeError as error:
            # The forward failed (a collective, most likely, when a worker died): the ranks are out of
            # step for good, so the group is closed and the error names the worker if one died.
            raise self.workers.collective_failed(error) from error

    def release(self, request_id: str) -> None:
        self.rank0.release(request_id)

    def fork(self, chunk_index: int, forks: list, src_blocks: list[int], dst_blocks: list[int]) -> list[int]:
        self.workers.copy_blocks(src_blocks, dst_blocks)
        return self.rank0.fork(chunk_index, forks, src_blocks, dst_blocks)
