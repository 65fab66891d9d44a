"""EngineThread: one thread steps the engine; asyncio handlers submit requests and await their tokens.

The engine is synchronous and thread-safe (one lock around every public method). A server needs it
stepping continuously while handlers come and go, so a daemon thread loops `engine.step()` whenever
requests are live and sleeps on an event otherwise. After each step it hands every subscribed
request its new tokens through the request's asyncio queue (`call_soon_threadsafe`: the queue
belongs to the event loop's thread).

Submitting and publishing share one lock, so a request cannot finish between `add_request` and its
subscription: its first update is never lost. Handlers call `submit`/`abort` through
`asyncio.to_thread`, because either may wait for a step in progress and must not block the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Hashable

from fastswitch.engine import Engine
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestMetrics

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1  # how often an idle loop checks for shutdown


@dataclass
class TokenUpdate:
    """What a step produced for one request: its new tokens, and whether it is done."""

    new_token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running
    error: str | None = None  # the engine failed; the request is gone


@dataclass
class Subscription:
    request_id: str
    num_prompt_tokens: int
    metrics: RequestMetrics
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(repr=False)
    num_sent: int = 0  # output tokens already handed to the queue


class EngineThread:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.num_aborted = 0  # requests stopped because their client went away (or asked)
        self.last_error: str | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastswitch-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Aborts what is live, stops the loop and the engine's copy worker."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for request_id in list(self._subscriptions):
                self._abort_locked(request_id)
        self.engine.close()

    @property
    def num_live(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def submit(
        self,
        token_ids: list[int],
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue,
        priority: int = 0,
        client_id: Hashable = "anonymous",
    ) -> Subscription:
        """Queues a request whose updates go to `queue` on `loop`. ValueError (from the engine) for bad input."""
        if self._stopping.is_set():
            raise RuntimeError("the engine thread is shutting down")
        with self._lock:
            output = self.engine.add_request(token_ids, params, priority=priority, client_id=client_id)
            subscription = Subscription(output.request_id, len(token_ids), output.metrics, loop, queue)
            self._subscriptions[output.request_id] = subscription
        self._wake.set()
        return subscription

    def abort(self, request_id: str) -> bool:
        """Stops a request and frees its KV blocks; False when it had already finished."""
        with self._lock:
            return self._abort_locked(request_id)

    def _abort_locked(self, request_id: str) -> bool:
        self._subscriptions.pop(request_id, None)
        if self.engine.abort(request_id) is None:
            return False
        self.num_aborted += 1
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_unfinished():
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            with self._lock:
                try:
                    advanced = self.engine.step()
                except Exception as exc:  # a broken step must not hang every client: fail them all
                    log.exception("engine step failed")
                    self._fail_all(f"{type(exc).__name__}: {exc}")
                    continue
                for output in advanced:
                    subscription = self._subscriptions.get(output.request_id)
                    if subscription is None:
                        continue
                    new = output.token_ids[subscription.num_sent :]
                    subscription.num_sent += len(new)
                    if output.finished:
                        del self._subscriptions[output.request_id]
                    self._publish(subscription, TokenUpdate(list(new), output.finish_reason))

    def _fail_all(self, message: str) -> None:
        self.last_error = message
        for request_id, subscription in list(self._subscriptions.items()):
            try:
                self.engine.abort(request_id)
            except Exception:  # the engine is already broken; the client still gets its error
                log.exception("abort after a failed step")
            self._publish(subscription, TokenUpdate([], "abort", error=message))
        self._subscriptions.clear()

    @staticmethod
    def _publish(subscription: Subscription, update: TokenUpdate) -> None:
        try:
            subscription.loop.call_soon_threadsafe(subscription.queue.put_nowait, update)
        except RuntimeError:
            pass  # the handler's event loop is closed: nobody is listening any more
