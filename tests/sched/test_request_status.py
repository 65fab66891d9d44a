"""A request's status is read from where the swap manager holds its KV, never kept beside it."""

from __future__ import annotations

import pytest

from fakes import make_engine
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.sched.request import Request, RequestStatus

PARAMS = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.mark.parametrize("mode, preempted", [("swap", RequestStatus.SWAPPED), ("recompute", RequestStatus.WAITING)])
def test_status_follows_the_kv_through_a_preemption(mode, preempted):
    config = EngineConfig(
        block_size=4, num_gpu_blocks=12, num_cpu_blocks=48, max_num_seqs=8, policy="priority",
        async_swap=False, kv_reuse=False, preemption_mode=mode,
    )
    engine, _, _ = make_engine(config)
    small = engine.add_request([1] * 6, PARAMS, priority=3)
    large = engine.add_request([2] * 31, PARAMS, priority=3)
    live = engine.scheduler.requests
    assert live[large.request_id].status is RequestStatus.WAITING  # no KV yet
    engine.step()
    assert live[small.request_id].status is live[large.request_id].status is RequestStatus.RUNNING
    victim = live[large.request_id]
    urgent = engine.add_request([3] * 10, SamplingParams(max_tokens=2, ignore_eos=True), priority=0)
    engine.step()  # the urgent request needs 3 blocks, only 2 are free: the lowest-ranked resident goes
    assert engine.last_schedule.swapped_out + engine.last_schedule.recomputed == [victim.request_id]
    assert victim.status is preempted
    assert engine.swap_manager.location(victim.seq_id) == {"swap": "host", "recompute": "none"}[mode]
    assert live[urgent.request_id].status is RequestStatus.RUNNING
    while engine.has_unfinished():
        engine.step()
    assert victim.status is RequestStatus.FINISHED and victim.is_finished


def test_a_request_not_yet_added_is_waiting():
    request = Request("r", [1, 2], PARAMS, arrival_time=0.0)
    assert request.status is RequestStatus.WAITING and not request.is_finished
