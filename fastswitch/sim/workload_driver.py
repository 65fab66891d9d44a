"""Replays a Workload as scheduler requests: turns arrive on time, and each next turn waits for the last.

A conversation's first turn arrives at its `start_time`; turn k + 1 arrives `think_time` seconds
after turn k's last token (a closed loop per conversation, open across conversations, as a user
types the next message only after reading the answer). Every turn of a conversation shares the
conversation's sequence id and carries the whole context so far (earlier prompts and answers) plus
its new message, with `keep_kv` on all but the last turn, so the engine's KV reuse across turns
applies. A turn asks for exactly `response_tokens` tokens (`ignore_eos`), so a real run and a
simulated run of one workload generate the same number of tokens whatever the model says.

The driver is clock-agnostic: the caller passes `now`. `replay` runs a whole workload through an
`Engine`, on the virtual clock (the simulator) or the wall clock (a real run), with a progress bar.

Priorities: when the engine re-draws priorities (`priority_update_freq` > 0) and the workload has a
seed (`synthetic_sharegpt`'s always have), `replay` gives the engine the workload's priority trace
(`priority_trace_of`, sched/priority_trace.py): every conversation's level as a function of the
workload's time, drawn from the workload's seed, so every system that replays one workload with the
same priority settings sees the same priorities (`Engine.stats()` records the trace's digest).
`replay(..., priority_trace=False)`, or a workload without a seed, keeps the per-iteration re-draws,
whose schedule does not depend on how long steps take.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestOutput
from fastswitch.sched.priority_trace import PriorityTrace
from fastswitch.sched.request import Request
from fastswitch.workloads import Conversation, Turn, Workload

# Prompt tokens of a turn whose workload carries no ids: the simulator never reads them.
PLACEHOLDER_TOKEN_ID = 0


@dataclass(order=True, frozen=True)
class _Arrival:
    time: float
    conversation_index: int
    turn_index: int


def request_id_of(conversation_id: int, turn_index: int) -> str:
    return f"conv{conversation_id}-turn{turn_index}"


def seq_id_of(conversation_id: int) -> str:
    """The KV sequence id every turn of a conversation shares (and its key in the priority trace)."""
    return f"conv{conversation_id}"


def priority_trace_of(workload: Workload, config) -> PriorityTrace | None:
    """The priority trace of workload under config's priority settings (pattern, levels, update
    frequency): a pure function of the workload (its seed, its conversations' starts and first
    levels) and those settings, so presets that differ in anything else get the same trace. None
    when config re-draws nothing, or for a workload without a seed (one built by hand), which keeps
    the per-iteration re-draws."""
    if config.priority_update_freq == 0.0 or workload.seed is None:
        return None
    seed = workload.seed
    sequences = [(seq_id_of(c.conversation_id), c.start_time, c.turns[0].priority) for c in workload.conversations]
    return PriorityTrace(
        sequences, seed, config.priority_pattern, config.num_priority_levels, config.priority_update_freq
    )


class WorkloadDriver:
    def __init__(self, workload: Workload, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.workload = workload
        self.eos_token_ids = tuple(eos_token_ids)
        self._heap: list[_Arrival] = [_Arrival(c.start_time, i, 0) for i, c in enumerate(workload.conversations)]
        heapq.heapify(self._heap)
        self._context: dict[int, list[int]] = {}  # conversation index -> its tokens so far
        self._outstanding: dict[str, tuple[int, int]] = {}  # request id -> (conversation index, turn index)

    @property
    def done(self) -> bool:
        """Every turn of every conversation has been handed out and has finished."""
        return not self._heap and not self._outstanding

    def next_arrival_time(self) -> float | None:
        return self._heap[0].time if self._heap else None

    def pop_due(self, now: float) -> list[Request]:
        """The requests of every turn that has arrived by `now`, in arrival order."""
        due = []
        while self._heap and self._heap[0].time <= now:
            arrival = heapq.heappop(self._heap)
            due.append(self._request(arrival))
        return due

    def on_finished(self, request_id: str, context_token_ids: list[int], now: float) -> None:
        """Records a finished turn (its prompt and answer tokens) and schedules the conversation's next one."""
        if request_id not in self._outstanding:
            raise ValueError(f"request {request_id!r} is not an outstanding turn of this workload")
        conversation_index, turn_index = self._outstanding.pop(request_id)
        conversation = self.workload.conversations[conversation_index]
        self._context[conversation_index] = list(context_token_ids)
        next_index = turn_index + 1
        if next_index < len(conversation.turns):
            think = conversation.turns[next_index].think_time
            heapq.heappush(self._heap, _Arrival(now + think, conversation_index, next_index))
        else:
            del self._context[conversation_index]

    def _request(self, arrival: _Arrival) -> Request:
        conversation: Conversation = self.workload.conversations[arrival.conversation_index]
        turn: Turn = conversation.turns[arrival.turn_index]
        if turn.prompt_token_ids is not None:
            new_ids = list(turn.prompt_token_ids)
        else:
            new_ids = [PLACEHOLDER_TOKEN_ID] * turn.prompt_tokens
        prompt = self._context.get(arrival.conversation_index, []) + new_ids
        request = Request(
            request_id=request_id_of(conversation.conversation_id, arrival.turn_index),
            prompt_token_ids=prompt,
            params=SamplingParams(max_tokens=turn.response_tokens, ignore_eos=True),
            arrival_time=arrival.time,
            seq_id=seq_id_of(conversation.conversation_id),
            priority=turn.priority,
            client_id=conversation.client_id,
            eos_token_ids=self.eos_token_ids,
            keep_kv=arrival.turn_index + 1 < len(conversation.turns),
        )
        self._outstanding[request.request_id] = (arrival.conversation_index, arrival.turn_index)
        return request


def sleep_until(when: float) -> None:
    """replay's wait for a real run on the wall clock (time.monotonic, the real executor's clock)."""
    time.sleep(max(0.0, when - time.monotonic()))


def replay(
    engine,
    workload: Workload,
    wait_until: Callable[[float], object],
    progress: bool = False,
    priority_trace: bool = True,
) -> list[RequestOutput]:
    """Runs every turn of `workload` through `engine` (a fastswitch.engine.Engine); returns the outputs
    of all turns in the order they arrived.

    The workload's times count from the engine executor's clock reading at the start. wait_until(t)
    is called when nothing is live and the next turn arrives at clock time t: the simulator jumps its
    virtual clock there, a real run sleeps (`sleep_until`). priority_trace: read priorities from the
    workload's trace (module docstring); False keeps the engine's per-iteration re-draws.
    """
    driver = WorkloadDriver(workload, engine.eos_token_ids)
    origin = engine.executor.now()
    trace = priority_trace_of(workload, engine.config) if priority_trace else None
    if trace is not None:
        engine.use_priority_trace(trace, origin)
    outputs: list[RequestOutput] = []
    bar = tqdm(total=workload.num_turns, desc=workload.name, unit="turn", disable=not progress, leave=False)
    while not driver.done:
        now = engine.executor.now() - origin
        for request in driver.pop_due(now):
            # A turn that came in during a step arrived before the clock's reading now: TTFT counts
            # from its true arrival. (min: origin + t can round an ulp past the clock it came from.)
            arrival = min(origin + request.arrival_time, engine.executor.now())
            output = engine.add_request(
                request.prompt_token_ids, request.params, request_id=request.request_id,
                priority=request.priority, client_id=request.client_id, seq_id=request.seq_id,
                keep_kv=request.keep_kv, arrival_time=arrival,
            )  # fmt: skip
            outputs.append(output)
        if not engine.has_unfinished():
            next_time = driver.next_arrival_time()
            if next_time is not None:
                wait_until(origin + next_time)
            continue
        for output in engine.step():
            if output.finished:
                driver.on_finished(output.request_id, output.prompt_token_ids + output.token_ids,
                                   engine.executor.now() - origin)  # fmt: skip
                bar.update(1)
    bar.close()
    return outputs
