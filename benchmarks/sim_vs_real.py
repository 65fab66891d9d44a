"""The simulator against a real run: one multi-turn workload with preemptions, on the real engine (CPU,
wall clock) and in simulation on a profile of this CPU calibrated in the same run, per preset.

    python benchmarks/sim_vs_real.py                 # SmolLM2-135M (the embedded model), a few minutes
    python benchmarks/sim_vs_real.py --quick         # the tiny random Llama, about a minute
    python benchmarks/sim_vs_real.py --out sim_vs_real.json

Steps: per preset, (1) calibrate (fastswitch.sim.calibrate.calibrate_cpu): a workload of another seed
runs on the real engine with a pool that never swaps, every step timed (forward line, host time per
step, step-time jitter), and copies and their contention with this thread are measured; (2) the
workload runs on the real engine and on the simulated engine with that profile; (3) the relative error of the simulated
P50 and P90 of TTFT (over turns) and TBT (over token gaps) against the real ones. Goal: within 10% at
P50 and 20% at P90. The real run's times move with the machine's load; the calibration taken right
before each real run is what its simulation gets, so a load that holds through both cancels out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and its kernels.py would shadow the `kernels`
# package that transformers probes for at import: leave the folder out.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastswitch.build import build_engine  # noqa: E402
from fastswitch.config import EngineConfig  # noqa: E402
from fastswitch.model_sources import resolve_model  # noqa: E402
from fastswitch.models.loader import load_model  # noqa: E402
from fastswitch.sim.calibrate import calibrate_cpu  # noqa: E402
from fastswitch.sim.model_shapes import ModelShape  # noqa: E402
from fastswitch.sim.report import format_table  # noqa: E402
from fastswitch.sim.simulator import build_simulated_engine  # noqa: E402
from fastswitch.sim.workload_driver import replay, sleep_until  # noqa: E402
from fastswitch.workloads import synthetic_sharegpt  # noqa: E402

PRESETS = ("vllm", "fastswitch")
QUANTILES = (50, 90)


@dataclass(frozen=True)
class Setup:
    model: str | None  # resolve_model's argument
    conversations: int
    rate: float  # conversations per second
    mean_prompt_tokens: float
    mean_response_tokens: float
    think_time_mean: float
    max_model_len: int
    num_gpu_blocks: int  # small enough that contexts preempt each other
    calibration_conversations: int


FULL = Setup(None, 12, 1.0, 120, 60, 1.0, 1024, 96, 10)
QUICK = Setup("tiny-random", 12, 1000.0, 50, 24, 0.3, 256, 16, 8)


def workload_of(setup: Setup, seed: int, vocab_size: int, conversations: int):
    return synthetic_sharegpt(conversations, rate=setup.rate, seed=seed, mean_prompt_tokens=setup.mean_prompt_tokens,
                              mean_response_tokens=setup.mean_response_tokens, think_time_mean=setup.think_time_mean,
                              max_context_tokens=setup.max_model_len, vocab_range=(1, vocab_size))  # fmt: skip


def config_of(setup: Setup, preset: str, num_gpu_blocks: int, scheduler_mode: str | None) -> EngineConfig:
    extra = {} if scheduler_mode is None else {"scheduler_mode": scheduler_mode}
    # The torch attention: under TRITON_INTERPRET=1 (the test suite's setting) "auto" would interpret
    # the Triton kernels on CPU tensors, hundreds of times slower than any real run.
    return EngineConfig.from_preset(preset, num_gpu_blocks=num_gpu_blocks, max_model_len=setup.max_model_len,
                                    policy="fcfs", seed=0, attention_backend="torch", **extra)  # fmt: skip


def latencies(outputs) -> tuple[list[float], list[float]]:
    ttfts = [o.metrics.ttft for o in outputs if o.metrics.ttft is not None]
    return ttfts, [gap for o in outputs for gap in o.metrics.tbts]


def rel_error(simulated: list[float], real: list[float], q: float) -> float:
    r = float(np.percentile(real, q))
    return abs(float(np.percentile(simulated, q)) - r) / r


def compare(setup: Setup, seed: int = 0, scheduler_mode: str | None = None, log=print) -> dict:
    """Calibrates, runs both presets really and simulated; per preset the errors and the figures behind them.

    torch runs on one thread: on a machine shared with other jobs, several threads per op wait on each
    other at every barrier and single steps take 10-50x longer than usual, at random."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    loaded = load_model(resolve_model(setup.model), dtype="float32", progress=False)
    model = loaded.model
    shape = ModelShape.from_hf_config(loaded.hf_config, name=str(setup.model), dtype_bytes=4)
    calibration = workload_of(setup, seed + 1000, model.vocab_size, setup.calibration_conversations)
    workload = workload_of(setup, seed, model.vocab_size, setup.conversations)
    result: dict = {}
    for preset in PRESETS:
        # Calibrated right before each real run, so that both see the machine under the same load.
        profile = calibrate_cpu(model, calibration, setup.max_model_len, name="this-cpu", preset=preset,
                                scheduler_mode=scheduler_mode)  # fmt: skip
        log(f"{preset}: calibrated at {time.perf_counter() - started:.1f} s: {profile}")
        config = config_of(setup, preset, setup.num_gpu_blocks, scheduler_mode)
        real_engine = build_engine(model, config)
        real = latencies(replay(real_engine, workload, sleep_until))
        real_engine.close()
        sim = build_simulated_engine(config, shape, profile, max_model_len=setup.max_model_len)
        simulated = latencies(replay(sim.engine, workload, sim.clock.advance_to))
        sim.engine.close()
        log(f"{preset}: real and simulated runs done at {time.perf_counter() - started:.1f} s")
        row: dict = {}
        for name, s, r in (("ttft", simulated[0], real[0]), ("tbt", simulated[1], real[1])):
            for q in QUANTILES:
                row[f"{name}_p{q}_rel_error"] = rel_error(s, r, q)
                row[f"{name}_p{q}_real_s"] = float(np.percentile(r, q))
                row[f"{name}_p{q}_sim_s"] = float(np.percentile(s, q))
        row["preemptions_real"] = real_engine.stats()["num_preemptions"]
        row["preemptions_sim"] = sim.engine.stats()["num_preemptions"]
        result[preset] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny random Llama and a small workload (~1 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler-mode", help="EngineConfig.scheduler_mode of both presets (default: the config's)")
    parser.add_argument("--out", type=Path, help="write the errors as JSON here")
    args = parser.parse_args(argv)
    result = compare(QUICK if args.quick else FULL, args.seed, args.scheduler_mode)
    rows = [{"preset": preset, **values} for preset, values in result.items()]
    columns = [f"{n}_p{q}_{k}" for n in ("ttft", "tbt") for q in QUANTILES for k in ("real_s", "sim_s", "rel_error")]
    print(format_table(rows, ("preset", *columns, "preemptions_real", "preemptions_sim")))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
