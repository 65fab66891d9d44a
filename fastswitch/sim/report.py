"""Run summaries and tables: the paper's metrics from per-turn latencies, and text tables of runs.

The paper reports P95, P99 and P99.9 TTFT, P99.9 TBT and throughput. Percentiles here interpolate
linearly between order statistics (numpy's default), so P99.9 of fewer than 1,000 samples lies
between the two largest values rather than being the maximum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PERCENTILES = (50.0, 95.0, 99.0, 99.9)
# The columns of the paper's comparison, in order, and whether larger is better.
HEADLINE_METRICS = {
    "ttft_p95": False,
    "ttft_p99": False,
    "ttft_p99.9": False,
    "tbt_p99.9": False,
    "throughput_tok_s": True,
}


def _pct_key(p: float) -> str:
    return f"p{p:g}"


def latency_summary(
    ttfts: Sequence[float], tbts: Sequence[float], output_tokens: int, duration: float
) -> dict[str, float]:
    """Percentiles of TTFT and TBT (seconds), throughput (output tokens per second) and counts."""
    if duration < 0:
        raise ValueError(f"duration={duration} s must be >= 0")
    summary: dict[str, float] = {"turns": float(len(ttfts)), "output_tokens": float(output_tokens)}
    for name, values in (("ttft", ttfts), ("tbt", tbts)):
        array = np.asarray(values, dtype=np.float64)
        for p in PERCENTILES:
            summary[f"{name}_{_pct_key(p)}"] = float(np.percentile(array, p)) if array.size else float("nan")
        summary[f"{name}_mean"] = float(array.mean()) if array.size else float("nan")
    summary["throughput_tok_s"] = output_tokens / duration if duration > 0 else float("nan")
    summary["duration_s"] = duration
    return summary


def improvement(baseline: dict[str, float], candidate: dict[str, float]) -> dict[str, float]:
    """How many times better the candidate is on each headline metric (> 1 is better)."""
    ratios = {}
    for name, larger_is_better in HEADLINE_METRICS.items():
        b, c = baseline.get(name, float("nan")), candidate.get(name, float("nan"))
        if larger_is_better:
            ratios[name] = c / b if b else float("nan")
        else:
            ratios[name] = b / c if c else float("nan")
    return ratios


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_table(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """A fixed-width text table of the given columns (missing cells print as '-')."""
    rows = list(rows)
    cells = [[_cell(row.get(c, float("nan"))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
