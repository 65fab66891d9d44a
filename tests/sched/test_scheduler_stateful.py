"""A hypothesis state machine over the scheduler and swap manager (through the Engine).

Random arrivals, conversation turns, priority changes, aborts, engine steps and copy completions in
random order, on a device pool far too small for the load, in both scheduler modes, with and without
conversation KV kept between turns. After every rule the block bookkeeping
must balance (every allocated block belongs to a live sequence or to a copy still in flight) and
every live request must be the one live request of its sequence; at the end every request that was not aborted
has exactly the output of an unconstrained run, and every block is free again.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fakes import make_engine, reference_output
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams

PROMPT = st.lists(st.integers(0, 96), min_size=1, max_size=30)


class EngineMachine(RuleBasedStateMachine):
    @initialize(
        block_groups=st.booleans(),
        async_swap=st.booleans(),
        kv_reuse=st.booleans(),
        mode=st.sampled_from(["swap", "recompute"]),
        policy=st.sampled_from(["fcfs", "priority", "vtc"]),
        num_cpu_blocks=st.sampled_from([6, 40]),
        seed=st.integers(0, 2**16),
        scheduler_mode=st.sampled_from(["chunked", "vllm-0.3.3"]),
        keep_turn_kv=st.booleans(),
    )
    def setup(
        self, block_groups, async_swap, kv_reuse, mode, policy, num_cpu_blocks, seed, scheduler_mode, keep_turn_kv
    ):
        config = EngineConfig(
            block_size=4, num_gpu_blocks=12, num_cpu_blocks=num_cpu_blocks, max_num_seqs=4,
            max_num_batched_tokens=16, policy=policy, priority_update_freq=0.2, preemption_mode=mode,
            block_groups=block_groups, async_swap=async_swap, kv_reuse=kv_reuse, seed=seed,
            scheduler_mode=scheduler_mode, keep_turn_kv=keep_turn_kv,
        )
        self.engine, self.pools, self.copies = make_engine(config)
        self.rng = random.Random(seed)
        self.outputs = {}  # request id -> (output, prompt, max_tokens)
        self.aborted = set()
        self.conversations = []

    @rule(prompt=PROMPT, max_tokens=st.integers(1, 8), priority=st.integers(0, 3), client=st.sampled_from("ab"))
    def add(self, prompt, max_tokens, priority, client):
        out = self.engine.add_request(
            prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), priority=priority, client_id=client
        )
        self.outputs[out.request_id] = (out, prompt, max_tokens)

    @rule(new=PROMPT, max_tokens=st.integers(1, 6))
    def conversation_turn(self, new, max_tokens):
        idle = [c for c in self.conversations if not c.busy and not c.closed]
        if len(self.conversations) < 3 and (not idle or self.rng.random() < 0.3):
            idle = [self.engine.conversation()]
            self.conversations.append(idle[0])
        if not idle:
            return  # every conversation is still answering
        conv = self.rng.choice(idle)
        prompt = conv.token_ids + new
        if len(prompt) > 40:
            conv.close()
            return
        out = conv.submit(new, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        self.outputs[out.request_id] = (out, prompt, max_tokens)

    @precondition(lambda self: self.engine.scheduler.requests)
    @rule(data=st.data())
    def abort(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.engine.scheduler.requests)))
        assert self.engine.abort(request_id) is not None
        self.aborted.add(request_id)

    @precondition(lambda self: self.engine.scheduler.requests)
    @rule(data=st.data(), priority=st.integers(0, 3))
    def change_priority(self, data, priority):
        request_id = data.draw(st.sampled_from(sorted(self.engine.scheduler.requests)))
        self.engine.scheduler.requests[request_id].priority = priority

    @rule()
    def complete_some_copies(self):
        self.copies.complete_some(self.rng)

    @rule(steps=st.integers(1, 4))
    def step(self, steps):
        for _ in range(steps):
            self.engine.step()

    @invariant()
    def blocks_balance(self):
        manager, scheduler = self.engine.swap_manager, self.engine.scheduler
        device, host = manager.device, manager.host
        # The sequences the scheduler knows: live requests and idle conversation contexts.
        known = set(scheduler.by_seq) | set(scheduler.idle_contexts)
        held = [seq_id for seq_id in known if manager.location(seq_id) != "none"]
        # Device: every allocated block belongs to a known sequence's current stay or to a copy in flight.
        owned = [manager.sequences.record(s).stay for s in held if manager.location(s) == "device"]
        owned += [k for p in manager._pending for k in p.free_device]
        assert len(owned) == len(set(owned))
        assert all(device.has(k) for k in owned)
        assert sum(device.num_blocks_of(k) for k in owned) + device.num_free == device.num_blocks
        # Host: every copy belongs to a known sequence, or to one dropped while its copy lands.
        landing_drops = {p.seq_id for p in manager._pending if p.drop_host}
        on_host = [seq_id for seq_id in set(held) | landing_drops if host.has(seq_id)]
        for seq_id in on_host:
            assert manager.host_copies.record(seq_id) is not None
        for seq_id in held:
            if manager.location(seq_id) == "host":
                assert manager.host_copies.record(seq_id).phase in ("swapping_out", "swapped_out")
        assert sum(host.num_blocks_of(k) for k in on_host) + host.num_free == host.num_blocks

    @invariant()
    def live_requests_are_placed(self):
        scheduler = self.engine.scheduler
        for request in scheduler.requests.values():
            assert scheduler.by_seq[request.seq_id] is request
        assert len(scheduler.by_seq) == len(scheduler.requests)

    def teardown(self):
        if not hasattr(self, "engine"):
            return
        for _ in range(10_000):
            if not self.engine.has_unfinished():
                break
            self.copies.complete_some(self.rng)
            self.engine.step()
        assert not self.engine.has_unfinished()
        for request_id, (out, prompt, max_tokens) in self.outputs.items():
            if request_id in self.aborted:
                assert out.finish_reason == "abort"
                continue
            assert out.finish_reason == "length", request_id
            assert out.token_ids == reference_output(prompt, max_tokens), request_id
        for conv in self.conversations:
            conv.close()
        self.engine.close()
        manager = self.engine.swap_manager
        assert manager.device.num_free == manager.device.num_blocks
        assert manager.host.num_free == manager.host.num_blocks


TestEngineMachine = EngineMachine.TestCase
