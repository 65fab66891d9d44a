"""The virtual-clock copy engine: the swap manager's CopyEngine seam, priced instead of performed.

The swap manager (fastswitch/cache) decides which blocks move and hands a `CopyJob` here exactly as
it would hand it to `TorchCopyEngine`; the job's copy calls and bytes (one call per block group, or
one per block per layer per K/V for the vLLM preset) go into the host-link queue of their direction.
No bytes move: a handle is done once the virtual clock has passed the job's finish time.

Synchronous mode stands for the GPU waiting on the copy: `submit` moves the clock to the job's end,
as the real synchronous engine returns only once its copies are done. Asynchronous mode returns at
once, and the copy overlaps whatever the executor runs next on the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastswitch.cache.copy_engine import CopyJob
from fastswitch.sim.clock import CopyQueues, CopyRecord, VirtualClock

_DIRECTION = {"out": "d2h", "in": "h2d"}


@dataclass(frozen=True)
class VirtualCopyHandle:
    record: CopyRecord
    clock: VirtualClock

    def done(self) -> bool:
        return self.clock.now >= self.record.finished_at

    def wait(self) -> None:
        """Blocking on a copy is the GPU idling until it lands: the clock jumps to its end."""
        self.clock.advance_to(self.record.finished_at)


class VirtualCopyEngine:
    def __init__(self, queues: CopyQueues, clock: VirtualClock, asynchronous: bool = True) -> None:
        self.queues = queues
        self.clock = clock
        self.asynchronous = asynchronous

    def submit(self, job: CopyJob) -> VirtualCopyHandle:
        if job.direction not in _DIRECTION:
            raise ValueError(f"job direction={job.direction!r} is not one of {tuple(_DIRECTION)}")
        record = self.queues.submit(_DIRECTION[job.direction], job.num_bytes, job.num_calls, self.clock.now)
        handle = VirtualCopyHandle(record, self.clock)
        if not self.asynchronous:
            handle.wait()
        return handle

    def close(self) -> None:
        """Nothing runs in the background, so there is nothing to join."""
