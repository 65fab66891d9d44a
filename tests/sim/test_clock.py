import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.sim.clock import CopyQueues, VirtualClock
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import HardwareProfile
from fastswitch.sim.model_shapes import get_model_shape

# 1,000 B/s each way and 0.5 s per copy call: copy times are easy to add up by hand.
LINK = HardwareProfile("link", peak_tflops=1.0, memory_bandwidth_gbs=1.0, memory_gib=1.0, h2d_gbs=1e-6,
                       d2h_gbs=1e-6, copy_call_latency_us=5e5)  # fmt: skip


def queues() -> CopyQueues:
    return CopyQueues(CostModel(get_model_shape("smollm2-135m"), LINK))


def test_clock_moves_forward_only():
    clock = VirtualClock()
    assert clock.advance(1.5) == 1.5 and clock() == 1.5
    assert clock.advance_to(1.0) == 1.5  # the past leaves it where it is
    assert clock.advance_to(4.0) == 4.0 and clock.now == 4.0
    with pytest.raises(ValueError, match="-0.1 s"):
        clock.advance(-0.1)


def test_copies_of_one_direction_queue_and_directions_overlap():
    q = queues()
    first = q.submit("d2h", 1000, 1, now=0.0)  # 0.5 s latency + 1 s of bytes
    second = q.submit("d2h", 2000, 2, now=0.5)  # waits for the first: starts at 1.5, takes 1 + 2 s
    other_way = q.submit("h2d", 500, 1, now=0.5)  # the other direction is free: 0.5 + 0.5 s
    assert (first.started_at, first.finished_at) == (0.0, pytest.approx(1.5))
    assert (second.started_at, second.finished_at) == (pytest.approx(1.5), pytest.approx(4.5))
    assert (other_way.started_at, other_way.finished_at) == (0.5, pytest.approx(1.5))
    assert q.idle_at() == pytest.approx(4.5)
    assert q.stats["d2h"].calls == 3 and q.stats["d2h"].bytes == 3000
    assert q.stats["d2h"].busy_time == pytest.approx(4.5)


def test_a_copy_submitted_after_the_link_went_idle_starts_at_once():
    q = queues()
    q.submit("h2d", 1000, 1, now=0.0)
    late = q.submit("h2d", 1000, 1, now=10.0)
    assert late.started_at == 10.0 and late.finished_at == pytest.approx(11.5)


def test_unknown_direction_raises():
    with pytest.raises(ValueError, match="direction='up'"):
        queues().submit("up", 1, 1, now=0.0)


@given(st.lists(st.tuples(st.sampled_from(["h2d", "d2h"]), st.integers(0, 5000), st.integers(1, 4),
                          st.floats(0, 5)), max_size=20))  # fmt: skip
def test_copies_never_overlap_within_a_direction(submissions):
    q = queues()
    now = 0.0
    last_finish = {"h2d": 0.0, "d2h": 0.0}
    for direction, nbytes, calls, gap in submissions:
        now += gap
        record = q.submit(direction, nbytes, calls, now)
        assert record.started_at >= max(now, last_finish[direction])
        assert record.finished_at > record.started_at
        last_finish[direction] = record.finished_at
