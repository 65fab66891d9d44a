"""Scheduling policies: the order in which requests get the device, as plug-ins.

A policy is any object that follows the `SchedulingPolicy` protocol below; nothing needs to subclass
anything. `EngineConfig(policy=...)`, `LLM(model, policy=...)`, `ServingEngine.load(..., policy=...)`
and the simulator take a registered name ("fcfs", "priority", "vtc", "mlfq", or one added with
`register_policy`), a policy object, or a class / zero-argument factory that makes one.

A policy keeps state (VTC's counters, MLFQ's queues), so one object drives one engine: a name, a
class or a factory gives every engine a fresh policy, while an object is used as given (its state
can be read during and after the run) and building a second engine on it while the first lives is a
ValueError. A comparison that builds several engines (presets, seeds, the simulator's experiments)
takes a name, a class or a factory.

How the scheduler uses a policy (sched/scheduler.py), at every step:

1. `on_step(live, now)`: once, before ranking. `live` is every unfinished request in arrival order
   (read-only), `now` the engine clock in seconds (wall clock, or the simulator's virtual clock).
   The place for state that moves with time or service: aging, quanta, starvation.
2. `key(request)`: the rank of each live request, a sort key (smaller runs first). It is called
   for every live request after `on_step` and must not change within the step. Ties should be
   broken (arrival time, request id) so the order is reproducible.
3. The scheduler walks requests in rank order and admits them while the token budget
   (`max_num_batched_tokens`), the sequence cap (`max_num_seqs`) and device memory allow; a request
   that lacks blocks takes them from idle conversation contexts, then from the resident requests
   ranked *after* it (swapped out or dropped to recompute). `preemptive` decides who those can be:
   False: every request whose KV is on the device (status RUNNING) is ranked ahead of all others
   whatever `key` says, so a waiting request never evicts a running one and memory pressure only
   evicts the lowest-ranked running request (vLLM's behaviour); True: `key` alone ranks, so a
   waiting request evicts the running requests ranked below it. (`scheduler_mode="vllm-0.3.3"`,
   sched/vllm_scheduler.py, walks the same ranking in vLLM 0.3.3's structure, where a waiting
   request waits for memory rather than evicting a running one.)
4. `on_first_admission(request)`: when a request first gets a batch slot (once per request).
5. `on_output_token(request)`: after each token sampled for it (`request.output_token_ids` already
   holds it), before the stop check.

Besides, `on_arrival(request, live)` runs when a request is added, before it is ranked for the first
time; `live` holds the other unfinished requests. A request's `num_computed_tokens` is then already
set (a conversation turn whose context is cached has only its new tokens left to prefill). Nothing
tells a policy that a request finished: per-request state is pruned to the `live` of `on_step`.
What a policy may read of a request: `request_id`, `arrival_time`, `priority` (may be re-drawn by
the priority pattern before `on_step`), `client_id`, `prompt_token_ids`, `output_token_ids`,
`num_computed_tokens`, `num_uncomputed_tokens`, `status`, `params.max_tokens`, `metrics`. A policy
never changes a request.

Built in:

- `fcfs`: arrival order, non-preemptive (vLLM's default).
- `priority`: (priority, arrival), preemptive; level 0 is the most urgent.
- `vtc`: the Virtual Token Counter of Sheng et al. (OSDI'24). Each client has a counter charged
  `vtc_input_weight` per prompt token when a request is first admitted and `vtc_output_weight` per
  generated token; the least-served client goes first; a client that becomes active again has its
  counter lifted to the minimum over the active clients (when none is active, to the last such
  minimum: the paper lifts to the counter of the client that left last), so idling earns no credit.
  Non-preemptive, as in the paper. Memory stays bounded: that lift makes an idle client's counter
  irrelevant once it is at most the floor (see VTCPolicy), so such counters are dropped.
- `mlfq`: FastServe's skip-join multi-level feedback queue (sched/mlfq.py), written as a plug-in.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol, TypeGuard, cast

from fastswitch.sched.request import Request, RequestStatus


class SchedulingPolicy(Protocol):
    name: str  # shown in statistics and tables
    preemptive: bool  # False: requests on the device rank ahead of all others (see the module docstring)

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        """A request was added (live: the other unfinished requests)."""

    def on_step(self, live: Iterable[Request], now: float) -> None:
        """A step begins (live: every unfinished request, in arrival order; now: the engine clock, s)."""

    def key(self, request: Request) -> tuple:
        """The request's rank in this step: smaller runs first."""

    def on_first_admission(self, request: Request) -> None:
        """The request got a batch slot for the first time."""

    def on_output_token(self, request: Request) -> None:
        """A token was sampled for the request (already in request.output_token_ids)."""


HOOKS = ("on_arrival", "on_step", "key", "on_first_admission", "on_output_token")
PolicySpec = str | SchedulingPolicy | Callable[[], SchedulingPolicy]  # what EngineConfig(policy=...) takes


class FCFSPolicy:
    name = "fcfs"
    preemptive = False

    def key(self, request: Request) -> tuple:
        return (request.arrival_time, request.request_id)

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        pass

    def on_step(self, live: Iterable[Request], now: float) -> None:
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


DEFAULT_VTC_WEIGHTS = (1.0, 2.0)  # VTC's service per prompt token and per output token (the VTC paper's w_p, w_q)
VTC_FORGET_MIN_CLIENTS = 1024  # VTC looks for idle counters to drop once it holds this many (then 2x what is kept)


class VTCPolicy(FCFSPolicy):
    name = "vtc"

    def __init__(
        self, input_weight: float = DEFAULT_VTC_WEIGHTS[0], output_weight: float = DEFAULT_VTC_WEIGHTS[1]
    ) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: dict[Hashable, float] = {}
        # The floor: the least active counter at the latest arrival that saw an active client. Every
        # active client's counter is >= floor (arrivals are lifted to it, counters only grow) and it
        # never decreases, so a client returning later is lifted to at least today's floor: an idle
        # counter <= floor can be forgotten without changing any counter or rank (_forget_idle).
        self.floor = 0.0
        self._forget_at = VTC_FORGET_MIN_CLIENTS

    def key(self, request: Request) -> tuple:
        counter = self.counters.get(request.client_id, 0.0)
        return (counter, request.arrival_time, request.request_id)

    def on_arrival(self, request: Request, live: Iterable[Request]) -> None:
        active = {r.client_id for r in live if r is not request}
        client = request.client_id
        if active:
            self.floor = max(self.floor, min(self.counters.get(c, 0.0) for c in active))
        counter = self.counters.get(client, 0.0)
        if client not in active:
            # Lift a returning client to the least-served active one: idle time is not banked credit.
            counter = max(counter, self.floor)
        self.counters[client] = counter
        if len(self.counters) >= self._forget_at:
            self._forget_idle(active | {client})

    def _forget_idle(self, active: set) -> None:
        """Drops idle clients' counters that the lift would overwrite anyway; amortised O(1) per arrival."""
        self.counters = {c: v for c, v in self.counters.items() if c in active or v > self.floor}
        self._forget_at = max(VTC_FORGET_MIN_CLIENTS, 2 * len(self.counters))

    def on_first_admission(self, request: Request) -> None:
        self.counters[request.client_id] = (
            self.counters.get(request.client_id, 0.0) + self.input_weight * request.num_prompt_tokens
        )

    def on_output_token(self, request: Request) -> None:
        self.counters[request.client_id] = self.counters.get(request.client_id, 0.0) + self.output_weight


_REGISTRY: dict[str, Callable[..., SchedulingPolicy]] = {
    "fcfs": FCFSPolicy,
    "priority": PriorityPolicy,
    "vtc": VTCPolicy,  # make_policy passes it EngineConfig's vtc_input_weight and vtc_output_weight
}


def register_policy(name: str, factory: Callable[[], SchedulingPolicy], replace: bool = False) -> None:
    """Makes `name` usable wherever a policy name is (EngineConfig, LLM, the server, `--policy`).

    factory: a policy class or any zero-argument callable returning a policy; it is called once per
    engine. An existing name is a ValueError unless replace=True.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy name {name!r} must be a non-empty string")
    if not callable(factory):
        raise ValueError(f"factory={factory!r} for policy {name!r} is not callable")
    if isinstance(factory, type):
        _check_members(factory, methods_only=True)
    if name in _REGISTRY and not replace:
        raise ValueError(f"policy {name!r} is already registered ({_REGISTRY[name]!r}); pass replace=True")
    _REGISTRY[name] = factory


def policy_names() -> tuple[str, ...]:
    """The registered policy names, built-in ones first."""
    return tuple(_REGISTRY)


def _check_members(obj: object, methods_only: bool = False) -> None:
    missing = [hook for hook in HOOKS if not callable(getattr(obj, hook, None))]
    if missing:
        raise ValueError(
            f"{obj!r} is not a SchedulingPolicy: it lacks the method(s) {missing} (the protocol has {list(HOOKS)})"
        )
    if methods_only:
        return
    for attribute, kind in (("name", str), ("preemptive", bool)):
        value = getattr(obj, attribute, None)
        if not isinstance(value, kind):
            raise ValueError(f"policy {obj!r}: `{attribute}` must be a {kind.__name__}, got {value!r}")


def is_policy_object(spec: object) -> TypeGuard[SchedulingPolicy]:
    """Whether spec is a policy object itself (rather than a name, a class or a factory)."""
    return not isinstance(spec, (str, type)) and all(hasattr(spec, hook) for hook in HOOKS)


def check_policy_spec(spec: object) -> None:
    """ValueError unless spec can give an engine its policy: a registered name, a policy object, a
    class with every hook, or another callable (its result is checked when it is called)."""
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise ValueError(f"policy={spec!r} is not one of {policy_names()} (register_policy adds names)")
    elif isinstance(spec, type):
        _check_members(spec, methods_only=True)
    elif is_policy_object(spec) or not callable(spec):
        _check_members(spec)


def make_policy(
    spec: PolicySpec = "fcfs",
    vtc_input_weight: float = DEFAULT_VTC_WEIGHTS[0],
    vtc_output_weight: float = DEFAULT_VTC_WEIGHTS[1],
) -> SchedulingPolicy:
    """The policy of one engine: a new one for a name, a class or a factory; a policy object as it is.
    The VTC weights apply to the name "vtc" (a VTCPolicy object or class carries its own)."""
    check_policy_spec(spec)
    policy: SchedulingPolicy
    if spec == "vtc":
        policy = VTCPolicy(vtc_input_weight, vtc_output_weight)
    elif isinstance(spec, str):
        policy = _REGISTRY[spec]()
    elif is_policy_object(spec):
        policy = spec
    else:
        policy = cast(Callable[[], SchedulingPolicy], spec)()
    _check_members(policy)
    return policy


_OWNERS: dict[int, weakref.ref] = {}  # id(policy object) -> the scheduler it drives


def claim_policy(policy: SchedulingPolicy, owner: object) -> SchedulingPolicy:
    """Records that policy drives owner; ValueError when it already drives another live scheduler."""
    key = id(policy)
    held = _OWNERS.get(key)
    if held is not None and held() not in (None, owner):
        gc.collect()  # an engine already dropped but held in a reference cycle no longer owns it
    current = held() if held is not None else None
    if current is not None and current is not owner:
        raise ValueError(
            f"policy object {policy!r} already drives another engine, and its state belongs to that engine: "
            "give each engine its own object, or pass the policy's class or a factory to compare engines"
        )

    def release(ref: weakref.ref, key: int = key) -> None:
        if _OWNERS.get(key) is ref:
            del _OWNERS[key]

    _OWNERS[key] = weakref.ref(owner, release)
    return policy


def rank_key(policy: SchedulingPolicy) -> Callable[[Request], tuple]:
    """The scheduler's sort key: policy.key, behind "on the device first" for a non-preemptive policy."""
    if policy.preemptive:
        return policy.key
    return lambda request: (request.status is not RequestStatus.RUNNING, policy.key(request))
