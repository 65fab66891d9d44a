import math

import pytest

from fastswitch.outputs import RequestMetrics
from fastswitch.sched.metrics import RunMetrics
from fastswitch.sim.report import format_table, improvement, summarize, with_range
from fastswitch.sim.runner import offered_tokens_per_s
from fastswitch.workloads import Conversation, Turn, Workload


def test_improvement_is_greater_than_one_when_better():
    base = {"ttft_p95": 4.0, "ttft_p99": 8.0, "ttft_p999": 10.0, "tbt_p999": 1.0, "throughput_tokens_per_s": 100.0}
    cand = {"ttft_p95": 2.0, "ttft_p99": 2.0, "ttft_p999": 10.0, "tbt_p999": 2.0, "throughput_tokens_per_s": 150.0}
    assert improvement(base, cand) == {
        "ttft_p95": 2.0, "ttft_p99": 4.0, "ttft_p999": 1.0, "tbt_p999": 0.5, "throughput_tokens_per_s": 1.5,
    }  # fmt: skip


def test_table_aligns_columns():
    table = format_table([{"preset": "vllm", "x": 1.23456}, {"preset": "fastswitch"}], ["preset", "x"])
    lines = table.splitlines()
    assert lines[0].split() == ["preset", "x"]
    assert lines[2].split() == ["vllm", "1.235"] and lines[3].split() == ["fastswitch", "-"]
    assert len({len(line) for line in lines}) == 1


def test_summary_gives_mean_min_max_over_seeds_and_ratios_against_the_same_seed():
    runs = [
        {"rate": 1.0, "seed": 0, "preset": "vllm", "ttft_p95": 4.0, "throughput_tokens_per_s": 100.0},
        {"rate": 1.0, "seed": 1, "preset": "vllm", "ttft_p95": 8.0, "throughput_tokens_per_s": 50.0},
        {"rate": 1.0, "seed": 0, "preset": "fastswitch", "ttft_p95": 1.0, "throughput_tokens_per_s": 120.0},
        {"rate": 1.0, "seed": 1, "preset": "fastswitch", "ttft_p95": 4.0, "throughput_tokens_per_s": 50.0},
    ]
    metrics = {"offered_tokens_per_s": None, "ttft_p95": False, "throughput_tokens_per_s": True}
    vllm, fast = summarize(runs, "vllm", metrics)
    assert (vllm["preset"], vllm["seeds"]) == ("vllm", 2)
    assert (vllm["ttft_p95"], vllm["ttft_p95_min"], vllm["ttft_p95_max"]) == (6.0, 4.0, 8.0)
    assert (fast["ttft_p95_x"], fast["ttft_p95_x_min"], fast["ttft_p95_x_max"]) == (3.0, 2.0, 4.0)
    assert fast["throughput_tokens_per_s_x"] == pytest.approx(1.1)
    assert "offered_tokens_per_s_x" not in fast and math.isnan(fast["offered_tokens_per_s"])  # a load, not a ratio
    assert with_range([fast], ["ttft_p95_x"])[0]["ttft_p95_x"] == "3 [2-4]"


def test_stall_share_is_the_swap_stalled_part_of_the_tail_requests_latency():
    run = RunMetrics()
    # 200 requests of 1 s latency without stalls, and three of 10 s that each spent 6 s with the engine
    # blocked on swaps (their own 1 s synchronous swap-in inside it) and 0.5 s on an overlapped swap-in.
    for i in range(200):
        m = RequestMetrics(arrival_time=float(i), finish_time=float(i) + 1.0)
        m.record_token(i + 0.5)
        run.add(m, 1)
    for _ in range(3):
        slow = RequestMetrics(arrival_time=0.0, finish_time=10.0, swap_stall_time=1.5, sync_swap_in_time=1.0,
                              engine_swap_wait_time=6.0)  # fmt: skip
        run.add(slow, 1)
    assert slow.swap_stall_total == 6.5
    # The P99 of these 203 latencies is 9.82 s: the tail is the three slow requests.
    assert run.summary()["e2e_p99"] == pytest.approx(9.82)
    assert run.stall_share() == pytest.approx(0.65)
    assert run.summary()["stall_share_p99"] == pytest.approx(0.65)
    assert math.isnan(RunMetrics().stall_share())


def test_offered_load_counts_every_response_token_over_the_ideal_span():
    workload = Workload("w", (Conversation(0, 0, 0.0, (Turn(5, 30, 0.0), Turn(5, 10, 4.0))),
                              Conversation(1, 1, 2.0, (Turn(5, 20, 0.0),))))  # fmt: skip
    # Last arrival at 0 + 4 s of think time: 60 tokens over 4 s.
    assert offered_tokens_per_s(workload) == 15.0


def test_a_window_keeps_recent_samples_and_cumulative_counters():
    run = RunMetrics(window=3)
    for i in range(10):  # request i: TTFT i, one gap of i, latency i + 1
        m = RequestMetrics(arrival_time=0.0, finish_time=float(i) + 1.0)
        m.record_token(float(i))
        m.record_token(2.0 * i)
        run.add(m, 2)
    assert list(run.ttfts) == [7.0, 8.0, 9.0] and list(run.tbts) == [7.0, 8.0, 9.0]
    assert list(run.latencies) == [8.0, 9.0, 10.0] and len(run.stalls) == 3
    summary = run.summary()
    assert summary["ttft_p50"] == 8.0  # over the window
    assert summary["num_finished_requests"] == 10 and summary["num_generated_tokens"] == 20  # over the run
    assert summary["duration"] == 10.0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="window"):
            RunMetrics(window=bad)

