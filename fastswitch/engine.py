"""The serving loop. One `step()`: schedule (which issues and waits for the step's swaps) -> run the
batch -> fork samples -> update -> record.

The data path of a step: `Scheduler.schedule` picks the batch and makes room for it itself, issuing
swap-outs, swap-ins and drops through the swap manager (the KVSpace it was built with) and waiting
for the copies the adaptive rule says to wait for; it returns a `SchedulerOutput`: the batch
(`ScheduledChunk`s) and a record of what it moved. The engine hands the batch to the executor, feeds
the sampled tokens back with `Scheduler.update`, and turns requests into outputs. The engine touches
the swap manager only to wait for a copy in flight when nothing can run until one lands.

Two seams make the engine reusable by the simulator (fastswitch/sim), which keeps the scheduler,
allocators, swap manager and reuse bookkeeping and replaces only these:

- `Executor` (fastswitch/executor.py): runs a batch and owns the clock (`now()`) that every time in
  the metrics comes from. `ModelExecutor` runs the model on the wall clock; the simulator's executor
  advances a virtual clock by a cost model instead.
- `CopyEngine` (fastswitch/cache/copy_engine.py): performs the swap manager's block copies.

`fastswitch/build.py` sizes the pools and assembles an engine over a loaded model.

Requests come in through one front door: `add_request` checks each one (`check_request`, with the
rules in fastswitch/request_check.py) before any state changes, so the layers behind it take their
input as valid.

The engine is thread-safe for one stepping thread plus any number of threads that add or abort
requests (a server's handlers): every public method holds one lock.

A step's error that belongs to one request (sampling failed for its row: `RequestsFailed`) ends that
request alone with finish_reason "error" and its message in `RequestOutput.error`, frees its blocks,
and the step goes on for the others. Any other error propagates from `step()`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.cache.swap_manager import SwapManager
from fastswitch.completions import equip, final_text, sample_params
from fastswitch.config import EngineConfig
from fastswitch.executor import Executor, ForkingExecutor, RequestsFailed
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestOutput
from fastswitch.request_check import EngineLimits, check_request
from fastswitch.sched.conversation import Conversation
from fastswitch.sched.metrics import RunMetrics
from fastswitch.sched.priority_trace import PriorityTrace
from fastswitch.sched.request import Request, ScheduledChunk, SchedulerOutput
from fastswitch.sched.scheduler import Scheduler
from fastswitch.sched.vllm_scheduler import VllmScheduler


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        executor: Executor,
        copy_engine: CopyEngine,
        *,
        num_gpu_blocks: int,
        num_cpu_blocks: int,
        num_layers: int,
        block_bytes: int,
        max_model_len: int,
        eos_token_ids: list[int] | tuple[int, ...] = (),
        vocab_size: int | None = None,
        detokenize: Callable[[list[int]], str] | None = None,
        pack_min_runs: int | None = None,
        metrics_window: int | None = None,
    ) -> None:
        """pack_min_runs: swaps of a sequence fragmented into at least this many runs use the pack
        kernel (cache/swap_manager.py). The adaptive swap rule's knobs are EngineConfig fields
        (sync_swap_fraction, adaptive_sync_blocks). metrics_window: stats() latency percentiles over
        the most recent samples only (RunMetrics' window; None: the whole run)."""
        self.config = config
        self.executor = executor
        self.max_model_len = max_model_len
        self.eos_token_ids = tuple(eos_token_ids)
        self.vocab_size = vocab_size
        self.detokenize = detokenize
        device = BlockManager(num_gpu_blocks, config.block_size, config.block_groups)
        host = BlockManager(num_cpu_blocks, config.block_size, config.block_groups)
        self.swap_manager = SwapManager(
            device, host, copy_engine, num_layers, block_bytes,
            asynchronous=config.async_swap, kv_reuse=config.kv_reuse, clock=executor.now,
            pack_min_runs=pack_min_runs,
        )
        scheduler_class = VllmScheduler if config.scheduler_mode == "vllm-0.3.3" else Scheduler
        self.scheduler = scheduler_class(config, self.swap_manager, max_model_len)
        self.priority_trace_digest: str | None = None
        self.run_metrics = RunMetrics(window=metrics_window)
        self.num_steps = 0
        self.num_batched_tokens = 0
        self.num_prompt_tokens = 0
        self.num_generated_tokens = 0
        self._outputs: dict[str, RequestOutput] = {}
        self._fork_parent: dict[str, str] = {}  # live forked sample's request id -> its parent's
        self._swap_wait_at_add: dict[str, float] = {}  # request id -> the engine's swap wait time when it came
        self.last_schedule: SchedulerOutput | None = None
        self._ids = itertools.count()
        self._conversation_ids = itertools.count()
        self._lock = threading.RLock()
        # The real KV caches, when fastswitch/build.py built this engine over a model (None otherwise).
        self.device_cache: KVCache | None = None
        self.host_cache: KVCache | None = None

    # ---- requests -------------------------------------------------------------------------------

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        client_id: Hashable = "default",
        prompt: str | None = None,
        seq_id: Hashable = None,
        keep_kv: bool = False,
        arrival_time: float | None = None,
        reserve_output: bool = False,
    ) -> RequestOutput:
        """Queues a request; returns its RequestOutput, which fills in as the engine steps.

        seq_id/keep_kv are for conversations: a turn with the seq_id of an earlier turn that kept its
        KV appends to that context instead of computing it again. arrival_time: when the request
        arrived, on the executor's clock (default: now); an earlier time, as a workload replay or a
        server's queue knows it, counts the wait before the engine saw the request in its TTFT and
        places it in arrival order. reserve_output: refuse a prompt that leaves no room for max_tokens
        (check_request).
        """
        arrival_time = self.check_arrival_time(arrival_time)
        params = SamplingParams() if params is None else params
        conversation = seq_id is not None or keep_kv
        token_ids = self.check_request(prompt_token_ids, params, priority, conversation=conversation,
                                       reserve_output=reserve_output)  # fmt: skip
        with self._lock:
            request_id = self.new_request_id() if request_id is None else str(request_id)
            request = Request(
                request_id, token_ids, params, arrival_time, seq_id=seq_id, priority=priority,
                client_id=client_id, eos_token_ids=self.eos_token_ids, prompt=prompt, keep_kv=keep_kv,
            )
            equip(request, self.detokenize)
            self.scheduler.add_request(request)
            output = RequestOutput(
                request_id, prompt, token_ids, request.output_token_ids, None, None, request.metrics,
                logprobs=request.logprobs, prompt_logprobs=request.prompt_logprobs,
            )  # fmt: skip
            self._outputs[request_id] = output
            self._swap_wait_at_add[request_id] = self.swap_manager.stats.swap_wait_time
            return output

    def check_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        priority: int = 0,
        *,
        conversation: bool = False,
        reserve_output: bool = False,
    ) -> list[int]:
        """The front door's check of one request against this engine's limits, before any state
        changes (fastswitch/request_check.py): the prompt's token ids as a list, or a ValueError
        naming the bad value and its limit (ContextTooLong for a prompt too long)."""
        limits = EngineLimits(
            self.max_seq_len, self.max_model_len, self.vocab_size, self.detokenize,
            can_fork=isinstance(self.executor, ForkingExecutor),
        )  # fmt: skip
        return check_request(limits, prompt_token_ids, params, priority,
                             conversation=conversation, reserve_output=reserve_output)  # fmt: skip

    @property
    def max_seq_len(self) -> int:
        """The longest sequence this engine serves: max_model_len, cut to what the device KV cache holds
        (the scheduler's limit; in vLLM 0.3.3 mode less its free-block watermark)."""
        return self.scheduler.max_seq_len

    def new_request_id(self) -> str:
        """The next id of the engine's one request-id counter (add_request draws from it when no id is
        given; a front end that numbers a batch before adding it draws here)."""
        with self._lock:
            return str(next(self._ids))

    def check_arrival_time(self, arrival_time: float | None) -> float:
        """The arrival time add_request would stamp: now for None; ValueError for one not yet reached."""
        now = self.executor.now()
        if arrival_time is None:
            return now
        if isinstance(arrival_time, bool) or not isinstance(arrival_time, (int, float)) or not arrival_time <= now:
            raise ValueError(
                f"arrival_time={arrival_time!r} must be a time on the executor's clock at most now={now!r}"
            )
        return float(arrival_time)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request (a client went away) and frees its KV blocks; None if it is not live. The
        samples forked from it (SamplingParams.n > 1) are aborted with it."""
        with self._lock:
            for sample_id in [s for s, parent in self._fork_parent.items() if parent == str(request_id)]:
                self.abort(sample_id)
            request = self.scheduler.abort(str(request_id), self.executor.now())
            if request is None:
                return None
            return self._retire(request)

    def conversation(self, client_id: Hashable = None, priority: int = 0) -> Conversation:
        """A new multi-turn conversation whose turns share one KV context (see sched/conversation.py)."""
        with self._lock:
            return Conversation(self, f"conversation-{next(self._conversation_ids)}", client_id, priority)

    def release_context(self, seq_id: Hashable) -> None:
        """Frees the KV a conversation kept between turns."""
        with self._lock:
            self.scheduler.release_context(seq_id)

    def has_unfinished(self) -> bool:
        with self._lock:
            return self.scheduler.has_unfinished

    def use_priority_trace(self, trace: PriorityTrace, origin: float) -> None:
        """Priorities from a precomputed trace (sched/priority_trace.py) whose time zero is `origin` on
        the executor's clock, instead of per-iteration re-draws; stats() records its digest."""
        with self._lock:
            self.scheduler.use_priority_trace(trace, origin)
            self.priority_trace_digest = trace.digest()

    # ---- the loop -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One iteration; returns the outputs of the requests that got a token (or finished) in it."""
        with self._lock:
            out = self.scheduler.schedule(self.executor.now())
            self.last_schedule = out  # what this step decided, for notebooks and traces
            swaps_done_at = self.executor.now()
            if out.is_empty:
                if self.swap_manager.num_in_flight:
                    self.swap_manager.wait_any()  # nothing can run until a copy lands
                elif self.scheduler.has_unfinished and not out.moved_kv:
                    raise RuntimeError(
                        f"scheduler made no progress: {len(self.scheduler.requests)} live requests, "
                        f"{self.swap_manager.num_free_device_blocks} free device blocks"
                    )
                return []
            try:
                sampled, errors = self.executor.execute(out.chunks), {}
            except RequestsFailed as failure:
                sampled, errors = failure.sampled, failure.errors
            failed = [self._fail(request_id, message) for request_id, message in errors.items()]
            for chunk in out.chunks:  # swap-ins waited for in this step's schedule: the engine was blocked
                if chunk.request.swap_in_issued_at is not None:
                    chunk.request.metrics.sync_swap_in_time += swaps_done_at - chunk.request.swap_in_issued_at
            forks = self._fork(out.chunks, sampled)  # n > 1; before update, which may free the parent's KV
            finished = self.scheduler.update(out, sampled, self.executor.now(), swaps_done_at)
            now = self.executor.now()
            finished += [child for child, token, held in forks if self.scheduler.start_forked(child, token, held, now)]
            self.num_steps += 1
            self.num_batched_tokens += out.num_batched_tokens
            for chunk in out.chunks:  # prompt tokens run (again, after a recompute)
                prompt_end = min(chunk.num_cached + len(chunk.token_ids), chunk.request.num_prompt_tokens)
                self.num_prompt_tokens += max(0, prompt_end - chunk.num_cached)
            self.num_generated_tokens += sum(token is not None for token in sampled) + len(forks)
            sampled_ids = [c.request.request_id for c in out.chunks if c.sample]
            advanced = [self._outputs[request_id] for request_id in sampled_ids if request_id not in errors]
            advanced += [self._outputs[child.request_id] for child, _, _ in forks]
            for request in finished:
                self._retire(request)
            for request in failed:
                advanced.append(self._retire(request))
            return advanced

    def run_until_done(self) -> None:
        while self.has_unfinished():
            self.step()

    def stats(self) -> dict:
        with self._lock:
            swap = self.swap_manager.stats
            return {
                **vars(swap),
                "executor_idle_on_swaps": swap.swap_wait_time,
                "num_steps": self.num_steps,
                "num_batched_tokens": self.num_batched_tokens,
                "num_prompt_tokens": self.num_prompt_tokens,
                "num_generated_tokens": self.num_generated_tokens,
                "block_bytes": self.swap_manager.block_bytes,
                "num_gpu_blocks": self.swap_manager.num_device_blocks,
                "num_free_gpu_blocks": self.swap_manager.num_free_device_blocks,
                "num_cpu_blocks": self.swap_manager.host.num_blocks,
                "num_free_cpu_blocks": self.swap_manager.host.num_free,
                "num_priority_updates": self.scheduler.num_priority_updates,
                "priority_trace_digest": self.priority_trace_digest,
                "scheduler_mode": self.config.scheduler_mode,
                **{k: v for k, v in self.run_metrics.summary().items() if k != "num_generated_tokens"},
            }

    def close(self) -> None:
        """Waits for copies in flight and stops the copy worker."""
        with self._lock:
            self.swap_manager.close()

    def _fork(self, chunks: list[ScheduledChunk], sampled: list[int | None]) -> list[tuple[Request, int, int]]:
        """SamplingParams.n > 1: when a request's prefill has just given its first token, adds its
        n - 1 further samples as requests whose KV is a copy of the prompt's (the prompt is computed
        once) and samples their first tokens from the same logits. Returns (sample, first token,
        tokens its KV holds); a sample that found no free device blocks is prefilled again later."""
        forks: list[tuple[Request, int, int]] = []
        for index, (chunk, token) in enumerate(zip(chunks, sampled)):
            parent = chunk.request
            if token is None or not parent.num_forks:
                continue
            held = chunk.num_cached + len(chunk.token_ids)
            parent_output = self._outputs[parent.request_id]
            samples, src_blocks, dst_blocks = [], [], []
            for i in range(1, parent.num_forks + 1):
                sample_id = f"{parent.request_id}:{i}"
                if sample_id in self._outputs:
                    sample_id = f"{sample_id}:{self.new_request_id()}"
                blocks = self.swap_manager.fork(parent.seq_id, sample_id, held)
                if blocks is not None:
                    src_blocks += blocks[0]
                    dst_blocks += blocks[1]
                output = self.add_request(
                    parent.prompt_token_ids, sample_params(parent.params, i), request_id=sample_id,
                    priority=parent.priority, client_id=parent.client_id, prompt=parent.prompt,
                    arrival_time=parent.arrival_time,
                )  # fmt: skip
                sample = self.scheduler.requests[sample_id]
                sample.prompt_logprobs = output.prompt_logprobs = parent.prompt_logprobs  # computed once
                output.index = i
                parent_output.forked.append(output)
                self._fork_parent[sample_id] = parent.request_id
                samples.append(sample)
            parent.num_forks = 0
            assert isinstance(self.executor, ForkingExecutor)  # check_request refuses n > 1 otherwise
            tokens = self.executor.fork(index, samples, src_blocks, dst_blocks)
            forks += [(sample, first, held) for sample, first in zip(samples, tokens)]
        return forks

    def _fail(self, request_id: str, message: str) -> Request:
        """Ends one request whose step failed (its blocks freed); the step goes on for the others."""
        request = self.scheduler.abort(request_id, self.executor.now())
        assert request is not None, f"request {request_id} failed in this step, so it was live"
        request.finish_reason = "error"
        self._outputs[request_id].error = message
        return request

    def _retire(self, request: Request) -> RequestOutput:
        output = self._outputs.pop(request.request_id)
        wait_at_add = self._swap_wait_at_add.pop(request.request_id)
        request.metrics.engine_swap_wait_time = self.swap_manager.stats.swap_wait_time - wait_at_add
        output.finish_reason = request.finish_reason
        output.text, output.stop_reason = final_text(request, self.detokenize)
        self._fork_parent.pop(request.request_id, None)
        if request.finish_reason not in ("abort", "error"):
            self.run_metrics.add(request.metrics, len(request.output_token_ids))
        self.executor.release(request.request_id)
        return output
