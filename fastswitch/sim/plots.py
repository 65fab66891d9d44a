"""Figures of an experiment's results (matplotlib, written as PNG files).

- latency CDFs: TTFT and TBT of each preset (the paper's CDF figures);
- improvement bars: each preset's headline metrics over the vLLM baseline;
- rate sweep: P99 TTFT, P99.9 TBT and throughput against the arrival rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from fastswitch.sim.report import HEADLINE_METRICS
from fastswitch.sim.runner import comparison_rows


def plot_latency_cdfs(results: Sequence[dict], path: Path) -> Path:
    """TTFT and TBT CDFs of every preset at the first rate and seed."""
    rate, seed = results[0]["rate"], results[0]["seed"]
    runs = [r for r in results if r["rate"] == rate and r["seed"] == seed]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "ttft_cdf", "TTFT (s)"), (axes[1], "tbt_cdf", "TBT (s)")):
        for run in runs:
            values = run[key]
            if values:
                ax.plot(values, np.linspace(0.0, 1.0, len(values)), label=run["preset"])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results[0]['experiment']}: latency CDFs at {rate:g} req/s, seed {seed}")
    return _save(fig, path)


def plot_improvements(results: Sequence[dict], path: Path) -> Path:
    """Bars: how many times better each preset is than vLLM on each headline metric (mean over seeds)."""
    rows = comparison_rows(results)
    rate = results[0]["rate"]
    by_preset: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["rate"] == rate:
            by_preset[row["preset"]].append(row)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = list(HEADLINE_METRICS)
    width = 0.8 / max(len(by_preset), 1)
    for i, (preset, preset_rows) in enumerate(by_preset.items()):
        means = [float(np.nanmean([r[m] for r in preset_rows])) for m in names]
        ax.bar(np.arange(len(names)) + i * width, means, width, label=preset)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)) + width * (len(by_preset) - 1) / 2, names)
    ax.set_ylabel("x better than vllm")
    ax.legend()
    ax.set_title(f"{results[0]['experiment']}: improvement over vllm at {rate:g} req/s")
    return _save(fig, path)


def plot_rate_sweep(results: Sequence[dict], path: Path) -> Path:
    """P99 TTFT, P99.9 TBT and throughput against arrival rate, one line per preset (mean over seeds)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    presets = list(dict.fromkeys(r["preset"] for r in results))
    for ax, key, label in zip(axes, ("ttft_p99", "tbt_p999", "throughput_tokens_per_s"),
                              ("P99 TTFT (s)", "P99.9 TBT (s)", "throughput (tokens/s)")):  # fmt: skip
        for preset in presets:
            rates = sorted({r["rate"] for r in results if r["preset"] == preset})
            values = [np.mean([r[key] for r in results if r["preset"] == preset and r["rate"] == x]) for x in rates]
            ax.plot(rates, values, marker="o", label=preset)
        ax.set_xlabel("request rate (turns/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results[0]['experiment']}: rate sweep")
    return _save(fig, path)


def plot_experiment(results: Sequence[dict], directory: Path) -> list[Path]:
    """Every figure that fits the results (the sweep needs two or more rates); returns the files."""
    name = results[0]["experiment"]
    paths = [plot_latency_cdfs(results, directory / f"{name}-cdf.png")]
    if any(r["preset"] != "vllm" for r in results) and any(r["preset"] == "vllm" for r in results):
        paths.append(plot_improvements(results, directory / f"{name}-improvement.png"))
    if len({r["rate"] for r in results}) > 1:
        paths.append(plot_rate_sweep(results, directory / f"{name}-rates.png"))
    return paths


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
