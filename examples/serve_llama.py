"""Several users chat at once, with different priorities, on a KV cache too small to hold them all.

Each user holds a multi-turn conversation; a turn's prompt is the whole conversation so far, and its
KV context stays in the engine between turns. The device KV pool holds only part of all contexts, so
the priority scheduler keeps switching: a low-priority conversation is swapped out to host memory
when a more urgent one needs room, and swapped back in later. The same workload runs under the
`vllm` preset (block-by-block synchronous copies, no reuse) and the `fastswitch` preset (block
groups, asynchronous swaps, KV reuse across turns); greedy decoding makes the answers identical, so
only the cost of the context switches differs. Both keep each conversation's KV between turns
(`keep_turn_kv=True`), so that both switch contexts: the `vllm` preset alone would drop it and prefill
the whole history every turn, as vLLM 0.3.3 did.

    python examples/serve_llama.py                      # SmolLM2-135M-Instruct, a few minutes on a CPU
    python examples/serve_llama.py --model ~/llama-3.2-1b-instruct --users 6 --turns 4
    python examples/serve_llama.py --quick              # a tiny random model, seconds (tests use it)

Prints a per-user table (turns, TTFT, TBT, preemptions), the vllm-vs-fastswitch comparison and every
answer; writes a latency plot (PNG) and the numbers (JSON) to --output-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastswitch.model_sources import resolve_model
from fastswitch.models.loader import load_model, resolve_device
from fastswitch.models.sampling import SamplingParams
from fastswitch.server import ServingEngine
from fastswitch.sim.report import format_table

PRESETS = ("vllm", "fastswitch")
# (user, priority: 0 is the most urgent, the questions of each turn)
USERS = [
    ("alice", 0, ["What is the capital of France?", "What is it famous for?", "Name one museum to visit there.",
                  "What is the best season to go?"]),
    ("bob", 2, ["Give me one tip for learning Python.", "Show a one-line list comprehension.",
                "How do I sort that list in reverse?", "What does the key argument of sorted do?"]),
    ("carol", 1, ["Name the three primary colours.", "Which of them is the warmest?",
                  "What colour do red and blue make?", "Where does that colour appear in nature?"]),
    ("dave", 3, ["What is photosynthesis, in one sentence?", "Why does it matter to animals?",
                 "Name a plant that grows fast.", "How much light does it need?"]),
    ("erin", 1, ["How many planets are in the solar system?", "Which one is the largest?",
                 "How long is a day there?", "Does it have moons?"]),
    ("frank", 2, ["What is a healthy breakfast?", "Why is fibre good for you?", "Name a fruit rich in fibre.",
                  "How should I store it?"]),
]  # fmt: skip
DEFAULT_OUTPUT = Path("benchmarks/results/serve_llama")
PROMPT_ALLOWANCE = 48  # tokens a turn's new message and chat markers take, for sizing the default KV pool
KV_BUDGET_SHARE = 0.3  # of what every conversation's full context needs: most contexts must live on the host


@dataclass
class TurnRecord:
    user: str
    priority: int
    turn: int
    question: str
    answer: str
    new_prompt_tokens: int  # only the new message: the conversation's earlier turns are cached
    output_tokens: int
    ttft: float
    tbts: list[float] = field(repr=False)
    preemptions: int = 0
    swap_stall: float = 0.0


def run_preset(loaded, model_name: str, preset: str, args: argparse.Namespace) -> tuple[list[TurnRecord], dict]:
    """Every user's conversation, turn after turn, all users at once, on one fresh engine."""
    serving = ServingEngine.for_loaded(
        loaded, model_name, preset, num_gpu_blocks=args.kv_blocks, max_model_len=args.max_model_len,
        policy="priority", priority_update_freq=args.priority_update_freq, attention_backend=args.attention_backend,
        seed=args.seed, keep_turn_kv=True,
    )  # fmt: skip
    engine, params = serving.engine, SamplingParams(max_tokens=args.max_tokens)
    users = USERS[: args.users]
    conversations = {name: engine.conversation(client_id=name, priority=priority) for name, priority, _ in users}
    histories: dict[str, list[dict]] = {name: [] for name, _, _ in users}
    live: dict[str, tuple] = {}  # user -> (turn index, question, new prompt tokens, output)
    next_turn = {name: 0 for name, _, _ in users}
    records: list[TurnRecord] = []
    started = time.perf_counter()
    with tqdm(total=len(users) * args.turns, unit="turn", desc=f"{preset:>10s}", file=sys.stderr) as bar:
        while live or any(next_turn[name] < args.turns for name, _, _ in users):
            for name, _, questions in users:  # a user sends the next message once answered
                if name not in live and next_turn[name] < args.turns:
                    question = questions[next_turn[name] % len(questions)]
                    last = conversations[name].turns[-1] if conversations[name].turns else None
                    new_ids = serving.encode_chat_turn(histories[name], question, last)
                    output = conversations[name].submit(new_ids, params)
                    live[name] = (next_turn[name], question, len(new_ids), output)
                    next_turn[name] += 1
            engine.step()
            for name, priority, _ in users:
                if name in live and live[name][3].finished:
                    turn, question, new_tokens, out = live.pop(name)
                    m = out.metrics
                    records.append(TurnRecord(name, priority, turn, question, out.text.strip(), new_tokens,
                                              len(out.token_ids), m.ttft, m.tbts, m.num_preemptions,
                                              m.swap_stall_time))  # fmt: skip
                    histories[name] += [{"role": "user", "content": question},
                                        {"role": "assistant", "content": out.text}]  # fmt: skip
                    bar.update(1)
    for conversation in conversations.values():
        conversation.close()
    serving.close()
    return records, {**engine.stats(), "wall_s": time.perf_counter() - started}


def user_rows(records: list[TurnRecord]) -> list[dict]:
    rows = []
    for name, priority, _ in USERS:
        mine = [r for r in records if r.user == name]
        if not mine:
            continue
        tbts = [t for r in mine for t in r.tbts]
        rows.append({
            "user": name, "priority": priority, "turns": len(mine),
            "ttft_mean_ms": 1000 * statistics.fmean(r.ttft for r in mine),
            "ttft_max_ms": 1000 * max(r.ttft for r in mine),
            "tbt_mean_ms": 1000 * statistics.fmean(tbts) if tbts else math.nan,
            "tbt_max_ms": 1000 * max(tbts) if tbts else math.nan,
            "preemptions": sum(r.preemptions for r in mine), "swap_stall_ms": 1000 * sum(r.swap_stall for r in mine),
        })  # fmt: skip
    return rows


def comparison_rows(results: dict[str, tuple[list[TurnRecord], dict]]) -> list[dict]:
    rows = []
    for preset, (_, stats) in results.items():
        rows.append({
            "preset": preset, "ttft_p50_ms": 1000 * stats["ttft_p50"], "ttft_p99_ms": 1000 * stats["ttft_p99"],
            "tbt_p99_ms": 1000 * stats["tbt_p99"], "tbt_p999_ms": 1000 * stats["tbt_p999"],
            "tokens_per_s": stats["throughput_tokens_per_s"], "preemptions": stats["num_preemptions"],
            "swap_outs": stats["swap_out_count"], "swap_ins": stats["swap_in_count"],
            "blocks_moved": stats["swap_out_blocks"] + stats["swap_in_blocks"], "copy_calls": stats["copy_calls"],
            "swap_out_mb": stats["swap_out_bytes"] / 2**20, "reused_mb": stats["reused_bytes"] / 2**20,
            "idle_on_swaps_ms": 1000 * stats["executor_idle_on_swaps"], "wall_s": stats["wall_s"],
        })  # fmt: skip
    return rows


def plot(results: dict[str, tuple[list[TurnRecord], dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, (ttft_ax, tbt_ax) = plt.subplots(1, 2, figsize=(11, 4))
    users = [u for u, _, _ in USERS if any(r.user == u for r in next(iter(results.values()))[0])]
    width = 0.8 / len(results)
    for i, (preset, (records, _)) in enumerate(results.items()):
        means = [1000 * statistics.fmean(r.ttft for r in records if r.user == u) for u in users]
        ttft_ax.bar([x + i * width for x in range(len(users))], means, width, label=preset)
        tbts = sorted(1000 * t for r in records for t in r.tbts)
        if tbts:
            tbt_ax.plot(tbts, [(k + 1) / len(tbts) for k in range(len(tbts))], label=preset)
    priorities = {u: p for u, p, _ in USERS}
    ttft_ax.set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(users))],
                       [f"{u}\n(priority {priorities[u]})" for u in users])  # fmt: skip
    ttft_ax.set_ylabel("mean TTFT per turn (ms)")
    ttft_ax.legend()
    tbt_ax.set_xscale("log")
    tbt_ax.set_xlabel("time between tokens (ms)")
    tbt_ax.set_ylabel("CDF")
    tbt_ax.grid(alpha=0.3)
    tbt_ax.legend()
    fig.suptitle("Multi-user chat under a tight KV budget: vllm vs fastswitch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="With no options: SmolLM2-135M-Instruct, 4 users, 3 turns each."
    )
    parser.add_argument("--model", help="Llama checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--users", type=int, default=4, help=f"users chatting at once, 1-{len(USERS)} (default 4)")
    parser.add_argument("--turns", type=int, default=3, help="turns per user (default 3)")
    parser.add_argument("--max-tokens", type=int, default=40, help="tokens per answer at most (default 40)")
    parser.add_argument("--kv-blocks", type=int, help="device KV blocks of 16 tokens (default: ~30%% of what "
                        "all conversations need, so contexts must be switched)")  # fmt: skip
    parser.add_argument("--max-model-len", type=int, help="longest context in tokens (default: the model's, "
                        "at most 2048 on CPU)")  # fmt: skip
    parser.add_argument("--priority-update-freq", type=float, default=0.0,
                        help="per-step probability of re-drawn priorities, as in the paper "
                        "(default 0: fixed)")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                        help=f"plot and JSON (default {DEFAULT_OUTPUT})")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: for a 135M model on a small or shared CPU, more threads "
                        "mostly wait on each other; raise it on a quiet many-core machine)")  # fmt: skip
    parser.add_argument("--attention-backend", default="auto", choices=("auto", "triton", "torch"),
                        help="attention kernels (default auto: Triton on GPU, torch on CPU)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="engine seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="a tiny random model, 3 users, 2 turns, 6 tokens: seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.users, args.turns, args.max_tokens = args.model or "tiny-random", 3, 2, 6
    if not 1 <= args.users <= len(USERS):
        parser.error(f"--users={args.users} must lie in 1..{len(USERS)}")
    for name in ("turns", "max_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")
    if args.kv_blocks is None:
        per_user = math.ceil(args.turns * (args.max_tokens + PROMPT_ALLOWANCE) / 16) + 1
        args.kv_blocks = max(per_user + 2, math.ceil(KV_BUDGET_SHARE * per_user * args.users))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # a bad model path or KV size: say what to fix, without a traceback
        source = resolve_model(args.model)
        print(f"model {source}; {args.users} users x {args.turns} turns; {args.kv_blocks} KV blocks of 16 tokens",
              file=sys.stderr)  # fmt: skip
        loaded = load_model(source, device=resolve_device("auto"))
        results = {preset: run_preset(loaded, Path(str(source)).name, preset, args) for preset in PRESETS}
    except ValueError as exc:
        raise SystemExit(f"serve_llama.py: error: {exc}") from None

    for preset, (records, _) in results.items():
        print(f"\n== per user, {preset} preset ==")
        print(format_table(user_rows(records), list(user_rows(records)[0])))
    print("\n== vllm vs fastswitch: same workload, same model ==")
    rows = comparison_rows(results)
    print(format_table(rows, list(rows[0])))
    base, fast = results["vllm"][1], results["fastswitch"][1]
    if base["copy_calls"]:
        print(f"fastswitch issues {base['copy_calls'] / max(fast['copy_calls'], 1):.1f}x fewer copy calls and moves "
              f"{(base['swap_out_bytes'] + 1) / (fast['swap_out_bytes'] + 1):.2f}x fewer swap-out bytes")  # fmt: skip

    records = results["fastswitch"][0]
    answers = {preset: sorted((r.user, r.turn, r.answer) for r in results[preset][0]) for preset in PRESETS}
    same = answers["fastswitch"] == answers["vllm"]
    print(f"\n== the answers (identical under both presets: {same}) ==")
    for r in sorted(records, key=lambda r: (USERS.index(next(u for u in USERS if u[0] == r.user)), r.turn)):
        print(f"[{r.user}, priority {r.priority}, turn {r.turn + 1}] {r.question}\n    -> {r.answer}")

    png = plot(results, args.output_dir / "serve_llama_latency.png")
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "comparison": rows,
               "users": {p: user_rows(rec) for p, (rec, _) in results.items()},
               "turns": {p: [asdict(r) for r in rec] for p, (rec, _) in results.items()}}  # fmt: skip
    json_path = args.output_dir / "serve_llama.json"
    json_path.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {png} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
