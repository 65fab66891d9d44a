"""Comparison tables: the paper's metrics side by side, how many times better a run is, over seeds.

The metrics themselves come from the engine (`fastswitch.sched.metrics.RunMetrics` via
`Engine.stats()`): P95, P99 and P99.9 TTFT over every turn, P99.9 TBT over every token gap,
throughput in generated tokens per second, and `stall_share_p99`; the simulator adds the load
(`offered_tokens_per_s`, `served_tokens_per_s`, see fastswitch/sim/runner.py) and the mean copy time
of one sequence's swap (`mean_swap_latency_s`). `summarize` gives mean, min and max over seeds of
each metric per (rate, preset), and of each preset's improvement over the baseline of the same seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

# The columns of the paper's comparison, in order, and whether larger is better.
HEADLINE_METRICS = {
    "ttft_p95": False,
    "ttft_p99": False,
    "ttft_p999": False,
    "tbt_p999": False,
    "throughput_tokens_per_s": True,
}


# Every metric a run reports per preset and seed, and whether larger is better (None: neither, a load).
RUN_METRICS = {
    "offered_tokens_per_s": None,
    "served_tokens_per_s": None,
    **HEADLINE_METRICS,
    "stall_share_p99": False,
    "mean_swap_latency_s": False,
    "swap_out_bytes": False,
}


def improvement(baseline: dict[str, float], candidate: dict[str, float],
                metrics: Mapping[str, bool | None] = HEADLINE_METRICS) -> dict[str, float]:  # fmt: skip
    """How many times better the candidate is on each metric that has a better direction (> 1 is better)."""
    ratios = {}
    for name, larger_is_better in metrics.items():
        if larger_is_better is None:
            continue
        b, c = baseline.get(name, float("nan")), candidate.get(name, float("nan"))
        if larger_is_better:
            ratios[name] = c / b if b else float("nan")
        else:
            ratios[name] = b / c if c else float("nan")
    return ratios


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, min and max of values (NaNs left out; all NaN for none)."""
    kept = [v for v in values if v == v]
    if not kept:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": statistics.fmean(kept), "min": min(kept), "max": max(kept)}


def summarize(results: Sequence[dict], baseline: str, metrics: dict[str, bool | None] = RUN_METRICS) -> list[dict]:
    """One row per (rate, preset): each metric's mean/min/max over seeds (keys metric, metric_min,
    metric_max), and each preset's improvement over the baseline preset of the same rate and seed
    (keys metric_x, metric_x_min, metric_x_max; > 1 is better)."""
    baselines = {(r["rate"], r["seed"]): r for r in results if r["preset"] == baseline}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["rate"], r["preset"]), []).append(r)
    rows = []
    for (rate, preset), runs in groups.items():
        row: dict = {"rate": rate, "preset": preset, "seeds": len(runs)}
        for name in metrics:
            s = spread([float(r.get(name, float("nan"))) for r in runs])
            row[name], row[f"{name}_min"], row[f"{name}_max"] = s["mean"], s["min"], s["max"]
        ratios = [improvement(baselines[(rate, r["seed"])], r, metrics) for r in runs if (rate, r["seed"]) in baselines]
        for name in ratios[0] if ratios else ():
            s = spread([x[name] for x in ratios])
            row[f"{name}_x"], row[f"{name}_x_min"], row[f"{name}_x_max"] = s["mean"], s["min"], s["max"]
        rows.append(row)
    return rows


def with_range(rows: Iterable[dict], names: Sequence[str]) -> list[dict]:
    """rows with each named metric written as one cell 'mean [min-max]'."""
    out = []
    for row in rows:
        cells = dict(row)
        for name in names:
            if name in row:
                cells[name] = f"{_cell(row[name])} [{_cell(row[f'{name}_min'])}-{_cell(row[f'{name}_max'])}]"
        out.append(cells)
    return out


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
