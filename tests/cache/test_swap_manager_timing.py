"""Copy-time estimates: the learnt model of the real copy engine, and the swap manager's question."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyJob, CopyPair, CopyTimeModel, TorchCopyEngine
from fastswitch.cache.kv_cache import KVCache
from fastswitch.cache.swap_manager import SwapManager

LAYERS, BLOCK, HEADS, DIM = 3, 4, 2, 8


@given(
    per_call=st.floats(1e-7, 1e-3),
    per_byte=st.floats(1e-12, 1e-8),
    shapes=st.lists(st.tuples(st.integers(1, 64), st.integers(0, 10**7)), min_size=1, max_size=12),
)
def test_noise_free_timings_of_the_observed_shapes_are_predicted(per_call, per_byte, shapes):
    model = CopyTimeModel()
    for calls, num_bytes in shapes:
        model.observe(calls, num_bytes, per_call * calls + per_byte * num_bytes)
    for calls, num_bytes in shapes:
        assert model.estimate(calls, num_bytes) == pytest.approx(per_call * calls + per_byte * num_bytes, rel=1e-3)


def test_two_shapes_of_copy_separate_the_per_call_and_per_byte_costs():
    model = CopyTimeModel()
    for calls, num_bytes in [(1, 10**6), (60, 10**6), (1, 10**5)]:
        model.observe(calls, num_bytes, 5e-6 * calls + 1e-10 * num_bytes)
    assert model.seconds_per_call == pytest.approx(5e-6) and model.seconds_per_byte == pytest.approx(1e-10)
    assert model.estimate(7, 12345) == pytest.approx(5e-6 * 7 + 1e-10 * 12345)


def test_no_estimate_before_a_copy_and_recent_copies_weigh_most():
    model = CopyTimeModel(weight=0.5)
    assert model.estimate(1, 1000) is None
    model.observe(1, 1000, 1.0)
    assert model.estimate(1, 2000) == pytest.approx(2.0)  # one shape: all cost charged to bytes
    for _ in range(30):  # the link got 10x faster
        model.observe(1, 1000, 0.1)
    assert model.estimate(1, 1000) == pytest.approx(0.1, rel=1e-3)


def test_bad_timing_inputs_name_the_value():
    with pytest.raises(ValueError, match="weight"):
        CopyTimeModel(weight=0.0)
    with pytest.raises(ValueError, match="num_calls"):
        CopyTimeModel().observe(0, 10, 1.0)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_torch_copy_engine_learns_from_the_copies_it_runs(asynchronous):
    device = KVCache(8, LAYERS, BLOCK, HEADS, DIM, torch.float32)
    host = KVCache.host_pool_for(device, 8)
    engine = TorchCopyEngine(device, host, asynchronous=asynchronous)
    assert engine.estimated_seconds("out", device.block_bytes, 1) is None
    job = CopyJob("out", (CopyPair(0, 0, 3),), per_layer=False, num_layers=LAYERS, block_bytes=device.block_bytes)
    engine.submit(job).wait()
    assert engine.estimated_seconds("out", job.num_bytes, 1) > 0
    assert engine.estimated_seconds("in", job.num_bytes, 1) is None  # each direction is learnt apart
    with pytest.raises(ValueError, match="direction"):
        engine.estimated_seconds("sideways", 1, 1)
    engine.close()


class BytesAsSeconds:
    """A synchronous copy engine (copies nothing) whose estimate echoes what it was asked."""

    def __init__(self):
        self.asked = []

    def submit(self, job):
        return self

    def done(self):
        return True

    def wait(self):
        pass

    def estimated_seconds(self, direction, num_bytes, num_calls):
        self.asked.append((direction, num_bytes, num_calls))
        return float(num_bytes)

    def close(self):
        pass


@pytest.mark.parametrize("block_groups", [True, False])
def test_estimate_prices_the_blocks_the_next_swap_moves(block_groups):
    copies = BytesAsSeconds()
    device, host = BlockManager(16, BLOCK, block_groups), BlockManager(16, BLOCK, block_groups)
    manager = SwapManager(device, host, copies, LAYERS, 100, asynchronous=True, kv_reuse=True)
    manager.allocate("a", 3 * BLOCK)
    calls = 1 if block_groups else 3 * LAYERS * 2
    assert manager.estimated_swap_time("a") == 300.0 and copies.asked[-1] == ("out", 300, calls)
    manager.swap_out("a", 3 * BLOCK, blocking=True)
    assert manager.estimated_swap_time("a") == 300.0 and copies.asked[-1][0] == "in"
    manager.swap_in("a", blocking=True)
    manager.allocate("a", 5 * BLOCK)
    # The host kept the 3 full blocks: the next swap-out moves only the 2 new ones.
    assert manager.estimated_swap_time("a") == 200.0


class FakeEvent:
    """Stands in for torch.cuda.Event (no GPU here): recorded when the test says so, 2.5 ms apart."""

    def __init__(self):
        self.recorded = False

    def query(self):
        return self.recorded

    def synchronize(self):
        self.recorded = True

    def elapsed_time(self, end):
        return 2.5


def test_a_stream_copy_reports_its_event_timed_duration_once():
    from fastswitch.cache.copy_engine import _EventHandle

    seen = []
    handle = _EventHandle(FakeEvent(), FakeEvent(), seen.append)
    assert not handle.done() and seen == []
    handle.wait()
    assert handle.done() and seen == [pytest.approx(0.0025)]
