"""The virtual-clock executor: the engine's Executor seam, with forward passes priced by the cost model.

Each `execute` moves the virtual clock forward by the roofline time of the batch, built from every
chunk's (new tokens, cached tokens) exactly as the scheduler made it. Without a backing executor no
model runs and each sampled position gets `token_id` (requests of a simulated workload ignore EOS and
stop at max_tokens, so the token's value never matters). With a backing executor (the real
`ModelExecutor`), the model really runs and samples, but time still comes from the cost model: a
real run on virtual time, which must make exactly the decisions of the simulated run.

Host time is charged before the forward: the scheduler's time for the step (`CostModel.host_step_time`)
and whatever the stepping thread owes to copy threads that ran beside it (`HostContention`). A profile
with `step_jitter` multiplies the step's host and forward time by one of its factors, drawn by a
generator seeded with `seed`.
"""

from __future__ import annotations

import random

from fastswitch.sched.request import ScheduledChunk
from fastswitch.sim.clock import HostContention, VirtualClock
from fastswitch.sim.cost_model import CostModel

SIMULATED_TOKEN_ID = 0


class VirtualExecutor:
    def __init__(self, cost_model: CostModel, clock: VirtualClock, backing=None, token_id: int = SIMULATED_TOKEN_ID,
                 contention: HostContention | None = None, seed: int = 0) -> None:  # fmt: skip
        """backing: an engine Executor (e.g. fastswitch.executor.ModelExecutor) that really runs the
        batch; its tokens are returned and its own clock is ignored. contention: the copy engine's
        account of host time owed by the stepping thread (None: nothing owed)."""
        self.cost_model = cost_model
        self.clock = clock
        self.backing = backing
        self.token_id = token_id
        self.contention = contention
        self._jitter = random.Random(seed)
        self.busy_time = 0.0  # virtual seconds spent in forward passes
        self.host_time = 0.0  # virtual seconds of host work charged before them (scheduler, contention)
        self.num_forwards = 0

    def now(self) -> float:
        return self.clock.now

    def execute(self, chunks: list[ScheduledChunk]) -> list[int | None]:
        host = self.cost_model.host_step_time(len(chunks))
        if self.contention is not None:
            host += self.contention.take()
        duration = self.cost_model.forward_time([(len(c.token_ids), c.num_cached) for c in chunks])
        factors = self.cost_model.hardware.step_jitter
        if factors is not None:
            factor = self._jitter.choice(factors)
            host, duration = host * factor, duration * factor
        self.clock.advance(host)
        self.host_time += host
        if self.backing is not None:
            sampled = self.backing.execute(chunks)
        else:
            sampled = [self.token_id if c.sample else None for c in chunks]
        self.clock.advance(duration)
        self.busy_time += duration
        self.num_forwards += 1
        return sampled

    def release(self, request_id: str) -> None:
        if self.backing is not None:
            self.backing.release(request_id)
