"""Sweep of the adaptive swap rule's threshold in simulation: when is waiting for a swap worth it?

With asynchronous swapping the scheduler waits for a swap in the same step (instead of overlapping
it) when the copy's estimated time, times the requests of the batch that the wait holds up, is at
most `sync_swap_fraction` of the recent step time (fastswitch/sched/adaptive_swap.py). A fraction of 0
never waits; a large one always does. This runs the fastswitch preset of a named experiment at each
fraction over several seeds (the vllm preset once per seed, as the baseline the ratios refer to) and
prints tail TTFT/TBT, throughput and the executor's time waiting on swaps.

    python benchmarks/swap_rule_sweep.py [--experiment llama8b-a10] [--conversations 200]
                                         [--fractions 0 0.1 0.25 0.5 1] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fastswitch.sim.experiments import get_experiment
from fastswitch.sim.report import format_table
from fastswitch.sim.runner import Job, run_jobs

METRICS = ("ttft_p95", "ttft_p99", "ttft_p999", "tbt_p999", "throughput_tokens_per_s", "executor_idle_on_swaps")
LOWER_IS_BETTER = {"ttft_p95", "ttft_p99", "ttft_p999", "tbt_p999", "executor_idle_on_swaps"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="llama8b-a10")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--processes", type=int, default=None)
    args = parser.parse_args()

    base = get_experiment(args.experiment).replace(num_conversations=args.conversations)
    jobs = [Job(base, "vllm", seed, base.rate) for seed in args.seeds]
    for fraction in args.fractions:
        experiment = base.replace(engine={**base.engine, "sync_swap_fraction": fraction})
        jobs += [Job(experiment, "fastswitch", seed, base.rate) for seed in args.seeds]
    results = run_jobs(jobs, processes=args.processes)
    baselines = {r["seed"]: r for r in results[: len(args.seeds)]}

    rows = []
    for i, fraction in enumerate(args.fractions):
        runs = results[len(args.seeds) * (i + 1) : len(args.seeds) * (i + 2)]
        row = {"sync_swap_fraction": fraction}
        for metric in METRICS:
            row[metric] = statistics.mean(r[metric] for r in runs)
        # Improvement over vllm, seed by seed, then averaged (> 1 is better).
        for metric in METRICS[:5]:
            ratios = [
                baselines[r["seed"]][metric] / r[metric]
                if metric in LOWER_IS_BETTER
                else r[metric] / baselines[r["seed"]][metric]
                for r in runs
            ]
            row[f"{metric}_x"] = statistics.mean(ratios)
        rows.append(row)

    print(f"{args.experiment}, {args.conversations} conversations, seeds {args.seeds}: fastswitch at each "
          "sync_swap_fraction (means over seeds; _x columns: improvement over vllm of the same seed)\n")
    print(format_table(rows, ("sync_swap_fraction", *METRICS)))
    print()
    print(format_table(rows, ("sync_swap_fraction", *(f"{m}_x" for m in METRICS[:5]))))
    out = Path(__file__).parent / "results" / "swap_rule_sweep.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"experiment": args.experiment, "conversations": args.conversations,
                               "seeds": args.seeds, "rows": rows, "runs": results}, indent=1) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
