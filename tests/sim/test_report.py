from fastswitch.sim.report import format_table, improvement


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
