"""Comparison tables: the paper's headline metrics side by side, and how many times better a run is.

The metrics themselves come from the engine (`fastswitch.sched.metrics.RunMetrics` via
`Engine.stats()`): P95, P99 and P99.9 TTFT over every turn, P99.9 TBT over every token gap, and
throughput in generated tokens per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# The columns of the paper's comparison, in order, and whether larger is better.
HEADLINE_METRICS = {
    "ttft_p95": False,
    "ttft_p99": False,
    "ttft_p999": False,
    "tbt_p999": False,
    "throughput_tokens_per_s": True,
}


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
