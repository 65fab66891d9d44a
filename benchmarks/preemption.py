"""Preemption benchmark: the `vllm` preset against the `fastswitch` preset, same model, same workload.

SmolLM2-135M-Instruct on this machine's CPU, a multi-turn chat workload (synthetic Multi-Round
ShareGPT shapes, scaled down) with priorities re-drawn during the run, and a device KV budget far
below what the conversations need, so the priority scheduler keeps swapping contexts out and in.
Both presets replay the identical workload in one process, one after the other, and the table gives
P99 TTFT, P99 TBT, throughput, swap copy calls, bytes and the time the executor sat waiting on
swaps, with the vllm / fastswitch ratio of each.

On a CPU "device" and "host" memory are the same DRAM and a copy call costs a memcpy set-up, not a
PCIe transaction, so the latency gaps are far smaller than on a GPU (see the simulator for those);
what carries over unchanged is the number of copy calls and bytes each mechanism issues.

    python benchmarks/preemption.py [--conversations 12] [--gpu-blocks 24] [--model PATH] [--scheduler-mode M]

The JSON (benchmarks/results/preemption.json) records the date, the load average before and after, and
per preset its scheduler mode and priority trace digest (equal for both: the same priorities).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastswitch.build import build_engine
from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.sim.workload_driver import replay
from fastswitch.workloads import synthetic_sharegpt

RESULTS = Path(__file__).parent / "results"
PRESETS = ("vllm", "fastswitch")
COLUMNS = (  # (stats key, label, scale, lower is better)
    ("ttft_p99", "P99 TTFT (ms)", 1e3, True),
    ("ttft_p50", "P50 TTFT (ms)", 1e3, True),
    ("tbt_p99", "P99 TBT (ms)", 1e3, True),
    ("tbt_p999", "P99.9 TBT (ms)", 1e3, True),
    ("throughput_tokens_per_s", "throughput (tok/s)", 1.0, False),
    ("copy_calls", "copy calls", 1.0, True),
    ("swap_out_bytes", "swap-out MiB", 2**-20, True),
    ("swap_in_bytes", "swap-in MiB", 2**-20, True),
    ("executor_idle_on_swaps", "executor idle on swaps (ms)", 1e3, True),
    ("num_preemptions", "preemptions", 1.0, True),
)


def default_model() -> Path:
    from fastswitch.model_sources import default_model_path

    return default_model_path()


def run_preset(model, preset: str, args, workload) -> dict:
    extra = {} if args.scheduler_mode is None else {"scheduler_mode": args.scheduler_mode}
    config = EngineConfig.from_preset(
        preset, block_size=16, num_gpu_blocks=args.gpu_blocks, num_cpu_blocks=args.gpu_blocks * 8, max_model_len=2048,
        max_num_seqs=8, max_num_batched_tokens=256, policy="priority", priority_pattern="random",
        priority_update_freq=args.update_freq, seed=args.seed, attention_backend="torch", **extra,
    )  # fmt: skip
    engine = build_engine(model, config)
    start = time.perf_counter()
    outputs = replay(engine, workload, wait_until=lambda t: time.sleep(max(0.0, t - time.monotonic())), progress=True)
    wall = time.perf_counter() - start
    engine.close()
    stats = engine.stats()
    stats["wall_s"] = wall
    stats["num_turns"] = len(outputs)
    return stats


def ratio(vllm: float, fast: float, lower_is_better: bool) -> float:
    if vllm == 0 and fast == 0:
        return 1.0
    if lower_is_better:
        return vllm / fast if fast else float("inf")
    return fast / vllm if vllm else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="Llama checkpoint folder or .gguf (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--gpu-blocks", type=int, default=24,
                        help="device KV blocks of 16 tokens (small: forces swaps)")
    parser.add_argument("--update-freq", type=float, default=0.04,
                        help="the paper's per-iteration re-draw probability (replayed as the workload's trace)")
    parser.add_argument("--scheduler-mode", help="EngineConfig.scheduler_mode of both presets (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: tiny steps gain nothing from more on a shared CPU)")
    args = parser.parse_args()
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model or default_model(), dtype="float32", progress=False)
    vocab = loaded.model.vocab_size
    workload = synthetic_sharegpt(
        num_conversations=args.conversations, rate=4.0, seed=args.seed, mean_turns=3.0, mean_prompt_tokens=60,
        mean_response_tokens=24, think_time_mean=0.5, max_context_tokens=400, num_clients=4,
        vocab_range=(100, vocab),  # clear of SmolLM2's special tokens
    )
    results = {preset: run_preset(loaded.model, preset, args, workload) for preset in PRESETS}

    print(f"\nworkload: {workload.summary()}")
    print(f"{'metric':<30}{'vllm':>14}{'fastswitch':>14}{'ratio':>10}")
    table = []
    for key, label, scale, lower in COLUMNS:
        v, f = results["vllm"][key], results["fastswitch"][key]
        r = ratio(v, f, lower)
        table.append({"metric": label, "vllm": v * scale, "fastswitch": f * scale, "ratio": r})
        print(f"{label:<30}{v * scale:>14.2f}{f * scale:>14.2f}{r:>9.2f}x")
    print("ratio: vllm / fastswitch for costs, fastswitch / vllm for throughput (> 1: fastswitch better)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "preemption.json"
    run = {
        "date_utc": started_utc,
        "load_average_before": load_before,  # os.getloadavg(): 1, 5, 15 minutes
        "load_average_after": os.getloadavg(),
        "scheduler_mode": {p: results[p]["scheduler_mode"] for p in PRESETS},
        "priority_trace_digest": {p: results[p]["priority_trace_digest"] for p in PRESETS},
    }
    print(f"run: {run}")
    out.write_text(json.dumps({**run, "args": vars(args), "workload": workload.summary(), "table": table,
                               "stats": results}, indent=2, default=float))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
