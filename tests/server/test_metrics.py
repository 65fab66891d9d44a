"""/metrics parses as Prometheus' text format, and its counters and histograms move with the traffic."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from server_harness import http_json


def scrape(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_parse_and_move_with_traffic(server):
    base_url, _ = server
    before = scrape(base_url)
    names = ("num_requests_running", "num_requests_waiting", "num_requests_swapped", "gpu_cache_usage_perc",
             "cpu_cache_usage_perc", "num_preemptions_total", "swap_out_total", "swap_in_bytes_total",
             "swap_copy_calls_total")  # fmt: skip
    for name in names:
        assert f"fastswitch:{name}" in before, name
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 5, "ignore_eos": True}
    status, _ = http_json(base_url, "POST", "/v1/completions", body)
    assert status == 200
    finished = before.get("fastswitch:request_success_total", 0) + 1
    deadline = time.monotonic() + 30  # the engine thread republishes its snapshot once idle
    while (after := scrape(base_url)).get("fastswitch:request_success_total", 0) < finished:
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert after["fastswitch:generation_tokens_total"] - before["fastswitch:generation_tokens_total"] == 5
    assert after["fastswitch:prompt_tokens_total"] - before["fastswitch:prompt_tokens_total"] == 4
    assert (
        after["fastswitch:time_to_first_token_seconds_count"]
        - before.get("fastswitch:time_to_first_token_seconds_count", 0)
        == 1
    )
    assert (
        after["fastswitch:inter_token_latency_seconds_count"]
        - before.get("fastswitch:inter_token_latency_seconds_count", 0)
        == 4
    )
    assert (
        after["fastswitch:e2e_request_latency_seconds_count"]
        - before.get("fastswitch:e2e_request_latency_seconds_count", 0)
        == 1
    )
