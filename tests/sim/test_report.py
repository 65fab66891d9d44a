import math

import pytest

from fastswitch.sim.report import format_table, improvement, latency_summary


def test_percentiles_and_throughput_by_hand():
    ttfts = [float(i) for i in range(1, 101)]  # 1..100
    s = latency_summary(ttfts, [0.5, 1.5], output_tokens=300, duration=60.0)
    assert s["ttft_p50"] == pytest.approx(50.5)
    assert s["ttft_p99"] == pytest.approx(99.01)
    assert s["ttft_p99.9"] == pytest.approx(99.901)
    assert s["tbt_mean"] == 1.0 and s["tbt_p50"] == 1.0
    assert s["throughput_tok_s"] == 5.0 and s["turns"] == 100


def test_empty_inputs_give_nan_not_errors():
    s = latency_summary([], [], output_tokens=0, duration=0.0)
    assert math.isnan(s["ttft_p99"]) and math.isnan(s["throughput_tok_s"])
    with pytest.raises(ValueError, match="duration=-1"):
        latency_summary([1.0], [], 1, -1)


def test_improvement_is_greater_than_one_when_better():
    base = {"ttft_p95": 4.0, "ttft_p99": 8.0, "ttft_p99.9": 10.0, "tbt_p99.9": 1.0, "throughput_tok_s": 100.0}
    cand = {"ttft_p95": 2.0, "ttft_p99": 2.0, "ttft_p99.9": 10.0, "tbt_p99.9": 2.0, "throughput_tok_s": 150.0}
    assert improvement(base, cand) == {
        "ttft_p95": 2.0, "ttft_p99": 4.0, "ttft_p99.9": 1.0, "tbt_p99.9": 0.5, "throughput_tok_s": 1.5,
    }  # fmt: skip


def test_table_aligns_columns():
    table = format_table([{"preset": "vllm", "x": 1.23456}, {"preset": "fastswitch"}], ["preset", "x"])
    lines = table.splitlines()
    assert lines[0].split() == ["preset", "x"]
    assert lines[2].split() == ["vllm", "1.235"] and lines[3].split() == ["fastswitch", "-"]
    assert len({len(line) for line in lines}) == 1
