"""The paper's evaluation in simulation: vllm vs fastswitch on both setups, the ablation, a rate sweep.

    python benchmarks/paper_eval.py                      # paper scale for the two setups, seeds 0-2
    python benchmarks/paper_eval.py --conversations 200  # a quicker pass
    python benchmarks/paper_eval.py --scheduler-mode vllm-0.3.3 --ray-address local

Every run keeps the library's real scheduler, allocators, swap manager and reuse logic; only GPU work
is priced by the roofline cost model (fastswitch/sim). Prints each experiment's table, then the
improvements (mean [min-max] over seeds, with the load offered and served) beside the paper's
reported ranges, and writes benchmarks/results/paper_eval.json (every run, and each preset's figures
and improvement over vllm as mean/min/max over seeds) plus figures in benchmarks/results/paper_eval/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fastswitch.sim.experiments import get_experiment
from fastswitch.sim.plots import plot_experiment
from fastswitch.sim.report import format_table, summarize
from fastswitch.sim.runner import BASELINE_PRESET, comparison_rows, jobs_of, render_tables, run_jobs

RESULTS = Path(__file__).parent / "results"

# FastSwitch (arXiv 2411.18424) against vLLM 0.3.3, as reported (ranges over its setups and patterns).
PAPER_CLAIMS = {
    "ttft_p95": "1.4-5.8x",
    "ttft_p99": "1.4-5.8x",
    "ttft_p999": "1.4-5.8x",
    "tbt_p999": "up to 11.2x",
    "throughput_tokens_per_s": "up to 1.44x",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000, help="per run of the two paper setups")
    parser.add_argument("--small-conversations", type=int, default=300, help="per run of the ablation and sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scheduler-mode", help="Experiment.scheduler_mode of every run (default: the experiment's)")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--ray-address", help="run the simulations as Ray tasks ('local' starts an instance)")
    parser.add_argument("--skip", nargs="*", default=[], help="experiment names to leave out")
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_eval.json")
    args = parser.parse_args()

    plan = [
        get_experiment("llama8b-a10").replace(num_conversations=args.conversations),
        get_experiment("qwen32b-a100").replace(num_conversations=args.conversations),
        get_experiment("ablation-llama8b-a10").replace(num_conversations=args.small_conversations),
        get_experiment("rate-sweep-llama8b-a10").replace(num_conversations=args.small_conversations),
    ]
    plan = [exp for exp in plan if exp.name not in args.skip]
    mode = {} if args.scheduler_mode is None else {"scheduler_mode": args.scheduler_mode}
    plan = [exp.replace(seeds=tuple(args.seeds), **mode) for exp in plan]
    document: dict = {"paper_claims": PAPER_CLAIMS, "experiments": {}}
    summary_rows = []
    for exp in plan:
        started = time.perf_counter()
        results = run_jobs(jobs_of(exp), processes=args.processes, ray_address=args.ray_address)
        print(f"\n== {exp.name}: {exp.description} ({exp.num_conversations} conversations, "
              f"{time.perf_counter() - started:.0f} s)\n")  # fmt: skip
        print(render_tables(results))
        plot_experiment(results, RESULTS / "paper_eval")
        document["experiments"][exp.name] = {"num_conversations": exp.num_conversations, "seeds": list(exp.seeds),
                                             "runs": results, "improvement_over_vllm": comparison_rows(results),
                                             "over_seeds": summarize(results, BASELINE_PRESET)}  # fmt: skip
        summary_rows += [{"experiment": exp.name, **row} for row in summarize(results, BASELINE_PRESET)
                         if row["preset"] != BASELINE_PRESET]  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")  # after each experiment: a long run keeps its part

    print("\n== improvement over vllm (x, > 1 is better, mean over seeds), beside the paper's claims\n")
    claims = {f"{name}_x": claim for name, claim in PAPER_CLAIMS.items()}
    columns = ("experiment", "rate", "preset", "offered_tokens_per_s", "served_tokens_per_s", *claims)
    print(format_table(summary_rows + [{"experiment": "paper", "preset": "fastswitch", **claims}], columns))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
