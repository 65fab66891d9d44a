"""Run-level latency metrics: tail TTFT and TBT percentiles and throughput over finished requests.

Per-request records are `fastswitch.outputs.RequestMetrics` (TTFT, every token time, TBTs,
preemptions, swap stall time); this module aggregates them the way the paper reports them
(P50/P90/P95/P99/P99.9 TTFT and TBT, throughput in generated tokens per second of the run), plus the
paper's motivation figure, the share of tail latency spent stalled on swaps:

    stall_share_p99 = sum(swap_stall_total) / sum(e2e latency), over the requests whose end-to-end
                      latency is at or above the P99 end-to-end latency of the run

(`RequestMetrics.swap_stall_total`: time the engine was blocked on copies while the request was live,
plus the request's own overlapped swap-in waits).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastswitch.outputs import RequestMetrics

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
TAIL_PERCENTILE = 99.0  # stall_share_p99 looks at the requests at or above this e2e latency percentile


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); NaN for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q!r} must lie in [0, 100]")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _label(q: float) -> str:
    return f"p{q:g}".replace(".", "")  # 99.9 -> p999


@dataclass
class RunMetrics:
    """Accumulates finished requests' metrics; `summary` gives the run's table row.

    window: keep only the most recent `window` samples of each distribution (TTFT, TBT, latency and
    stall), so a server that runs for weeks holds bounded memory and its percentiles describe recent
    traffic; the counters (requests, tokens, preemptions, stall time, duration) stay cumulative.
    None (a benchmark run, the simulator): every sample, exact percentiles over the whole run."""

    window: int | None = None
    ttfts: deque[float] = field(init=False)
    tbts: deque[float] = field(init=False)
    latencies: deque[float] = field(init=False)  # end-to-end, per finished request
    stalls: deque[float] = field(init=False)  # swap_stall_total, in the order of latencies
    num_requests: int = 0
    num_generated_tokens: int = 0
    num_preemptions: int = 0
    swap_stall_time: float = 0.0
    first_arrival: float | None = None
    last_finish: float | None = None

    def __post_init__(self) -> None:
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window < 1):  # fmt: skip
            raise ValueError(f"window={self.window!r} must be a positive integer or None")
        self.ttfts, self.tbts = deque(maxlen=self.window), deque(maxlen=self.window)
        self.latencies, self.stalls = deque(maxlen=self.window), deque(maxlen=self.window)

    def add(self, metrics: RequestMetrics, num_output_tokens: int) -> None:
        self.num_requests += 1
        self.num_generated_tokens += num_output_tokens
        self.num_preemptions += metrics.num_preemptions
        self.swap_stall_time += metrics.swap_stall_time
        if metrics.ttft is not None:
            self.ttfts.append(metrics.ttft)
        self.tbts.extend(metrics.tbts)
        if metrics.e2e_latency is not None:
            self.latencies.append(metrics.e2e_latency)
            self.stalls.append(metrics.swap_stall_total)
        if self.first_arrival is None or metrics.arrival_time < self.first_arrival:
            self.first_arrival = metrics.arrival_time
        if metrics.finish_time is not None and (self.last_finish is None or metrics.finish_time > self.last_finish):
            self.last_finish = metrics.finish_time

    @property
    def duration(self) -> float:
        if self.first_arrival is None or self.last_finish is None:
            return 0.0
        return self.last_finish - self.first_arrival

    def stall_share(self, q: float = TAIL_PERCENTILE) -> float:
        """Share of the latency of the requests at or above the q-th e2e latency percentile that was
        spent stalled on swaps; NaN without finished requests."""
        threshold = percentile(self.latencies, q)
        if math.isnan(threshold):
            return math.nan
        tail = [(lat, stall) for lat, stall in zip(self.latencies, self.stalls) if lat >= threshold]
        total = sum(lat for lat, _ in tail)
        return sum(stall for _, stall in tail) / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {
            "num_finished_requests": self.num_requests,
            "num_generated_tokens": self.num_generated_tokens,
            "num_preemptions": self.num_preemptions,
            "request_swap_stall_time": self.swap_stall_time,
            "duration": self.duration,
            "throughput_tokens_per_s": self.num_generated_tokens / self.duration if self.duration > 0 else 0.0,
        }
        for q in PERCENTILES:
            out[f"ttft_{_label(q)}"] = percentile(self.ttfts, q)
            out[f"tbt_{_label(q)}"] = percentile(self.tbts, q)
        out["e2e_p99"] = percentile(self.latencies, TAIL_PERCENTILE)
        out["stall_share_p99"] = self.stall_share()
        return out
