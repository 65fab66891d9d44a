"""Runs an experiment: one simulation per (rate, seed, preset), in parallel, then tables and JSON.

Jobs are independent simulations, so they spread over local processes (multiprocessing) by default.
With `ray_address` they run as Ray tasks instead: an existing cluster's address ("auto", or
"ray://host:10001"), or "local" to start a Ray instance on this machine for the run. Ray is the
scale-out path for sweeps too large for one machine, and an optional dependency (`pip install ray`).

Load: each run records `offered_tokens_per_s`, the tokens its workload asks for per second had every
turn been answered the moment it arrived (all response tokens over the span from the first
conversation's start to the last turn's arrival, each turn following the previous after its think
time alone), and `served_tokens_per_s`, the tokens generated per second of the run (first arrival to
last finish, the throughput). Served well below offered means the run was overloaded: queues grew.
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
from fastswitch.sim.report import HEADLINE_METRICS, RUN_METRICS, format_table, improvement, summarize, with_range
from fastswitch.sim.simulator import simulate
from fastswitch.workloads import Workload, synthetic_sharegpt

BASELINE_PRESET = "vllm"
TABLE_COLUMNS = ("rate", "seed", "preset", "scheduler_mode", *RUN_METRICS, "num_preemptions", "copy_calls",
                 "executor_idle_on_swaps", "priority_trace_digest", "wall_time_s")  # fmt: skip
LOAD_COLUMNS = ("offered_tokens_per_s", "served_tokens_per_s")


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


def offered_tokens_per_s(workload: Workload) -> float:
    """Response tokens per second the workload asks for, had every turn been answered at once (see above)."""
    conversations = workload.conversations
    if not conversations:
        return 0.0
    first = min(c.start_time for c in conversations)
    last = max(c.start_time + sum(t.think_time for t in c.turns) for c in conversations)
    tokens = sum(t.response_tokens for c in conversations for t in c.turns)
    return tokens / (last - first) if last > first else float("inf")


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
            "num_turns": workload.num_turns, "offered_tokens_per_s": offered_tokens_per_s(workload),
            **result, "served_tokens_per_s": result["throughput_tokens_per_s"]}  # fmt: skip


def _run_on_ray(jobs: Sequence[Job], address: str, progress: bool, num_cpus: int | None) -> list[dict]:
    try:
        import ray
    except ImportError as error:
        raise ValueError(f"ray_address={address!r} needs ray installed (pip install ray)") from error
    started_here = not ray.is_initialized()
    if address == "local":  # a Ray instance on this machine, for this run only
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False)  # fmt: skip
    else:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    try:
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
    finally:
        if started_here:
            ray.shutdown()


def run_jobs(jobs: Sequence[Job], processes: int | None = None, ray_address: str | None = None,
             progress: bool = True) -> list[dict]:  # fmt: skip
    """Results in the order of jobs. processes=None uses one process per CPU core (at most one per job);
    1 runs in this process with a progress bar per simulation. With ray_address the jobs are Ray tasks;
    for "local", processes is the CPU count of the Ray instance started (each CPU one worker process,
    which imports torch once: fewer workers start sooner)."""
    if processes is not None and processes < 1:
        raise ValueError(f"processes={processes} must be at least 1")
    if ray_address:
        return _run_on_ray(jobs, ray_address, progress, processes)
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
    """Every run, then (with several seeds) each preset's metrics as mean [min-max] over seeds, then
    the improvement over vllm: per seed, and as mean [min-max] over seeds."""
    text = format_table(results, TABLE_COLUMNS)
    summary = summarize(results, BASELINE_PRESET)
    several_seeds = any(row["seeds"] > 1 for row in summary)
    if several_seeds:
        text += "\n\nmean [min-max] over seeds\n"
        text += format_table(with_range(summary, list(RUN_METRICS)), ("rate", "preset", "seeds", *RUN_METRICS))
    rows = comparison_rows(results)
    if rows:
        text += "\n\nimprovement over vllm (x, > 1 is better), per seed\n"
        text += format_table(rows, ("rate", "seed", "preset", *HEADLINE_METRICS))
        if several_seeds:
            ratio_names = [name for name, better in RUN_METRICS.items() if better is not None]
            ratio_rows = [{**row, "preset": f"{row['preset']} / vllm"}
                          for row in summary if row["preset"] != BASELINE_PRESET]  # fmt: skip
            text += "\n\nimprovement over vllm (x, > 1 is better), mean [min-max] over seeds, with the load\n"
            cells = with_range(ratio_rows, [f"{name}_x" for name in ratio_names] + list(LOAD_COLUMNS))
            text += format_table(cells, ("rate", "preset", *LOAD_COLUMNS, *(f"{n}_x" for n in ratio_names)))
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
        "over_seeds": summarize(results, BASELINE_PRESET),
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
