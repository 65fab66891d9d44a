"""TensorParallelCopyEngine: the engine's CopyEngine when every rank holds a KV shard.

A swap job is the same on every rank (same blocks, each rank's own heads): rank 0 runs it on its own
`TorchCopyEngine` at once, and the job goes to each worker with the next step message, where that
rank's own copy engine runs it, so a block group still moves in one copy call per rank. The handle
is rank 0's: when it reports the copy done, the workers are told to wait for theirs before their
next forward, which is the first moment anything can depend on it (a worker handles its messages in
order). Estimates come from rank 0's timed copies: the ranks copy equal shards over equal links.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastswitch.cache.copy_engine import CopyHandle, CopyJob, TorchCopyEngine

if TYPE_CHECKING:
    from fastswitch.parallel.workers import WorkerGroup


class _RankZeroHandle:
    def __init__(self, handle: CopyHandle, job_id: int, workers: WorkerGroup) -> None:
        self.handle = handle
        self.job_id = job_id
        self.workers = workers
        self._reported = False

    def done(self) -> bool:
        if not self.handle.done():
            return False
        self._report()
        return True

    def wait(self) -> None:
        self.handle.wait()
        self._report()

    def _report(self) -> None:
        if not self._reported:
            self._reported = True
            self.workers.completed(self.job_id)


class TensorParallelCopyEngine:
    def __init__(self, local: TorchCopyEngine, workers: WorkerGroup) -> None:
        self.local = local
        self.workers = workers

    def submit(self, job: CopyJob) -> CopyHandle:
        job_id = self.workers.new_job(job)
        return _RankZeroHandle(self.local.submit(job), job_id, self.workers)

    def estimated_seconds(self, direction: str, num_bytes: int, num_calls: int) -> float | None:
        return self.local.estimated_seconds(direction, num_bytes, num_calls)

    def close(self) -> None:
        """Rank 0's copies, then the workers' (each finishes its own before it exits)."""
        self.local.close()
        self.workers.close()
