"""Scheduling policies: the order in which requests get the device.

A policy ranks requests with `key` (smaller runs first). The scheduler walks requests in that order,
admits them while the token budget, the sequence cap and device memory allow, and takes the blocks
it lacks from requests ranked *after* the one it is admitting. A non-preemptive policy ranks every
request already on the device ahead of all others, so memory pressure only ever evicts the
lowest-ranked running request (vLLM's behaviour); a preemptive one lets a waiting request evict a
running request ranked below it.

- `fcfs`: arrival order, non-preemptive (vLLM's default).
- `priority`: (priority, arrival), preemptive; level 0 is the most urgent.
- `vtc`: the Virtual Token Counter of Sheng et al. (OSDI'24). Each client has a counter charged
  `vtc_input_weight` per prompt token when a request is first admitted and `vtc_output_weight` per
  generated token; the least-served client goes first; a client that becomes active again has its
  counter lifted to the minimum over the active clients, so idling earns no credit. Non-preemptive,
  as in the paper.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Protocol

from fastswitch.sched.request import Request, RequestStatus


class SchedulingPolicy(Protocol):
    name: str
    preemptive: bool

    def key(self, request: Request) -> tuple: ...

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None: ...

    def on_first_admission(self, request: Request) -> None: ...

    def on_output_token(self, request: Request) -> None: ...


def _on_device_first(request: Request) -> int:
    return 0 if request.status is RequestStatus.RUNNING else 1


class FCFSPolicy:
    name = "fcfs"
    preemptive = False

    def key(self, request: Request) -> tuple:
        return (_on_device_first(request), request.arrival_time, request.request_id)

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        pass

    def on_first_admission(self, request: Request) -> None:
        pass

    def on_output_token(self, request: Request) -> None:
        pass


class PriorityPolicy(FCFSPolicy):
    name = "priority"
    preemptive = True

    def key(self, request: Request) -> tuple:
        return (request.priority, request.arrival_time, request.request_id)


class VTCPolicy(FCFSPolicy):
    name = "vtc"

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: dict[Hashable, float] = {}

    def key(self, request: Request) -> tuple:
        counter = self.counters.get(request.client_id, 0.0)
        return (_on_device_first(request), counter, request.arrival_time, request.request_id)

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        active = {r.client_id for r in live if r is not request}
        client = request.client_id
        counter = self.counters.get(client, 0.0)
        if client not in active and active:
            # Lift a returning client to the least-served active one: idle time is not banked credit.
            counter = max(counter, min(self.counters.get(c, 0.0) for c in active))
        self.counters[client] = counter

    def on_first_admission(self, request: Request) -> None:
        self.counters[request.client_id] = (
            self.counters.get(request.client_id, 0.0) + self.input_weight * request.num_prompt_tokens
        )

    def on_output_token(self, request: Request) -> None:
        self.counters[request.client_id] = self.counters.get(request.client_id, 0.0) + self.output_weight


def make_policy(name: str, vtc_input_weight: float = 1.0, vtc_output_weight: float = 2.0) -> SchedulingPolicy:
    if name == "fcfs":
        return FCFSPolicy()
    if name == "priority":
        return PriorityPolicy()
    if name == "vtc":
        return VTCPolicy(vtc_input_weight, vtc_output_weight)
    raise ValueError(f"policy={name!r} is not one of ('fcfs', 'priority', 'vtc')")
