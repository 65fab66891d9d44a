"""Runs an experiment: one simulation per (rate, seed, preset), in parallel, then tables and JSON.

Jobs are independent simulations, so they spread over local processes (multiprocessing) by default.
With `ray_address` they run as Ray tasks on that cluster instead: Ray is the scale-out path for
sweeps too large for one machine, and an optional dependency (`pip install ray`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fastswitch.sim.experiments import Experiment
from fastswitch.sim.report import HEADLINE_METRICS, format_table, improvement
from fastswitch.sim.simulator import simulate
from fastswitch.workloads import synthetic_sharegpt

BASELINE_PRESET = "vllm"
TABLE_COLUMNS = ("rate", "seed", "preset", *HEADLINE_METRICS, "num_preemptions", "copy_calls",
                 "executor_idle_on_swaps", "wall_time_s")  # fmt: skip


@dataclass(frozen=True)
class Job:
    experiment: Experiment
    preset: str
    seed: int
    rate: float


def jobs_of(experiment: Experiment) -> list[Job]:
    """Every (rate, seed, preset) of the experiment, in table order."""
    rates = experiment.rates or (experiment.rate,)
    return [Job(experiment, p, s, r) for r in rates for s in experiment.seeds for p in experiment.presets]


def run_job(job: Job, progress: bool = False) -> dict:
    """One simulation; the result dict carries the job's coordinates beside the run's metrics."""
    exp = job.experiment
    config = exp.engine_config(job.preset, job.seed)
    workload_settings = {"max_context_tokens": config.max_model_len or 8192, **exp.workload}
    workload = synthetic_sharegpt(num_conversations=exp.num_conversations, rate=exp.conversation_rate(job.rate),
                                  seed=job.seed, **workload_settings)  # fmt: skip
    result = simulate(config, exp.model_shape(), exp.hardware_profile(), workload, progress=progress)
    return {"experiment": exp.name, "model": exp.model, "hardware": exp.hardware, "preset": job.preset,
            "seed": job.seed, "rate": job.rate, "num_conversations": exp.num_conversations,
            "num_turns": workload.num_turns, **result}  # fmt: skip


def _run_on_ray(jobs: Sequence[Job], address: str, progress: bool) -> list[dict]:
    try:
        import ray
    except ImportError as error:
        raise ValueError(f"ray_address={address!r} needs ray installed (pip install ray)") from error
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(run_job)
    refs = [remote.remote(job) for job in jobs]
    results: dict = {}
    pending = list(refs)
    with tqdm(total=len(refs), desc="ray jobs", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[ready[0]] = ray.get(ready[0])
            bar.update(1)
    return [results[ref] for ref in refs]


def run_jobs(jobs: Sequence[Job], processes: int | None = None, ray_address: str | None = None,
             progress: bool = True) -> list[dict]:  # fmt: skip
    """Results in the order of jobs. processes=None uses one process per CPU core (at most one per job);
    1 runs in this process with a progress bar per simulation."""
    if processes is not None and processes < 1:
        raise ValueError(f"processes={processes} must be at least 1")
    if ray_address:
        return _run_on_ray(jobs, ray_address, progress)
    workers = min(processes or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        return [run_job(job, progress=progress) for job in jobs]
    # Forked workers start at once with every module imported (a spawned one re-imports torch and
    # transformers, ~10 s). Simulations touch no torch kernels, so torch's thread pools are no hazard.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        results = list(tqdm(pool.imap(run_job, jobs), total=len(jobs), desc="simulations", disable=not progress))
    return results


def comparison_rows(results: Sequence[dict]) -> list[dict]:
    """Each preset's improvement over the vLLM baseline of the same rate and seed (> 1 is better)."""
    baselines = {(r["rate"], r["seed"]): r for r in results if r["preset"] == BASELINE_PRESET}
    rows = []
    for r in results:
        base = baselines.get((r["rate"], r["seed"]))
        if base is None or r is base:
            continue
        rows.append({"rate": r["rate"], "seed": r["seed"], "preset": f"{r['preset']} / vllm", **improvement(base, r)})
    return rows


def render_tables(results: Sequence[dict]) -> str:
    text = format_table(results, TABLE_COLUMNS)
    rows = comparison_rows(results)
    if rows:
        text += "\n\nimprovement over vllm (x, > 1 is better)\n"
        text += format_table(rows, ("rate", "seed", "preset", *HEADLINE_METRICS))
    return text


def save_results(experiment: Experiment, results: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "experiment": experiment.name,
        "description": experiment.description,
        "model": experiment.model,
        "hardware": experiment.hardware,
        "runs": list(results),
        "improvement_over_vllm": comparison_rows(results),
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
