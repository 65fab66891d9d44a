"""Swap copy granularity: how fast a sequence's KV moves device -> host and back, by copy size.

For realistic sequences (Llama-3-8B and SmolLM2-135M shapes, 1-4k tokens) whose block tables come
out of a serving-like allocator churn, the KV moves with
  (a) one copy per block per layer per K/V, as vLLM 0.3.3 does (64 calls per block for Llama-3-8B),
  (b) one copy per block group (per piece contiguous on both sides), FastSwitch,
  (c) one contiguous copy of the same number of bytes: the physical limit,
and the table reports bandwidth, copy calls, and (b)/(c) and (a)/(c) measured in the same run: once
from each method's best round, and once as the median over rounds of the ratio within a round.

Copy views are built before the clock starts, so (a) pays the per-call cost of the copy itself
(dispatch and a small memcpy), not Python indexing. On a CUDA machine the device pool lives on the
GPU and the host pool is pinned; on a CPU-only machine both are host memory and torch copies with one
thread (the machine is shared, and one thread shows the per-call overhead most plainly).
Memory: about 2 GiB for the Llama-3-8B shape (a 768-block device pool and a 256-block host pool).

    python benchmarks/swap_copy.py [--repeats 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fastswitch.cache import BlockManager, KVCache, copy_runs

BLOCK_SIZE = 16
SHAPES = {  # name: (layers, kv heads, head dim), fp16
    "llama-3-8b": (32, 8, 128),
    "smollm2-135m": (30, 3, 64),
}
TARGET_TOKENS = (1024, 2048, 4096)
DEVICE_BLOCKS, HOST_BLOCKS = 768, 256
CACHE_FLUSH_BYTES = 128 * 2**20  # well above this machine's 32 MiB L3


@dataclass
class Row:
    shape: str
    tokens: int
    direction: str  # "out": device -> host, "in": host -> device
    blocks: int
    groups: int  # copy calls of (b)
    bytes: int
    calls_a: int
    gbps_a: float
    gbps_b: float
    gbps_c: float
    # Medians over rounds of the ratio within a round (the methods run back to back): a neighbour's
    # burst that slows one method in one round moves these less than it moves a best-of figure.
    paired_b_over_c: float
    paired_a_over_c: float

    @property
    def b_over_c(self) -> float:
        return self.gbps_b / self.gbps_c

    @property
    def a_over_c(self) -> float:
        return self.gbps_a / self.gbps_c


def churned_block_tables(seed: int) -> dict[int, list[int]]:
    """Grows the target sequences token by token among background requests that come and go.

    Background prompts and outputs are log-normal with ShareGPT-like means (~180 and ~340 tokens);
    admission keeps about a fifth of the pool free, so the targets keep meeting neighbours.
    """
    rng = random.Random(seed)
    manager = BlockManager(DEVICE_BLOCKS, BLOCK_SIZE, block_groups=True)
    targets = {tokens: tokens // 4 for tokens in TARGET_TOKENS}  # final length -> current length
    for final, current in targets.items():
        manager.ensure_capacity(final, current)
    background: dict[str, list[int]] = {}
    next_id = 0
    while any(current < final for final, current in targets.items()):
        if rng.random() < 0.5:
            prompt = max(1, int(rng.lognormvariate(4.8, 0.9)))
            output = max(1, int(rng.lognormvariate(5.5, 0.8)))
            if manager.num_free - manager.blocks_for_tokens(prompt) > DEVICE_BLOCKS // 5:
                manager.ensure_capacity(f"bg{next_id}", prompt)
                background[f"bg{next_id}"] = [prompt, prompt + output]
                next_id += 1
        for seq, (tokens, final) in list(background.items()):
            if tokens >= final or not manager.can_fit(seq, tokens + 1):
                manager.free(seq)  # finished, or preempted to make room
                del background[seq]
            else:
                manager.ensure_capacity(seq, tokens + 1)
                background[seq][0] += 1
        for final, current in targets.items():
            if current < final:
                while not manager.can_fit(final, current + 1):
                    victim = next(iter(background))
                    manager.free(victim)
                    del background[victim]
                manager.ensure_capacity(final, current + 1)
                targets[final] = current + 1
    return {final: manager.block_table(final) for final in TARGET_TOKENS}


def timed(copies: list[tuple[torch.Tensor, torch.Tensor]], sync, cache_flush: torch.Tensor) -> float:
    """Seconds to run all copies once, until they have landed, starting from cold CPU caches.

    A swapped sequence is never cache-hot, and SmolLM2's smaller sequences would otherwise sit in
    the 32 MiB L3 between rounds and flatter whichever method ran after another touched them."""
    cache_flush.add_(1)
    sync()
    start = time.perf_counter()
    for dst, src in copies:
        dst.copy_(src, non_blocking=True)
    sync()
    return time.perf_counter() - start


def measure(shape: str, tables: dict[int, list[int]], repeats: int, device: torch.device) -> list[Row]:
    layers, kv_heads, head_dim = SHAPES[shape]
    dev = KVCache(DEVICE_BLOCKS, layers, BLOCK_SIZE, kv_heads, head_dim, torch.float16, device)
    dev.data.normal_()
    host = KVCache.host_pool_for(dev, HOST_BLOCKS)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cache_flush = torch.zeros(CACHE_FLUSH_BYTES, dtype=torch.uint8)
    rows = []
    for tokens, device_table in tables.items():
        host_manager = BlockManager(HOST_BLOCKS, BLOCK_SIZE)
        host_manager.ensure_capacity("seq", tokens)
        host_table = host_manager.block_table("seq")
        n = len(device_table)
        for direction in ("out", "in"):
            src, dst = (dev, host) if direction == "out" else (host, dev)
            src_table, dst_table = (device_table, host_table) if direction == "out" else (host_table, device_table)
            per_layer = [  # vLLM's loop order: layer, then K/V, then block
                (dst.data[d, layer, kv], src.data[s, layer, kv])
                for layer in range(layers) for kv in range(2) for s, d in zip(src_table, dst_table)
            ]
            per_group = [(dst.data[d : d + k], src.data[s : s + k]) for s, d, k in copy_runs(src_table, dst_table)]
            contiguous = [(dst.data[:n], src.data[:n])]
            num_bytes = n * dev.block_bytes
            # Interleave the methods' rounds so that a neighbour's load on the machine hits all alike.
            methods = {"a": per_layer, "b": per_group, "c": contiguous}
            seconds: dict[str, list[float]] = {name: [] for name in methods}
            for round_ in range(repeats + 1):  # round 0 warms caches and allocator paths
                for name, copies in methods.items():
                    elapsed = timed(copies, sync, cache_flush)
                    if round_:
                        seconds[name].append(elapsed)
            # Best of the rounds: on a shared machine a neighbour's load only ever adds time.
            gbps = {name: num_bytes / min(s) / 1e9 for name, s in seconds.items()}
            paired = {name: statistics.median(c / x for c, x in zip(seconds["c"], seconds[name])) for name in "ab"}
            timed(per_group, sync, cache_flush)  # (c) overwrote part of the destination: land (b) again, then check it
            assert all(torch.equal(d, s) for d, s in per_group), "a group copy did not land"
            rows.append(Row(shape, tokens, direction, n, len(per_group), num_bytes, len(per_layer),
                            gbps["a"], gbps["b"], gbps["c"], paired["b"], paired["a"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    tables = churned_block_tables(args.seed)
    rows = [row for shape in SHAPES for row in measure(shape, tables, args.repeats, device)]

    print(f"device={device}, torch threads={torch.get_num_threads()}, block_size={BLOCK_SIZE}, fp16, "
          f"best of {args.repeats} rounds")
    header = f"{'shape':13} {'tokens':>6} {'dir':>3} {'blocks':>6} {'MiB':>6} {'calls a':>8} {'calls b':>7} " \
             f"{'GB/s a':>7} {'GB/s b':>7} {'GB/s c':>7} {'b/c':>5} {'a/c':>5} {'paired b/c':>10} {'a/c':>5}"
    print(header)
    for r in rows:
        print(f"{r.shape:13} {r.tokens:6} {r.direction:>3} {r.blocks:6} {r.bytes / 2**20:6.0f} {r.calls_a:8} "
              f"{r.groups:7} {r.gbps_a:7.2f} {r.gbps_b:7.2f} {r.gbps_c:7.2f} {r.b_over_c:5.2f} {r.a_over_c:5.2f} "
              f"{r.paired_b_over_c:10.2f} {r.paired_a_over_c:5.2f}")
    summary = {}
    for label, key in (("best-of", ""), ("paired", "paired_")):
        for ratio in ("b_over_c", "a_over_c"):
            values = [getattr(r, key + ratio) for r in rows]
            summary[f"{key}{ratio}_min"], summary[f"{key}{ratio}_mean"] = min(values), statistics.mean(values)
        print(f"{label:8} (b)/(c): min {summary[key + 'b_over_c_min']:.2f}, mean {summary[key + 'b_over_c_mean']:.2f}; "
              f"(a)/(c): min {summary[key + 'a_over_c_min']:.2f}, mean {summary[key + 'a_over_c_mean']:.2f}")

    out = Path(__file__).parent / "results" / "swap_copy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": str(device), "torch_threads": torch.get_num_threads(), "block_size": BLOCK_SIZE,
        "repeats": args.repeats, "seed": args.seed,
        "rows": [{**asdict(r), "b_over_c": r.b_over_c, "a_over_c": r.a_over_c} for r in rows],
        "summary": summary,
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
