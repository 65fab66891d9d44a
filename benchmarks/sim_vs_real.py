"""The simulator against a real run: one multi-turn workload with preemptions, on the real engine (CPU,
wall clock) and in simulation on a profile of this CPU calibrated in the same run, per preset.

    python benchmarks/sim_vs_real.py                 # SmolLM2-135M (embedded), ~4.5 min at load average 2-3
    python benchmarks/sim_vs_real.py --quick         # the tiny random Llama, under a minute
    python benchmarks/sim_vs_real.py --out sim_vs_real.json

Steps: (1) calibrate (fastswitch.sim.cpu_calibration.CpuCalibrator): a workload of another seed runs in
the simulator for both presets, and the real model is timed on a draw of the batches those runs make;
(2) timing sessions of those batches are taken before the first real run, between the two and after
the second, so a load that changes during the benchmark shows (load factors and load averages are
reported per session, and per preset the change over its real run); the profile's forward line is
fitted from each batch's median over the three sessions (a burst of load during one does not move
it) and its step-time jitter from all their timings (the spread as the load came and went);
(3) per preset the workload runs on the real engine, every step timed, and on the simulated engine
with that profile; (4) the relative error of the simulated P50 and P90 of TTFT (over turns) and TBT (over token
gaps) against the real ones, and per real step the forward time the profile predicts against the one
measured. Goal: within 10% at P50 and 20% at P90.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastswitch.build import build_engine
from fastswitch.config import EngineConfig
from fastswitch.model_sources import resolve_model
from fastswitch.models.loader import load_model
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.cpu_calibration import CpuCalibrator, TimingSession, load_factor
from fastswitch.sim.host_calibration import StepTiming, traced_steps
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.report import format_table
from fastswitch.sim.simulator import build_simulated_engine
from fastswitch.sim.workload_driver import replay, sleep_until
from fastswitch.workloads import synthetic_sharegpt

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


# Light enough that the real run is not overloaded on a loaded 2-core machine (an overloaded run
# queues without bound, and its TTFT then follows the load of the moment more than the model), yet
# about six conversations are live at once on a pool for 1,024 tokens (96 blocks made a single
# preemption per preset). 12 conversations at 1/s with 60-token answers took 19 minutes at load
# average 5 and queued turns for 25-50 s.
FULL = Setup(None, 8, 0.5, 100, 40, 2.0, 768, 64, 8)
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


def step_errors(cost: CostModel, steps: list[StepTiming]) -> dict:
    """The profile's forward time of each real step against the measured one: relative error at P50 and
    P90 over steps, and measured over predicted summed over the run (the line before jitter)."""
    predicted = [cost.forward_time(t.batch) for t in steps]
    errors = [abs(p - t.forward_s) / t.forward_s for p, t in zip(predicted, steps)]
    return {
        "real_steps": len(steps),
        "step_forward_p50_rel_error": float(np.percentile(errors, 50)),
        "step_forward_p90_rel_error": float(np.percentile(errors, 90)),
        "step_forward_measured_over_predicted": sum(t.forward_s for t in steps) / sum(predicted),
    }


def session_row(session: TimingSession, first: TimingSession) -> dict:
    return {"session": session.label, "utc": session.started_utc, "load_1m": session.load_average[0],
            "seconds": session.seconds, "load_factor": load_factor(session, first)}  # fmt: skip


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
    configs = {preset: config_of(setup, preset, setup.num_gpu_blocks, scheduler_mode) for preset in PRESETS}
    calibrator = CpuCalibrator(model, shape, [(configs[p], calibration) for p in PRESETS], setup.max_model_len,
                               seed=seed)  # fmt: skip
    sessions = [calibrator.measure("before")]
    log(f"calibrated ({len(calibrator.drawn)} batches of {len(calibrator.traced)} simulated steps) "
        f"at {time.perf_counter() - started:.1f} s")  # fmt: skip
    runs: dict = {}
    for preset, label in zip(PRESETS, ("between", "after")):
        real_engine = build_engine(model, configs[preset])
        with traced_steps(real_engine) as steps:
            real = latencies(replay(real_engine, workload, sleep_until))
        real_engine.close()
        sessions.append(calibrator.measure(label))
        runs[preset] = (real, steps, real_engine.stats()["num_preemptions"], sessions[-2:])
        log(f"{preset}: real run and timing session {label!r} done at {time.perf_counter() - started:.1f} s")
    profile = calibrator.profile("this-cpu", sessions)
    log(f"profile of this CPU: {profile}")
    result: dict = {}
    for preset, (real, steps, preemptions, (before, after)) in runs.items():
        sim = build_simulated_engine(configs[preset], shape, profile, max_model_len=setup.max_model_len)
        simulated = latencies(replay(sim.engine, workload, sim.clock.advance_to))
        sim.engine.close()
        row: dict = {}
        for name, s, r in (("ttft", simulated[0], real[0]), ("tbt", simulated[1], real[1])):
            for q in QUANTILES:
                row[f"{name}_p{q}_rel_error"] = rel_error(s, r, q)
                row[f"{name}_p{q}_real_s"] = float(np.percentile(r, q))
                row[f"{name}_p{q}_sim_s"] = float(np.percentile(s, q))
        row["preemptions_real"] = preemptions
        row["preemptions_sim"] = sim.engine.stats()["num_preemptions"]
        row.update(step_errors(CostModel(shape, profile), steps))
        row["sessions"] = [session_row(before, sessions[0]), session_row(after, sessions[0])]
        row["load_change_over_run"] = load_factor(after, before)  # > 1: the machine got busier
        result[preset] = row
    log(f"done at {time.perf_counter() - started:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny random Llama, a small workload (<1 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler-mode", help="EngineConfig.scheduler_mode of both presets (default: the config's)")
    parser.add_argument("--out", type=Path, help="write the errors as JSON here")
    args = parser.parse_args(argv)
    result = compare(QUICK if args.quick else FULL, args.seed, args.scheduler_mode)
    rows = [{"preset": preset, **values} for preset, values in result.items()]
    columns = [f"{n}_p{q}_{k}" for n in ("ttft", "tbt") for q in QUANTILES for k in ("real_s", "sim_s", "rel_error")]
    print(format_table(rows, ("preset", *columns, "preemptions_real", "preemptions_sim")))
    steps = ("real_steps", "step_forward_p50_rel_error", "step_forward_p90_rel_error",
             "step_forward_measured_over_predicted", "load_change_over_run")  # fmt: skip
    print(format_table(rows, ("preset", *steps)))
    sessions = {s["session"]: s for values in result.values() for s in values["sessions"]}
    print(format_table(list(sessions.values()), ("session", "utc", "load_1m", "seconds", "load_factor")))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
