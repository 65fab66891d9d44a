"""EngineThread: one thread owns the engine; asyncio handlers hand it work and await their tokens.

Handlers never take the engine's lock and never wait for a step: `submit` and `abort` put a command
in an inbox that the thread drains between steps (a submission's result, or the engine's
ValueError, comes back through a future), and the thread publishes what handlers read: each
request's new tokens through its asyncio queue (`call_soon_threadsafe`: the queue belongs to the
event loop's thread), and a snapshot of the engine's counters (`stats`) whenever it goes idle and,
while busy, every STATS_PERIOD_S or, when computing them takes longer (the latency percentiles sort
every finished request's times), often enough that they cost at most 1/STATS_COST_RATIO of its time.

A request with n > 1 samples is one subscription: the samples the engine forks after the prefill
(request ids "<id>:1", ...) are registered under it when they appear, and each update names its
sample's index. Each finished request's timings go to `on_finished` callbacks (the /metrics
histograms), and the snapshot carries the scheduler's running / waiting / swapped counts.

A request the engine fails alone (finish_reason "error") gets its error; the others go on. A step
that raises fails every live request, and the thread steps on with new ones; when steps keep
failing (MAX_CONSECUTIVE_FAILURES in a row) or the failed requests cannot be aborted, the engine
cannot go on: `failure` says why, and every later submission is refused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastswitch.engine import Engine
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestOutput

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1  # how often an idle loop checks for shutdown
STATS_PERIOD_S = 0.2  # a busy engine republishes its counters at most this often
STATS_COST_RATIO = 20  # ... and at most once per 20x the time one snapshot took
MAX_CONSECUTIVE_FAILURES = 3  # failed steps in a row after which the engine is declared failed


class EngineFailed(RuntimeError):
    """The engine cannot go on; no request is accepted any more."""


@dataclass
class TokenUpdate:
    """What a step produced for one request: its new tokens, and whether it is done."""

    new_token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None while running
    error: str | None = None  # the engine failed this request (and only this one, unless `failure` is set)
    request_id: str = ""  # the submitted request's id (sample 0's)
    index: int = 0  # which of its n samples
    logprobs: list = field(default_factory=list)  # the new tokens' logprobs (SamplingParams.logprobs)
    text: str | None = None  # once finished: the engine's final text (cut at a stop string)
    stop_reason: int | str | None = None  # once finished: the stop string or token id that ended it
    prompt_logprobs: list | None = None  # once finished: the prompt's (SamplingParams.prompt_logprobs)


@dataclass
class Subscription:
    request_id: str
    num_prompt_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(repr=False)
    index_of: dict[str, int] = field(default_factory=dict)  # live sample request id -> sample index
    num_sent: dict[int, int] = field(default_factory=dict)  # sample index -> output tokens handed to the queue


@dataclass
class _Submission:
    token_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    priority: int
    client_id: Hashable
    future: Future


class EngineThread:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.num_aborted = 0  # requests stopped because their client went away (or asked)
        self.last_error: str | None = None  # the last error of a failed step
        self.failure: str | None = None  # why the engine cannot go on; None while it can
        self.stats: dict = self._snapshot()  # the counters as last published (read without any lock)
        self.on_finished: list[Callable[[RequestOutput], None]] = []  # called on this thread per finished sample
        self._subscriptions: dict[str, Subscription] = {}
        self._inbox: deque = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._consecutive_failures = 0
        self._next_publish = 0.0
        self._dirty = False
        self._thread = threading.Thread(target=self._run, name="fastswitch-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Aborts what is live, stops the loop and the engine's copy worker."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def num_live(self) -> int:
        """Requests submitted and not yet finished (read without a lock: one dict's length)."""
        return len(self._subscriptions)

    def submit(
        self,
        token_ids: list[int],
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue,
        priority: int = 0,
        client_id: Hashable = "anonymous",
    ) -> Future:
        """Queues a request whose updates go to `queue` on `loop`, without waiting for the engine.

        The future resolves to its Subscription, or fails with the engine's ValueError (bad input)
        or EngineFailed."""
        future: Future = Future()
        if self.failure is not None:
            future.set_exception(EngineFailed(self.failure))
        elif self._stopping.is_set():
            future.set_exception(EngineFailed("the server is shutting down"))
        else:
            self._inbox.append(_Submission(token_ids, params, loop, queue, priority, client_id, future))
            self._wake.set()
        return future

    def abort(self, request_id: str) -> None:
        """Asks the engine thread to stop a request and free its KV blocks (a no-op once it finished)."""
        self._inbox.append(request_id)
        self._wake.set()

    # ---- the engine's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._drain_inbox()
            if self._stopping.is_set():
                break
            if self.failure is None and self.engine.has_unfinished():
                self._step()
                continue
            if self._dirty:
                self._publish_stats()
            self._wake.wait(IDLE_POLL_S)
            self._wake.clear()
        for request_id in list(self._subscriptions):
            self._abort(request_id)
        self._publish_stats()
        self.engine.close()

    def _drain_inbox(self) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            self._dirty = True
            if isinstance(item, str):
                self._abort(item)
            elif self.failure is not None:
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(EngineFailed(self.failure))
            else:
                self._add(item)

    def _add(self, item: _Submission) -> None:
        if not item.future.set_running_or_notify_cancel():
            return  # the handler gave up before the engine thread got to it
        try:
            output = self.engine.add_request(item.token_ids, item.params, priority=item.priority,
                                             client_id=item.client_id, reserve_output=True)  # fmt: skip
        except Exception as exc:  # ValueError for bad input; anything else is reported the same way
            item.future.set_exception(exc)
            return
        subscription = Subscription(output.request_id, len(item.token_ids), item.loop, item.queue)
        subscription.index_of[output.request_id] = 0
        self._subscriptions[output.request_id] = subscription
        item.future.set_result(subscription)

    def _abort(self, request_id: str, asked: bool = True) -> None:
        """asked: a client or handler asked for it (counted in num_aborted), not a failed step. The
        engine aborts a request's forked samples with it."""
        subscription = self._subscriptions.pop(request_id, None)
        if subscription is not None and subscription.request_id == request_id:
            for sample_id in subscription.index_of:
                self._subscriptions.pop(sample_id, None)
        try:
            aborted = self.engine.abort(request_id) is not None
        except Exception as exc:
            self._fail_engine(f"aborting request {request_id} failed: {type(exc).__name__}: {exc}")
            return
        self.num_aborted += aborted and asked

    def _step(self) -> None:
        try:
            advanced = self.engine.step()
        except Exception as exc:  # a broken step must not hang every client: fail its requests
            log.exception("engine step failed")
            self._consecutive_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._fail_requests(self.last_error)
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                self._fail_engine(f"{self._consecutive_failures} engine steps failed in a row; last: {self.last_error}")
            self._publish_stats()
            return
        self._consecutive_failures = 0
        self._dirty = True
        for output in advanced:
            if output.finished and output.finish_reason not in ("abort", "error"):
                for callback in self.on_finished:
                    callback(output)
            subscription = self._subscriptions.get(output.request_id)
            if subscription is None:
                continue
            for sample in output.forked:  # n > 1: the samples forked in this step, before they report
                if sample.request_id not in subscription.index_of:
                    subscription.index_of[sample.request_id] = sample.index
                    self._subscriptions[sample.request_id] = subscription
            index = subscription.index_of[output.request_id]
            sent = subscription.num_sent.get(index, 0)
            new = output.token_ids[sent:]
            subscription.num_sent[index] = sent + len(new)
            update = TokenUpdate(list(new), output.finish_reason, output.error, subscription.request_id, index,
                                 list(output.logprobs[sent:]) if output.logprobs is not None else [])  # fmt: skip
            if output.finished:
                del self._subscriptions[output.request_id]
                del subscription.index_of[output.request_id]
                update.text, update.stop_reason = output.text, output.stop_reason
                update.prompt_logprobs = None if output.prompt_logprobs is None else list(output.prompt_logprobs)
            self._publish(subscription, update)
        if time.monotonic() >= self._next_publish:
            self._publish_stats()

    def _fail_requests(self, message: str) -> None:
        """Every live request gets the error; their blocks are freed."""
        for request_id, subscription in list(self._subscriptions.items()):
            self._publish(subscription, TokenUpdate([], "error", error=message, request_id=subscription.request_id))
            self._abort(request_id, asked=False)

    def _fail_engine(self, message: str) -> None:
        if self.failure is not None:
            return
        log.error("the engine cannot go on: %s", message)
        self.failure = message
        for subscription in list(self._subscriptions.values()):
            self._publish(subscription, TokenUpdate([], "error", error=message, request_id=subscription.request_id))
        self._subscriptions.clear()

    def _publish_stats(self) -> None:
        started = time.monotonic()
        try:
            self.stats = self._snapshot()
        except Exception:  # the counters stay as last published; the failure shows elsewhere
            log.exception("engine stats failed")
        now = time.monotonic()
        self._next_publish = now + max(STATS_PERIOD_S, STATS_COST_RATIO * (now - started))
        self._dirty = False

    def _snapshot(self) -> dict:
        """The engine's counters, the live requests by scheduler state and every preemption so far."""
        stats = self.engine.stats()
        live = list(self.engine.scheduler.requests.values())
        for status in ("running", "waiting", "swapped"):
            stats[f"num_requests_{status}"] = sum(r.status.value == status for r in live)
        stats["num_preemptions_all"] = stats["num_preemptions"] + sum(r.metrics.num_preemptions for r in live)
        return stats

    @staticmethod
    def _publish(subscription: Subscription, update: TokenUpdate) -> None:
        try:
            subscription.loop.call_soon_threadsafe(subscription.queue.put_nowait, update)
        except RuntimeError:
            pass  # the handler's event loop is closed: nobody is listening any more
