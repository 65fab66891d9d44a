import pytest

from fastswitch.cache.copy_engine import CopyJob, CopyPair
from fastswitch.sim.clock import CopyQueues, VirtualClock
from fastswitch.sim.copy_engine import VirtualCopyEngine
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import HardwareProfile
from fastswitch.sim.model_shapes import get_model_shape

# 1,000 B/s each way, 0.01 s per copy call.
LINK = HardwareProfile("link", peak_tflops=1.0, memory_bandwidth_gbs=1.0, memory_gib=1.0, h2d_gbs=1e-6,
                       d2h_gbs=1e-6, copy_call_latency_us=1e4)  # fmt: skip


def engine() -> VirtualCopyEngine:
    queues = CopyQueues(CostModel(get_model_shape("smollm2-135m"), LINK))
    return VirtualCopyEngine(queues, VirtualClock())


def job(direction: str, lengths: list[int], per_layer: bool = False) -> CopyJob:
    pairs = tuple(CopyPair(src=10 * i, dst=20 * i, length=n) for i, n in enumerate(lengths))
    return CopyJob(direction, pairs, per_layer=per_layer, num_layers=2, block_bytes=100)


def test_copy_overlaps_and_completes_when_the_clock_passes_it():
    e = engine()
    handle = e.submit(job("out", [3, 2]))  # 2 calls (0.02 s) + 500 B (0.5 s)
    assert e.clock.now == 0.0 and not handle.done()
    e.clock.advance(0.5)
    assert not handle.done()
    e.clock.advance(0.02)
    assert handle.done()
    assert e.queues.stats["d2h"].calls == 2 and e.queues.stats["d2h"].bytes == 500


def test_waiting_on_a_copy_moves_the_clock_to_its_end():
    e = engine()
    e.clock.advance(1.0)
    handle = e.submit(job("in", [1]))
    handle.wait()
    assert e.clock.now == pytest.approx(1.0 + 0.01 + 0.1) and handle.done()


def test_per_layer_jobs_pay_per_call_and_queue_behind_earlier_copies():
    e = engine()
    grouped = e.submit(job("out", [4]))  # 1 call + 400 B: 0.41 s
    per_layer = e.submit(job("out", [4], per_layer=True))  # 4 blocks * 2 layers * K/V = 16 calls
    assert e.clock.now == 0.0
    per_layer.wait()
    assert grouped.done() and e.clock.now == pytest.approx(0.41 + 0.16 + 0.4)
    assert e.queues.stats["d2h"].calls == 17


class _RecordingEngine:
    def __init__(self):
        self.jobs, self.closed = [], False

    def submit(self, job):
        self.jobs.append(job)
        return self

    def wait(self):
        pass

    def close(self):
        self.closed = True


def test_a_backing_engine_moves_the_bytes_at_submit_while_time_stays_virtual():
    backing = _RecordingEngine()
    e = VirtualCopyEngine(CopyQueues(CostModel(get_model_shape("smollm2-135m"), LINK)), VirtualClock(), backing)
    handle = e.submit(job("in", [2]))
    assert len(backing.jobs) == 1 and not handle.done()
    e.close()
    assert backing.closed


def test_the_estimate_is_the_cost_models_price_of_the_copy():
    e = engine()
    estimate = e.estimated_seconds("in", 500, 2)
    handle = e.submit(job("in", [3, 2]))  # the same 500 B in 2 calls, on an idle link
    handle.wait()
    assert estimate == pytest.approx(0.52) and e.clock.now == pytest.approx(estimate)
    with pytest.raises(ValueError, match="direction"):
        e.estimated_seconds("sideways", 1, 1)
