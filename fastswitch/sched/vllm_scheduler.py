"""`scheduler_mode="vllm-0.3.3"`: the scheduling structure of vLLM 0.3.3, the paper's baseline and the
base FastSwitch was built on, for any policy.

It follows `Scheduler._schedule` in vllm/core/scheduler.py and `BlockSpaceManager` in
vllm/core/block_manager.py at tag v0.3.3, step by step:

1. Prompt step. Only while no preempted request is swapped out (`if not self.swapped`), the waiting
   requests are walked in policy order and admitted whole, never chunked, until one does not fit; if
   any was admitted, the step runs those prompts and nothing else. A request stops the walk when
   - `can_allocate` says LATER: its blocks would leave fewer free device blocks than the watermark
     (1% of the pool, `BlockSpaceManager(watermark=0.01)`);
   - the padded prompt batch (number of prompts x longest prompt) would exceed the token budget.
     vLLM 0.3.3 derives `max_num_batched_tokens = max(max_model_len, 2048)` and refuses a budget
     below max_model_len; here the budget is max(`max_num_batched_tokens`, max_model_len), which for
     the field's default 2048 is the same figure;
   - `max_num_seqs` would be exceeded, or the padding would exceed `max_paddings` (256, its default).
   The executor runs the prompts unpadded; the padding only limits what one step admits, as it did.
2. Decode step, when no prompt was admitted. The running requests, sorted by the policy
   (`policy.sort_by_priority`), each reserve a slot for their next token. When one cannot
   (`can_append_slot`: at least one free block per running sequence, whether or not its last block
   has room), the lowest-ranked running request is preempted (`self.running.pop()`, from the back)
   until it can, and the request preempts itself when none is left behind it.
3. Swap-in, in the same decode step, only if nothing was preempted in it (`if not preempted`): the
   swapped requests in policy order come back while `can_swap_in` holds (their blocks plus one per
   sequence leave the watermark free) and `max_num_seqs` allows, and run in the step.

So swapped requests always come back before any waiting one is admitted, a step that swaps out never
swaps in, and a prompt step never runs decodes.

Choices where this library differs from vLLM 0.3.3, each documented:

- Policy: vLLM 0.3.3 ships only FCFS and does not sort its waiting queue (preempted requests go to
  its front, new ones to its back: arrival order). Here every queue is sorted by the configured
  policy (fcfs, priority, vtc), which for fcfs is the same order, and a priority policy ranks the
  waiting queue too, as FastSwitch's priority scheduling on vLLM 0.3.3 must.
- Preemptive policies: as in vLLM 0.3.3, a request is preempted only when a decode cannot get a
  slot (or, with `keep_turn_kv`, to give back cached contexts). A waiting or swapped request that a
  priority re-draw ranks above a running one waits for memory instead of evicting it: a policy's
  `preemptive` flag, which lets it evict lower-ranked running requests in the chunked mode, orders
  the queues here and picks the victims, and nothing more.
- Preemption: vLLM 0.3.3 preempts a single sequence by recompute by default (`_preempt` picks
  RECOMPUTE when `get_max_num_running_seqs() == 1`); the paper measures context-switch (swap)
  overhead, so it must have forced swapping. `preemption_mode` decides, as in the chunked mode:
  "swap" swaps out while the host has room and recomputes otherwise (vLLM 0.3.3 aborts the engine
  when swap space runs out), "recompute" recomputes.
- Prompts that could never be admitted (`can_allocate` NEVER: more blocks than the pool less the
  watermark) are rejected by `add_request` with a ValueError rather than ignored with a warning;
  `max_seq_len` is cut to that size, so a sequence also stops ("length") before it outgrows it.
- Conversations (not in vLLM 0.3.3, where every turn is a new request): with `keep_turn_kv`, a new
  turn whose context is still cached is a waiting request that prefills only its new tokens in a
  prompt step; a context kept on the host is swapped in at the start of that step (or, overlapped,
  before a later one), never in a step that has swapped out, and no swap-out follows a swap-in in
  one step. Memory held by cached contexts is given back first: a finished turn's idle context,
  then the contexts of turns ranked below the one being admitted (in a prompt step), of any waiting
  turn (for a swap-in or a decode slot), and only then running requests from the back. With
  `keep_turn_kv` off (the `vllm` preset) none of this arises: every turn prefills its whole
  history, as in vLLM 0.3.3.
- Asynchronous swaps (FastSwitch, `async_swap`): the adaptive wait-or-overlap rule
  (sched/adaptive_swap.py) applies as in the chunked scheduler. A slot that only copies in flight
  will free is waited for rather than bought with another preemption, a swap-in that is overlapped
  runs from the step after its copy lands, and a swapped request whose swap-out is still copying
  stops the swap-in walk.
"""

from __future__ import annotations

from fastswitch.sched.kv_space import KVSpace
from fastswitch.sched.request import Request, SchedulerOutput
from fastswitch.sched.scheduler import Scheduler

WATERMARK = 0.01  # BlockSpaceManager(watermark=0.01): device blocks kept free when admitting
MAX_PADDINGS = 256  # SchedulerConfig.max_paddings default (vllm/engine/arg_utils.py, v0.3.3)


class VllmScheduler(Scheduler):
    def __init__(self, config, kv: KVSpace, max_seq_len: int) -> None:
        super().__init__(config, kv, max_seq_len)
        self.watermark_blocks = int(WATERMARK * kv.num_device_blocks)
        # can_allocate returns NEVER for a sequence of more blocks than the pool less the watermark.
        self.max_seq_len = min(self.max_seq_len, (kv.num_device_blocks - self.watermark_blocks) * kv.block_size)
        self.prompt_budget = max(config.max_num_batched_tokens, max_seq_len)

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        waiting, running, swapped = [], [], []  # vLLM's three queues, each in policy order
        for request in self._start_step(now):
            if not self._decoding(request):
                waiting.append(request)  # new, recomputed, or a turn whose context is cached
            elif self.kv.location(request.seq_id) == "host":
                swapped.append(request)
            else:
                running.append(request)
        if not swapped and self._schedule_prompts(waiting, len(running), out, now):
            return out
        running = self._schedule_decodes(running, waiting, out, now)
        if not out.swapped_out and not out.recomputed:
            self._swap_in(swapped, len(running), waiting, out, now)
        out.num_batched_tokens = len(out.chunks)
        return out

    # ---- the three phases --------------------------------------------------------------------

    def _schedule_prompts(self, waiting: list[Request], num_running: int, out: SchedulerOutput, now: float) -> bool:
        """The prompt step: admits waiting requests whole, in order, until one does not fit."""
        lengths: list[int] = []
        for position, request in enumerate(waiting):
            seq_id = request.seq_id
            location = self.kv.location(seq_id)
            if location != "none" and not self.kv.is_ready(seq_id):
                continue  # a copy of its cached context is in flight: admitted once it lands
            num_new = request.num_uncomputed_tokens
            padded = (len(lengths) + 1) * max(lengths + [num_new])
            if padded > self.prompt_budget or num_running + len(lengths) + 1 > self.config.max_num_seqs:
                break
            if padded - sum(lengths) - num_new > MAX_PADDINGS:
                break
            need = self.kv.device_blocks_needed(seq_id, request.num_tokens)
            if not self._reclaim(need, waiting[position + 1 :], out, now):
                break  # can_allocate: LATER
            if location == "host":  # a turn's context kept on the host comes back before its prompt
                if out.swapped_out:
                    break  # no swap-in in a step that swaps out
                blocking = self.swap_rule.wait_for_swap(seq_id)
                self._issue_swap_in(request, blocking, out, now)
                if not blocking:
                    continue
            lengths.append(num_new)
            self._admit(request, num_new, out, now)
        out.num_batched_tokens = sum(lengths)
        return bool(out.chunks)

    def _schedule_decodes(
        self, running: list[Request], waiting: list[Request], out: SchedulerOutput, now: float
    ) -> list[Request]:
        """Reserves each running request's next-token slot in policy order, preempting from the back;
        returns the requests still running."""
        queue = list(running)
        index = 0
        while index < len(queue):
            request = queue[index]
            if not self.kv.is_ready(request.seq_id):
                index += 1  # its swap-in is landing: it runs from the step after
                continue
            preempted_self = False
            while not self._can_append_slot():
                if self._evict_idle_context(out):
                    continue
                victim = self._victim(queue, index, waiting)
                if victim is None:
                    self._preempt(request, out, now)
                    del queue[index]
                    preempted_self = True
                    break
                self._preempt(victim, out, now)
            if preempted_self:
                continue
            if self.kv.device_blocks_needed(request.seq_id, request.num_tokens) <= self.kv.num_free_device_blocks:
                self._admit(request, 1, out, now)
            # else: the block it needs is freed when an overlapped swap-out lands; it sits this step out
            index += 1
        return queue

    def _swap_in(
        self, swapped: list[Request], num_running: int, waiting: list[Request], out: SchedulerOutput, now: float
    ) -> None:
        """Brings swapped requests back in policy order while memory and max_num_seqs allow."""
        for request in swapped:
            seq_id = request.seq_id
            if not self.kv.is_ready(seq_id) or num_running + 1 > self.config.max_num_seqs:
                break  # (not ready: its swap-out is still copying)
            need = self.kv.num_blocks_of(seq_id) + 1  # can_swap_in: one more block for its next token
            if not self._reclaim(need, waiting, out, now) or out.swapped_out:
                break  # no room yet, or room made by a swap-out: this step swaps nothing in
            blocking = self.swap_rule.wait_for_swap(seq_id, num_scheduled=len(out.chunks))
            self._issue_swap_in(request, blocking, out, now)
            num_running += 1
            if blocking:
                self._admit(request, 1, out, now)

    # ---- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _decoding(request: Request) -> bool:
        """In the decode phase: it has sampled tokens and only the last one's K/V is missing."""
        return bool(request.output_token_ids) and request.num_uncomputed_tokens == 1

    def _can_append_slot(self) -> bool:
        # vLLM 0.3.3 asks for one free block per running sequence, counted here with the blocks that
        # overlapped swap-outs already in flight will free (none when swaps are synchronous).
        return self.swap_rule.in_flight_frees_enough(1)

    def _reclaim(self, need: int, candidates: list[Request], out: SchedulerOutput, now: float) -> bool:
        """Whether `need` more device blocks leave the watermark free, after evicting idle contexts and
        then the cached contexts of waiting turns among candidates (lowest ranked first) if that helps
        now; False: not yet (copies in flight will free enough, nothing is left to evict, or this
        step swapped in already and so may not swap out)."""
        while self.kv.num_free_device_blocks - need < self.watermark_blocks:
            if self.swap_rule.in_flight_frees_enough(need, keep_free=self.watermark_blocks):
                return False  # overlapped swap-outs will free enough: wait for them
            if out.swapped_in:
                return False
            if self._evict_idle_context(out):
                continue
            victim = self._cached_waiting_turn(candidates)
            if victim is None:
                return False
            self._preempt(victim, out, now)
        return True

    def _cached_waiting_turn(self, candidates: list[Request]) -> Request | None:
        """The lowest-ranked turn among candidates that waits for its prompt step with its context
        ready on the device (only with keep_turn_kv); removed from candidates."""
        for request in reversed(candidates):
            if self.kv.location(request.seq_id) == "device" and self.kv.is_ready(request.seq_id):
                candidates.remove(request)
                return request
        return None

    def _victim(self, queue: list[Request], index: int, waiting: list[Request]) -> Request | None:
        """The next request to preempt for queue[index]: a turn waiting with its context cached on the
        device, else the lowest-ranked running request behind queue[index] (vLLM's running.pop())."""
        turn = self._cached_waiting_turn(waiting)
        if turn is not None:
            return turn
        for position in range(len(queue) - 1, index, -1):
            if self.kv.is_ready(queue[position].seq_id):
                return queue.pop(position)
        return None

    def _issue_swap_in(self, request: Request, blocking: bool, out: SchedulerOutput, now: float) -> None:
        self.kv.swap_in(request.seq_id, blocking)
        request.swap_in_issued_at = now
        out.swapped_in.append(request.request_id)

    def _admit(self, request: Request, num_new: int, out: SchedulerOutput, now: float) -> None:
        if request.first_scheduled_time is None:
            request.first_scheduled_time = now
            self.policy.on_first_admission(request)
        out.chunks.append(self._chunk(request, num_new))
