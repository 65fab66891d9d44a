"""The `fastswitch` command line on a tiny random Llama: every command runs, helps and fails helpfully."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from fastswitch.cli import build_parser, main
from fastswitch.model_sources import TINY_CONFIG

# Torch attention (the tests' TRITON_INTERPRET=1 would pick Triton's slow interpreter) on one thread
# (tiny matmuls on a shared 2-core machine are much faster without OpenMP hand-offs).
FAST = ["--attention-backend", "torch", "--threads", "1"]
TINY = ["--model", "tiny-random", "--num-gpu-blocks", "16", "--max-model-len", "256", *FAST]


@pytest.fixture(autouse=True)
def private_cache_and_threads(tmp_path_factory, monkeypatch):
    # tiny-random is built once into this cache, not into the user's.
    monkeypatch.setenv("FASTSWITCH_CACHE", str(tmp_path_factory.getbasetemp() / "fastswitch-cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads 1 set it for the whole process


@pytest.mark.parametrize("command", ["generate", "chat", "bench", "serve"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        for flag in action.option_strings:
            assert flag in text


def test_sim_is_handed_to_the_simulator(capsys):
    assert main(["sim", "--list"]) == 0
    assert "smoke" in capsys.readouterr().out


def test_generate_prints_each_answer_and_the_throughput(capsys):
    assert main(["generate", "hello there", "second prompt", "--max-tokens", "5", *TINY]) == 0
    out = capsys.readouterr().out
    assert "### hello there" in out and "### second prompt" in out
    assert re.match(r"\d+ tokens in [\d.]+ s \([\d.]+ tok/s\), TTFT p50 \d+ ms", out.splitlines()[-1])


def test_chat_turns_append_only_their_new_tokens(capsys):
    turns = ["first question", "second question"]
    assert main(["chat", "--message", turns[0], "--message", turns[1], "--max-tokens", "4", *TINY]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("assistant> ") == 2
    report = re.compile(r"\[(\d+) tokens, TTFT \d+ ms, (\d+) new prompt tokens, (\d+) in context\]")
    (answer1, new1, context1), (answer2, new2, context2) = [
        tuple(map(int, m.groups())) for m in report.finditer(captured.err)
    ]
    assert context1 == new1 + answer1
    # The second turn appends only its message and the template's markers to the first turn's context.
    assert context2 == context1 + new2 + answer2 and new2 < context1


def test_bench_compares_presets_on_one_workload(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # All conversations arrive at once and each answer grows its sequence past what 4 blocks hold for two of
    # them, so running decodes must preempt each other whatever the machine's speed (priority re-draws are
    # drawn in time, so they cannot be relied on to force a switch in a run this short).
    args = ["bench", "--conversations", "3", "--turns", "2", "--prompt-tokens", "20", "--response-tokens", "30",
            "--think-time", "0", "--rate", "1000000", "--out", str(out), "--model", "tiny-random",
            "--num-gpu-blocks", "4", "--max-model-len", "256", "--priority-update-freq", "0.3", *FAST]  # fmt: skip
    assert main(args) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["preset"] for r in runs] == ["vllm", "fastswitch"]
    assert runs[0]["turns"] == runs[1]["turns"] and all(r["num_finished_requests"] == r["turns"] for r in runs)
    assert all(r["swap_out_count"] > 0 for r in runs)  # 4 blocks for 3 conversations: contexts are switched
    # How many swaps happen depends on timing (priority re-draws, the adaptive swap rule); the calls per
    # block moved do not: vLLM 0.3.3 copies each block's K and V of each layer apart, fastswitch copies
    # each contiguous run of blocks, all layers at once.
    vllm, fastswitch = ({"calls": r["copy_calls"], "blocks": r["swap_out_blocks"] + r["swap_in_blocks"]} for r in runs)
    assert vllm["calls"] == vllm["blocks"] * TINY_CONFIG["num_hidden_layers"] * 2
    assert 0 < fastswitch["calls"] <= fastswitch["blocks"]
    assert "throughput_tokens_per_s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "hi", "--model", "/no/such/model"], "does not exist"),
        (["generate", "hi", "--max-tokens", "0", *TINY], "max_tokens=0"),
        (["generate", "hi", "--model", "tiny-random", "--num-gpu-blocks", "0"], "num_gpu_blocks=0"),
        (["chat", "--message", "hi", "--model", "tiny-random", "--max-model-len", "99999"], "max_model_len=99999"),
    ],
)
def test_user_errors_say_what_to_fix_without_a_traceback(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_runs_the_openai_app_with_the_given_options(monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    seen = {}

    def fake_run(app, host, port, log_level):  # answers through the app instead of opening a socket
        seen.update(host=host, port=port, log_level=log_level)
        with TestClient(app) as http:
            seen["models"] = http.get("/v1/models").json()
            seen["answer"] = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3,
                                                                 "ignore_eos": True}).json()  # fmt: skip

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--port", "8123", "--served-model-name", "tiny", "--log-level", "warning", *TINY]) == 0
    assert (seen["host"], seen["port"], seen["log_level"]) == ("127.0.0.1", 8123, "warning")
    assert seen["models"]["data"][0]["id"] == "tiny"
    assert seen["answer"]["usage"]["completion_tokens"] == 3


@pytest.mark.slow
def test_serve_answers_the_openai_api_from_a_subprocess(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FASTSWITCH_CACHE": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "fastswitch", "serve", "--port", str(port), "--served-model-name", "tiny",
         "--log-level", "warning", *TINY],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as response:
                    models = json.load(response)
                break
            except urllib.error.URLError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.2)
        assert models["data"][0]["id"] == "tiny"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 3, "ignore_eos": True}).encode(),
        )  # fmt: skip
        with urllib.request.urlopen(request) as response:
            answer = json.load(response)
        assert answer["usage"]["completion_tokens"] == 3
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_without_the_serve_extra_names_the_install_command(monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    hide_uvicorn = lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hide_uvicorn)
    assert main(["serve", *TINY]) == 2
    err = capsys.readouterr().err
    assert "needs uvicorn" in err and "pip install 'fastswitch[serve]'" in err and "Traceback" not in err


def test_the_core_package_imports_without_the_serve_extra():
    # fastapi, starlette and uvicorn are the serve extra: the CLI and fastswitch.server must import without them.
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('fastapi', 'starlette', 'uvicorn')]; "
            "import fastswitch.cli, fastswitch.server; print('ok')")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
