"""/metrics: the engine's counters in Prometheus' text format, named after vLLM's (`vllm:` -> `fastswitch:`).

Gauges and counters are read from the snapshot the engine thread publishes (never the engine
itself: a scrape takes no lock and waits for no step). The latency histograms are filled by the
engine thread as each request finishes (prometheus_client's histograms are thread-safe). Each app
has its own registry, so several servers in one process do not share series.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fastswitch.outputs import RequestOutput
from fastswitch.server.engine_thread import EngineThread

PREFIX = "fastswitch:"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)  # fmt: skip

# (series, help, stats key); counters get Prometheus' _total suffix from the client library.
GAUGES = (
    ("num_requests_running", "Requests whose KV is on the device.", "num_requests_running"),
    ("num_requests_waiting", "Requests waiting for their (re)prefill.", "num_requests_waiting"),
    ("num_requests_swapped", "Preempted requests whose KV is on the host.", "num_requests_swapped"),
)
COUNTERS = (
    ("num_preemptions", "Preemptions of requests.", "num_preemptions_all"),
    ("prompt_tokens", "Prompt tokens computed (again after a recompute).", "num_prompt_tokens"),
    ("generation_tokens", "Tokens generated.", "num_generated_tokens"),
    ("swap_out", "Swap-outs (device to host).", "swap_out_count"),
    ("swap_in", "Swap-ins (host to device).", "swap_in_count"),
    ("swap_out_bytes", "Bytes copied device to host.", "swap_out_bytes"),
    ("swap_in_bytes", "Bytes copied host to device.", "swap_in_bytes"),
    ("swap_copy_calls", "Copy calls issued for swaps.", "copy_calls"),
    ("request_success", "Requests finished (not aborted or failed).", "num_finished_requests"),
)


class _SnapshotCollector:
    def __init__(self, engine_thread: EngineThread) -> None:
        self.engine_thread = engine_thread

    def collect(self):
        stats = self.engine_thread.stats  # one published dict: read without a lock
        for name, doc, key in GAUGES:
            yield GaugeMetricFamily(PREFIX + name, doc, value=stats[key])
        for pool, total, free in (
            ("gpu", "num_gpu_blocks", "num_free_gpu_blocks"),
            ("cpu", "num_cpu_blocks", "num_free_cpu_blocks"),
        ):
            usage = 1.0 - stats[free] / stats[total] if stats[total] else 0.0
            doc = f"Share of the {pool} KV pool in use (1 = full)."
            yield GaugeMetricFamily(f"{PREFIX}{pool}_cache_usage_perc", doc, value=usage)
        for name, doc, key in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, doc, value=stats[key])


def add_metrics_route(app: FastAPI, engine_thread: EngineThread) -> None:
    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(engine_thread))
    ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token.", buckets=LATENCY_BUCKETS,
                     registry=registry)  # fmt: skip
    tbt = Histogram(PREFIX + "inter_token_latency_seconds", "Time between consecutive output tokens.",
                    buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Arrival to finish of a request.",
                    buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip

    def observe(output: RequestOutput) -> None:  # on the engine thread, as a request finishes
        metrics = output.metrics
        if metrics.ttft is not None:
            ttft.observe(metrics.ttft)
        for gap in metrics.tbts:
            tbt.observe(gap)
        if metrics.e2e_latency is not None:
            e2e.observe(metrics.e2e_latency)

    engine_thread.on_finished.append(observe)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus' text exposition format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
