"""Virtual time: the simulator's clock and the host-link queues that copies wait in.

The clock only moves forward, by the cost model's step and copy times, never by the wall clock, so a
simulated run is a pure function of its inputs (identical seeds give identical metrics).

A GPU has a copy (DMA) engine per direction and PCIe is full duplex, so a swap-in (host to device)
and a swap-out (device to host) proceed side by side, while copies of one direction run one after
another in submission order. Copies use no SMs, so they overlap the forward pass; only the engine's
choice to wait for them (synchronous swapping) puts them on the critical path, and the host: a copy
thread issuing calls beside the stepping thread slows it by a share of its issue time (Python's GIL),
which `HostContention` holds until the executor charges it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastswitch.sim.cost_model import CostModel

DIRECTIONS = ("h2d", "d2h")


class VirtualClock:
    """Seconds since the start of a simulated run. Callable, so it can stand in for time.monotonic."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    @property
    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot advance the clock by {seconds} s: time only moves forward")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Moves to `when` if it lies ahead; a time in the past leaves the clock where it is."""
        self._now = max(self._now, float(when))
        return self._now


@dataclass(frozen=True)
class CopyRecord:
    direction: str
    num_bytes: int
    num_calls: int
    submitted_at: float
    started_at: float  # later than submitted_at when earlier copies of the same direction were queued
    finished_at: float


@dataclass
class LinkStats:
    copies: int = 0
    calls: int = 0
    bytes: int = 0
    busy_time: float = 0.0


@dataclass
class CopyQueues:
    """One FIFO queue per direction of the host link, priced by the cost model."""

    cost_model: CostModel
    busy_until: dict[str, float] = field(default_factory=lambda: {d: 0.0 for d in DIRECTIONS})
    stats: dict[str, LinkStats] = field(default_factory=lambda: {d: LinkStats() for d in DIRECTIONS})

    def submit(self, direction: str, num_bytes: int, num_calls: int, now: float) -> CopyRecord:
        """Queues a copy submitted at `now`; it starts when the earlier copies of its direction are done."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
        duration = self.cost_model.copy_time(num_bytes, num_calls, direction)
        start = max(now, self.busy_until[direction])
        finish = start + duration
        self.busy_until[direction] = finish
        s = self.stats[direction]
        s.copies += 1
        s.calls += num_calls
        s.bytes += num_bytes
        s.busy_time += duration
        return CopyRecord(direction, num_bytes, num_calls, now, start, finish)

    def idle_at(self) -> float:
        """When every queued copy, both directions, has finished."""
        return max(self.busy_until.values())


class HostContention:
    """Host time the stepping thread owes to copy threads that ran beside it (the GIL), per copy.

    A copy that the stepping thread then waits for owes nothing (the thread was idle meanwhile):
    `forgive` drops its share. `take` hands the executor everything still owed and clears it."""

    def __init__(self) -> None:
        self._owed: dict[int, float] = {}
        self.total_charged = 0.0

    def add(self, key: int, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds={seconds} must be >= 0")
        if seconds > 0:
            self._owed[key] = self._owed.get(key, 0.0) + seconds

    def forgive(self, key: int) -> None:
        self._owed.pop(key, None)

    def take(self) -> float:
        owed = sum(self._owed.values())
        self._owed.clear()
        self.total_charged += owed
        return owed
