"""The OpenAI-compatible server under concurrent clients: each client's latency and share of service, per policy.

One heavy client keeps --heavy-streams streaming requests open back to back (a backlog); each of
--light-clients light clients sends one request at a time with a think time between. All go through
the official `openai` client to a server on 127.0.0.1, and the engine's policy decides who runs when
--max-num-seqs is the bottleneck. Under fcfs the heavy backlog delays everyone; under vtc (virtual
token counters, per client) a light client's request is served as soon as its counter is the lowest.

    python benchmarks/server_fairness.py                                   # tiny random model, ~1 min
    python benchmarks/server_fairness.py --model path/to/llama --duration 60

Prints a table per policy and writes benchmarks/results/server_fairness.json. Latencies are wall
clock on this machine and move with its load; the comparison is between policies of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import openai
import torch

from fastswitch.sched.metrics import percentile
from fastswitch.server import ServingEngine, create_app
from fastswitch.server.background import serving_in_background
from fastswitch.sim.report import format_table

OUT = Path("benchmarks/results/server_fairness.json")
COLUMNS = ("policy", "client", "requests", "tokens", "tokens_per_s", "ttft_mean_ms", "ttft_p99_ms", "e2e_mean_ms")


def client_loop(base_url: str, client_id: str, deadline: float, args: argparse.Namespace, think_s: float,
                records: list[dict], lock: threading.Lock) -> None:  # fmt: skip
    """Sends streaming requests one after another until the deadline; records each one's timings."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600,
                           default_headers={"X-Client-Id": client_id})  # fmt: skip
    n = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        first = None
        tokens = 0
        stream = client.completions.create(
            model="bench", prompt=f"{client_id} request {n}: tell me a story", max_tokens=args.max_tokens,
            stream=True, temperature=0, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in stream:
            if first is None and chunk.choices:
                first = time.monotonic()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        with lock:
            records.append({"client": client_id, "ttft": first - started, "e2e": time.monotonic() - started,
                            "tokens": tokens, "done": time.monotonic()})  # fmt: skip
        n += 1
        time.sleep(think_s)


def run_policy(policy: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    serving = ServingEngine.load(
        args.model, "fastswitch", progress=False, policy=policy, max_num_seqs=args.max_num_seqs,
        num_gpu_blocks=args.num_gpu_blocks, attention_backend=args.attention_backend,
    )  # fmt: skip
    records: list[dict] = []
    lock = threading.Lock()
    with serving_in_background(create_app(serving, model_id="bench")) as base_url:
        started = time.monotonic()
        deadline = started + args.duration
        clients = [("heavy", 0.0)] * args.heavy_streams
        clients += [(f"light-{i}", args.think_time) for i in range(args.light_clients)]
        threads = [threading.Thread(target=client_loop, args=(base_url, cid, deadline, args, think, records, lock))
                   for cid, think in clients]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        stats = serving.engine.stats()
    rows = []
    for cid in dict.fromkeys(c for c, _ in clients):
        mine = [r for r in records if r["client"] == cid]
        ttfts = [r["ttft"] for r in mine]
        rows.append({
            "policy": policy, "client": cid, "requests": len(mine), "tokens": sum(r["tokens"] for r in mine),
            "tokens_per_s": sum(r["tokens"] for r in mine) / elapsed,
            "ttft_mean_ms": 1000 * statistics.fmean(ttfts) if ttfts else float("nan"),
            "ttft_p99_ms": 1000 * percentile(ttfts, 99.0),
            "e2e_mean_ms": 1000 * statistics.fmean(r["e2e"] for r in mine) if mine else float("nan"),
        })  # fmt: skip
    return rows, {"policy": policy, "elapsed_s": elapsed, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random", help="model folder, .gguf, or tiny-random (default)")
    parser.add_argument("--policies", nargs="+", default=["fcfs", "vtc"], help="policies to compare (default fcfs vtc)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per policy (default 15)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (default 32)")
    parser.add_argument(
        "--heavy-streams", type=int, default=8, help="concurrent streams of the heavy client (default 8)"
    )
    parser.add_argument("--light-clients", type=int, default=3, help="light clients (default 3)")
    parser.add_argument("--think-time", type=float, default=0.2, help="light clients' pause between requests (s)")
    parser.add_argument(
        "--max-num-seqs", type=int, default=4, help="requests batched at most: the bottleneck (default 4)"
    )
    parser.add_argument("--num-gpu-blocks", type=int, default=64, help="device KV blocks (default 64)")
    parser.add_argument("--attention-backend", default="auto", choices=("auto", "triton", "torch"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, runs = [], []
    for policy in args.policies:
        policy_rows, run = run_policy(policy, args)
        rows += policy_rows
        runs.append(run)
    print(format_table(rows, COLUMNS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "clients": rows,
                                    "runs": runs}, indent=2, default=str))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
