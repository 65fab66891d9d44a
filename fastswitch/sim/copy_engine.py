"""The virtual-clock copy engine: the swap manager's CopyEngine seam, priced instead of performed.

The swap manager (fastswitch/cache) decides which blocks move and hands a `CopyJob` here exactly as
it would hand it to `TorchCopyEngine`; the job's copy calls and bytes (one call per block group, or
one per block per layer per K/V for the vLLM preset) go into the host-link queue of their direction.
No bytes move: a handle is done once the virtual clock has passed the job's finish time.

`submit` always returns at once: the copy then overlaps whatever the executor runs next on the
clock. A synchronous swap is the swap manager waiting on the handle (it does so for every swap when
`async_swap` is off, and for small ones by the paper's adaptive rule); `wait` moves the clock to the
copy's end, which the swap manager books as executor idle time. `estimated_seconds` is the cost
model's own price, so the adaptive rule decides on virtual time exactly as the copies then take.

Host costs: each job's calls take `copy_call_cpu_us` of CPU to issue (part of its time on the queue),
and a share `copy_thread_contention` of that issue time is owed by the stepping thread (GIL) unless
the job is waited for; the executor charges what is owed at its next step.

With a backing engine (the real `TorchCopyEngine`) the bytes do move, at once, while completion is
still reported on the virtual clock: a real run on virtual time. Moving them early is safe because
the swap manager touches neither end of a copy before its handle says done.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastswitch.cache.copy_engine import CopyJob
from fastswitch.sim.clock import CopyQueues, CopyRecord, HostContention, VirtualClock

_DIRECTION = {"out": "d2h", "in": "h2d"}


@dataclass(frozen=True)
class VirtualCopyHandle:
    record: CopyRecord
    clock: VirtualClock
    contention: HostContention | None = None

    def done(self) -> bool:
        return self.clock.now >= self.record.finished_at

    def wait(self) -> None:
        """Blocking on a copy is the GPU idling until it lands: the clock jumps to its end; the stepping
        thread, idle meanwhile, owes no contention for it."""
        self.clock.advance_to(self.record.finished_at)
        if self.contention is not None:
            self.contention.forgive(id(self))


class VirtualCopyEngine:
    def __init__(self, queues: CopyQueues, clock: VirtualClock, backing=None,
                 contention: HostContention | None = None) -> None:  # fmt: skip
        """contention: where issue-time contention with the stepping thread is owed (None: not charged)."""
        self.queues = queues
        self.clock = clock
        self.backing = backing
        self.contention = contention

    def submit(self, job: CopyJob) -> VirtualCopyHandle:
        if job.direction not in _DIRECTION:
            raise ValueError(f"job direction={job.direction!r} is not one of {tuple(_DIRECTION)}")
        if self.backing is not None:
            self.backing.submit(job).wait()
        record = self.queues.submit(_DIRECTION[job.direction], job.num_bytes, job.num_calls, self.clock.now)
        handle = VirtualCopyHandle(record, self.clock, self.contention)
        if self.contention is not None:
            hw, cost = self.queues.cost_model.hardware, self.queues.cost_model
            self.contention.add(id(handle), hw.copy_thread_contention * cost.copy_issue_time(job.num_calls))
        return handle

    def estimated_seconds(self, direction: str, num_bytes: int, num_calls: int) -> float:
        if direction not in _DIRECTION:
            raise ValueError(f"direction={direction!r} is not one of {tuple(_DIRECTION)}")
        return self.queues.cost_model.copy_time(num_bytes, num_calls, _DIRECTION[direction])

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
