"""Iteration-level scheduling with preemption: which sequences run this step, and what moves.

Every step walks the live requests in policy order (see policies.py) and builds a batch under a
token budget (`max_num_batched_tokens`, prompts are prefilled in chunks so a long prompt does not
stall running decodes) and a sequence cap (`max_num_seqs`). A request that lacks device blocks takes
them, in this order, from idle conversation contexts (KV kept between turns) and from the resident
requests ranked lowest after it: by swapping their KV to the host (`preemption_mode="swap"`, when the
host has room) or by dropping it to recompute later. Swapped requests come back by swap-in.

With asynchronous swapping, whether a swap is waited for in the same step or overlapped with the
next ones is the paper's adaptive rule, asked of `AdaptiveSwapRule` (sched/adaptive_swap.py), which
also says when a request waits for blocks that copies in flight will free rather than evict more.

The output is data (SchedulerOutput); `update` feeds the sampled tokens back.

This is `scheduler_mode="chunked"`. `VllmScheduler` (sched/vllm_scheduler.py), the "vllm-0.3.3"
mode, subclasses it and replaces only `schedule`: arrivals, the adaptive rule, preemption, updates
and priorities (`_start_step`) are shared.
"""

from __future__ import annotations

from collections.abc import Hashable

from fastswitch.sched.adaptive_swap import AdaptiveSwapRule
from fastswitch.sched.kv_space import KVSpace
from fastswitch.sched.policies import claim_policy, make_policy, rank_key
from fastswitch.sched.priority_patterns import PriorityUpdater
from fastswitch.sched.priority_trace import PriorityTrace, TraceReader
from fastswitch.sched.request import Request, ScheduledChunk, SchedulerOutput


class Scheduler:
    def __init__(self, config, kv: KVSpace, max_seq_len: int) -> None:
        """config: an EngineConfig (validated there), whose fields set the policy and the adaptive rule."""
        self.config = config
        self.kv = kv
        self.max_seq_len = min(max_seq_len, kv.num_device_blocks * kv.block_size)
        self.swap_rule = AdaptiveSwapRule(kv, config.sync_swap_fraction, config.adaptive_sync_blocks)
        self.policy = claim_policy(make_policy(config.policy, config.vtc_input_weight, config.vtc_output_weight), self)
        self.rank = rank_key(self.policy)
        self.priority_updater = PriorityUpdater(
            config.priority_pattern, config.priority_update_freq, config.num_priority_levels, config.seed
        )
        self.requests: dict[str, Request] = {}  # live requests by id, in arrival order
        self.by_seq: dict[Hashable, Request] = {}
        self.idle_contexts: dict[Hashable, int] = {}  # conversation KV between turns -> cached tokens, LRU order
        self.priority_trace: TraceReader | None = None  # set by use_priority_trace

    # ---- arrivals and departures -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Takes a request the engine's front door has checked (Engine.check_request: a non-empty
        prompt of at most max_seq_len tokens)."""
        if request.request_id in self.requests:
            raise ValueError(f"request_id={request.request_id!r} is already live")
        if request.seq_id in self.by_seq:
            raise ValueError(f"sequence {request.seq_id!r} already has a live request: wait for it to finish")
        cached = self.idle_contexts.pop(request.seq_id, 0)
        if self.kv.location(request.seq_id) == "none":
            cached = 0
        # At least one token must run through the model to give the logits of the next one.
        request.num_computed_tokens = min(cached, request.num_prompt_tokens - 1)
        request.kv = self.kv  # its status is read from where its KV lives
        self.policy.on_arrival(request, self.requests.values())
        self.requests[request.request_id] = request
        self.by_seq[request.seq_id] = request

    def abort(self, request_id: str, now: float) -> Request | None:
        """Stops a live request and frees its KV; returns it, or None when it is not live."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, "abort", now, keep_kv=False)
        return request

    def release_context(self, seq_id: Hashable) -> None:
        """Forgets an idle conversation context (its KV everywhere)."""
        if seq_id in self.by_seq:
            raise ValueError(f"sequence {seq_id!r} still has a live request; abort it first")
        self.idle_contexts.pop(seq_id, None)
        if self.kv.location(seq_id) != "none":
            self.kv.drop(seq_id)

    def use_priority_trace(self, trace: PriorityTrace, origin: float) -> None:
        """Reads priorities from trace (time zero at `origin` on the engine clock) instead of re-drawing
        them per iteration. The trace must be drawn for this config's pattern, levels and frequency."""
        config = self.config
        mine = (config.priority_pattern, config.num_priority_levels, config.priority_update_freq)
        theirs = (trace.pattern, trace.num_levels, trace.update_freq)
        if mine != theirs:
            raise ValueError(
                f"the priority trace is drawn for (pattern, levels, update_freq)={theirs}, "
                f"but the engine is configured for {mine}"
            )
        self.priority_trace = TraceReader(trace, origin)

    @property
    def num_priority_updates(self) -> int:
        """Per-iteration re-draws, or with a trace the readings that moved a request past a re-draw."""
        source = self.priority_trace if self.priority_trace is not None else self.priority_updater
        return source.num_updates

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- one step ----------------------------------------------------------------------------

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        order = self._start_step(now)
        budget = self.config.max_num_batched_tokens
        blocked = False  # a higher-ranked request is waiting for memory: admit nothing that needs more
        for index, request in enumerate(order):
            if len(out.chunks) >= self.config.max_num_seqs or budget == 0:
                break
            seq_id = request.seq_id
            location = self.kv.location(seq_id)
            if location != "none" and not self.kv.is_ready(seq_id):
                continue  # a copy of its KV is in flight (swap-in landing, or swap-out not yet whole)
            num_new = min(request.num_uncomputed_tokens, budget)
            # A new admission must fit its whole prompt (as vLLM admits): a prompt let in piecemeal
            # would only be evicted again half-computed by the decodes growing around it.
            held_after = request.num_tokens if location == "none" else request.num_computed_tokens + num_new
            need = self.kv.device_blocks_needed(seq_id, held_after)
            if need and (blocked or not self._make_room(need, order, index, out, now)):
                blocked = True
                continue
            if location == "host":
                blocking = self.swap_rule.wait_for_swap(seq_id, num_scheduled=len(out.chunks))
                self.kv.swap_in(seq_id, blocking)
                request.swap_in_issued_at = now
                out.swapped_in.append(request.request_id)
                if not blocking:
                    continue
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
                self.policy.on_first_admission(request)
            out.chunks.append(self._chunk(request, num_new))
            budget -= num_new
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        return out

    def update(
        self, out: SchedulerOutput, sampled: list[int | None], now: float, swaps_done_at: float
    ) -> list[Request]:
        """Applies one step's results; returns the requests that finished in it."""
        if len(sampled) != len(out.chunks):
            raise ValueError(f"got {len(sampled)} sampled tokens for a batch of {len(out.chunks)} chunks")
        for chunk in out.chunks:
            request = chunk.request
            if request.swap_in_issued_at is not None:  # a swap-in waited for synchronously this step
                request.metrics.swap_stall_time += swaps_done_at - request.swap_in_issued_at
                request.swap_in_issued_at = None
        finished: list[Request] = []
        for chunk, token in zip(out.chunks, sampled):
            request = chunk.request
            if request.is_finished:
                continue
            request.num_computed_tokens += len(chunk.token_ids)
            if not chunk.sample:
                continue
            if token is None:
                raise ValueError(f"request {request.request_id!r} expected a sampled token, got None")
            if self._accept_token(request, token, now):
                finished.append(request)
        # The executor's run alone: waits on swaps came before swaps_done_at.
        self.swap_rule.observe_step(len(out.chunks), now - swaps_done_at)
        return finished

    def start_forked(self, request: Request, token: int, num_computed: int, now: float) -> bool:
        """Starts a further sample of a request whose prefill just ran (SamplingParams.n > 1), added
        like any request after the engine copied the prompt's KV to it: it holds num_computed tokens
        (when the device had room for the copy; else it is prefilled again, like a request preempted
        by recompute) and token is its first output. The policy sees it as admitted already (VTC
        charges the prompt once). Returns whether token already finishes it."""
        if request.output_token_ids or request.first_scheduled_time is not None:
            raise ValueError(f"request {request.request_id!r} has started already")
        if self.kv.location(request.seq_id) == "device":
            request.num_computed_tokens = num_computed
        request.first_scheduled_time = now
        return self._accept_token(request, token, now)

    # ---- helpers -----------------------------------------------------------------------------

    def _start_step(self, now: float) -> list[Request]:
        """What every step begins with, in either scheduler mode: retire landed copies, move
        priorities (by the trace when one is given, else per iteration), and rank the live requests."""
        for seq_id in self.kv.poll():
            request = self.by_seq.get(seq_id)
            if request is not None and request.swap_in_issued_at is not None:
                request.metrics.swap_stall_time += now - request.swap_in_issued_at
                request.swap_in_issued_at = None
        if self.priority_trace is not None:
            self.priority_trace.apply(self.requests.values(), now)
        else:
            self.priority_updater.maybe_update(self.requests.values())
        self.policy.on_step(self.requests.values(), now)
        return sorted(self.requests.values(), key=self.rank)

    def _accept_token(self, request: Request, token: int, now: float) -> bool:
        """Appends a sampled token; finishes the request if it stops there (returns True then)."""
        request.output_token_ids.append(token)
        request.metrics.record_token(now)
        self.policy.on_output_token(request)
        reason = self._stop_reason(request, token)
        if reason is None:
            return False
        self._finish(request, reason, now, keep_kv=request.keep_kv)
        return True

    def _chunk(self, request: Request, num_new: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        stop = start + num_new
        block_table = self.kv.allocate(request.seq_id, stop)
        return ScheduledChunk(
            request=request,
            token_ids=request.token_slice(start, stop),
            num_cached=start,
            block_table=block_table,
            sample=stop == request.num_tokens,
        )

    def _make_room(self, need: int, order: list[Request], index: int, out: SchedulerOutput, now: float) -> bool:
        """Frees `need` device blocks for order[index], preempting what ranks below it; False: it waits."""
        while self.kv.num_free_device_blocks < need:
            if self.swap_rule.in_flight_frees_enough(need):
                return False  # wait for the copies rather than evict more
            if not self._evict_idle_context(out):
                victim = self._lowest_ranked_resident(order, index)
                if victim is None:
                    return False
                self._preempt(victim, out, now)
        return True

    def _lowest_ranked_resident(self, order: list[Request], index: int) -> Request | None:
        # A request whose swap-in is still landing is left alone: its blocks free up soon enough
        # when it runs, and evicting it would throw the copy away.
        for request in reversed(order[index + 1 :]):
            if self.kv.location(request.seq_id) == "device" and self.kv.is_ready(request.seq_id):
                return request
        return None

    def _evict_idle_context(self, out: SchedulerOutput) -> bool:
        for seq_id, num_tokens in self.idle_contexts.items():
            if self.kv.location(seq_id) == "device":
                if self._swap_out(seq_id, num_tokens):
                    out.swapped_out.append(str(seq_id))
                else:
                    self.kv.drop(seq_id)
                    del self.idle_contexts[seq_id]  # safe: we return before iterating further
                    out.recomputed.append(str(seq_id))
                return True
        return False

    def _preempt(self, request: Request, out: SchedulerOutput, now: float) -> None:
        request.metrics.num_preemptions += 1
        request.swap_in_issued_at = None
        if self._swap_out(request.seq_id, request.num_computed_tokens):
            out.swapped_out.append(request.request_id)
            return
        # Recompute: drop the KV; the tokens generated so far are prefilled again with the prompt.
        self.kv.drop(request.seq_id)
        request.num_computed_tokens = 0
        out.recomputed.append(request.request_id)

    def _swap_out(self, seq_id: Hashable, num_tokens: int) -> bool:
        if self.config.preemption_mode != "swap":
            return False
        while not self.kv.can_swap_out(seq_id, num_tokens):
            if not self._drop_idle_host_context():
                return False
        # An overlapped swap-out frees its blocks only after this step: the request it makes room for
        # sits the step out in any case.
        self.kv.swap_out(seq_id, num_tokens, self.swap_rule.wait_for_swap(seq_id))
        return True

    def _drop_idle_host_context(self) -> bool:
        for seq_id in self.idle_contexts:
            if self.kv.location(seq_id) == "host":
                self.kv.drop(seq_id)
                del self.idle_contexts[seq_id]
                return True
        return False

    def _stop_reason(self, request: Request, token: int) -> str | None:
        # vLLM's order: no EOS or stop token before min_tokens, then EOS, stop tokens, stop strings
        # (the matcher applies min_tokens itself), length.
        params = request.params
        held = len(request.output_token_ids) < params.min_tokens
        if not held and token in request.eos_token_ids and not params.ignore_eos:
            return "stop"
        if not held and token in tuple(params.stop_token_ids):
            return "stop"
        if request.stop_strings is not None and request.stop_strings.found(request.output_token_ids):
            return "stop"
        if params.max_tokens is not None and len(request.output_token_ids) >= params.max_tokens:
            return "length"
        if request.num_tokens >= self.max_seq_len:
            return "length"
        return None

    def _finish(self, request: Request, reason: str, now: float, keep_kv: bool) -> None:
        request.finish_reason = reason
        request.metrics.finish_time = now
        del self.requests[request.request_id]
        del self.by_seq[request.seq_id]
        if self.kv.location(request.seq_id) == "none":
            return
        if keep_kv and self.config.keep_turn_kv:
            self.idle_contexts[request.seq_id] = request.num_computed_tokens
        else:
            self.kv.drop(request.seq_id)
