"""`python -m fastswitch.sim EXPERIMENT`: run a named experiment, print its table, write JSON and plots.

Examples:
    python -m fastswitch.sim --list
    python -m fastswitch.sim smoke
    python -m fastswitch.sim llama8b-a10 --seeds 0 1 2
    python -m fastswitch.sim ablation-llama8b-a10 --conversations 300
    python -m fastswitch.sim rate-sweep-llama8b-a10 --processes 4
    python -m fastswitch.sim qwen32b-a100 --ray-address auto      # Ray cluster, when ray is installed
    python -m fastswitch.sim llama8b-a10 --seeds 0 1 2 --ray-address local --processes 2   # a local Ray instance
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fastswitch.sim.experiments import EXPERIMENTS, get_experiment
from fastswitch.sim.runner import jobs_of, render_tables, run_jobs, save_results

DEFAULT_OUT = Path("benchmarks/results/sim")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastswitch.sim", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("experiment", nargs="?", help="a named experiment (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named experiments and exit")
    parser.add_argument(
        "--presets", nargs="+", help="presets or ablation steps, e.g. vllm vllm+block_groups fastswitch"
    )
    parser.add_argument("--conversations", type=int, help="number of conversations (paper: 1000)")
    parser.add_argument(
        "--rate", type=float, help="requests (turns) per second (paper: 1); conversations start at rate / 5.5"
    )
    parser.add_argument("--rates", type=float, nargs="+", help="sweep over these request rates")
    parser.add_argument("--seeds", type=int, nargs="+", help="workload and engine seeds")
    parser.add_argument("--processes", type=int, help="local worker processes, or the CPUs of a local Ray instance "
                        "(default: one per core)")
    parser.add_argument("--ray-address", help="run the jobs as Ray tasks on this cluster ('auto', 'ray://host:port'), "
                        "or 'local' to start an instance for the run (needs ray)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list or not args.experiment:
        for name, exp in EXPERIMENTS.items():
            print(f"{name:26s} {exp.description}")
        return 0
    experiment = get_experiment(args.experiment)
    changes = {
        "presets": tuple(args.presets) if args.presets else None,
        "num_conversations": args.conversations,
        "rate": args.rate,
        "rates": tuple(args.rates) if args.rates else None,
        "seeds": tuple(args.seeds) if args.seeds else None,
    }
    experiment = experiment.replace(**{k: v for k, v in changes.items() if v is not None})
    jobs = jobs_of(experiment)
    for job in jobs:  # a bad preset name fails here, before any simulation starts
        experiment.engine_config(job.preset, job.seed)
    started = time.perf_counter()
    results = run_jobs(jobs, processes=args.processes, ray_address=args.ray_address, progress=not args.quiet)
    print(f"{experiment.name}: {experiment.description}")
    print(f"{experiment.num_conversations} conversations, {len(jobs)} simulations in "
          f"{time.perf_counter() - started:.1f} s\n")  # fmt: skip
    print(render_tables(results))
    json_path = args.out / f"{experiment.name}.json"
    save_results(experiment, results, json_path)
    print(f"\nwrote {json_path}")
    if not args.no_plots:
        from fastswitch.sim.plots import plot_experiment  # matplotlib only when plotting

        for path in plot_experiment(results, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
