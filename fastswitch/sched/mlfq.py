"""FastServe's skip-join multi-level feedback queue (Wu et al. 2023, "Fast Distributed Inference
Serving for Large Language Models", arXiv 2305.05920), written as a plug-in: it uses only the
public `SchedulingPolicy` protocol and the request fields that sched/policies.py lists.

MLFQ approximates shortest-remaining-time-first without knowing output lengths. Queues 0..K-1 hold
the requests, queue 0 the most urgent; queue i has a quantum of `base_quantum * quantum_ratio**i`
iterations. The policy ranks queue 0 first, and within a queue by when a request entered it.

- Skip-join: the input length is known at arrival, and it sets the first iteration's (the
  prefill's) time. A new request joins the highest queue whose quantum covers that estimate, so a
  long prompt skips the queues it would leave at once, instead of being demoted through them.
- Demotion: a request that has used its queue's quantum moves to the next queue, behind the
  requests already there.
- Starvation: a request that has not run for `starve_limit` steps is promoted to queue 0.
- Preemptive: a new short request ranks ahead of a demoted long one, so it runs first and, when
  device memory is short, evicts it (swap or recompute, as the engine is configured).

Time is counted in iterations (engine steps), not seconds, so the policy decides the same way on a
GPU, a CPU and the simulator. An iteration in which a request computes d tokens costs it
`1 + (d - 1) / prefill_tokens_per_iteration` iterations: a decode step costs one, and a prefill
costs one more for every `prefill_tokens_per_iteration` prompt tokens. The paper profiles the first
iteration's time against input length; the default 128 prompt tokens per decode step is the
roofline ratio for Llama-3-8B on an A10 (a decode step reads 16 GB of weights at 600 GB/s, ~27 ms,
in which prefill at 0.6 of 125 TFLOPS computes ~127 tokens of 16 GFLOP each). A request's service
is read from its progress (`num_computed_tokens`) at each `on_step`, so chunked prefills and
recomputes after a preemption are charged as the iterations they take.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from fastswitch.sched.policies import register_policy
from fastswitch.sched.request import Request


@dataclass
class _Job:
    level: int  # the queue it is in
    used: float  # iterations of service in this queue
    waited: int  # steps since it last ran
    computed: int  # its num_computed_tokens at the last step
    ticket: int  # when it entered the queue: first in, first served within a queue


class MLFQPolicy:
    name = "mlfq"
    preemptive = True

    def __init__(
        self,
        num_levels: int = 8,
        base_quantum: float = 1.0,
        quantum_ratio: float = 2.0,
        prefill_tokens_per_iteration: float = 128.0,
        starve_limit: int = 200,
    ) -> None:
        """num_levels queues with quanta base_quantum * quantum_ratio**i iterations; a request that
        has waited starve_limit steps without running is promoted to the first queue."""
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels={num_levels!r} must be an integer >= 1")
        if isinstance(starve_limit, bool) or not isinstance(starve_limit, int) or starve_limit < 1:
            raise ValueError(f"starve_limit={starve_limit!r} must be an integer >= 1")
        for label, value, low in (("base_quantum", base_quantum, 0.0), ("quantum_ratio", quantum_ratio, 1.0),
                                  ("prefill_tokens_per_iteration", prefill_tokens_per_iteration, 0.0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(f"{label}={value!r} must be a number > {low}")
        if quantum_ratio == 1.0:
            raise ValueError("quantum_ratio=1.0: the quanta must grow from queue to queue (> 1)")
        self.quanta = [base_quantum * quantum_ratio**level for level in range(num_levels)]
        self.prefill_tokens_per_iteration = prefill_tokens_per_iteration
        self.starve_limit = starve_limit
        self.jobs: dict[str, _Job] = {}
        self.num_demotions = 0
        self.num_promotions = 0
        self._tickets = itertools.count()

    def iteration_cost(self, num_tokens: int) -> float:
        """Iterations charged for computing num_tokens tokens of a request in one step."""
        return 1.0 + max(0, num_tokens - 1) / self.prefill_tokens_per_iteration

    def join_level(self, num_prefill_tokens: int) -> int:
        """Skip-join: the first queue whose quantum covers the first iteration (the prefill)."""
        estimate = self.iteration_cost(num_prefill_tokens)
        return next((level for level, quantum in enumerate(self.quanta) if quantum >= estimate), len(self.quanta) - 1)

    def level_of(self, request: Request) -> int:
        return self.jobs[request.request_id].level

    # ---- the protocol ---------------------------------------------------------------------------

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        level = self.join_level(request.num_uncomputed_tokens)
        self.jobs[request.request_id] = _Job(level, 0.0, 0, request.num_computed_tokens, next(self._tickets))

    def on_step(self, live: Iterable[Request], now: float) -> None:
        jobs = {}
        for request in live:
            job = self.jobs[request.request_id]
            progress = request.num_computed_tokens - job.computed
            job.computed = request.num_computed_tokens
            if progress > 0:
                job.waited = 0
                job.used += self.iteration_cost(progress)
                if job.used >= self.quanta[job.level] and job.level < len(self.quanta) - 1:
                    self._move(job, job.level + 1)
                    self.num_demotions += 1
            else:
                job.waited += 1
                if job.waited >= self.starve_limit and job.level > 0:
                    self._move(job, 0)
                    self.num_promotions += 1
            jobs[request.request_id] = job
        self.jobs = jobs  # finished requests are not live any more: their state goes

    def key(self, request: Request) -> tuple:
        job = self.jobs[request.request_id]
        return (job.level, job.ticket)

    def on_first_admission(self, request: Request) -> None:
        pass  # service is charged from progress in on_step

    def on_output_token(self, request: Request) -> None:
        pass

    def _move(self, job: _Job, level: int) -> None:
        job.level, job.used, job.waited, job.ticket = level, 0.0, 0, next(self._tickets)


register_policy("mlfq", MLFQPolicy)
