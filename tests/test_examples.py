"""The examples run end to end: serve_llama.py in its --quick mode, and the two notebooks."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from fastswitch.model_sources import TINY_CONFIG

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "fastswitch-cache"
    monkeypatch.setenv("FASTSWITCH_CACHE", str(cache))  # tiny-random is built here, not in the user's cache
    return cache


def test_serve_llama_quick_compares_presets_and_writes_plot(tmp_path, private_cache, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("serve_llama", EXAMPLES / "serve_llama.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_llama", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    args = ["--quick", "--output-dir", str(tmp_path), "--threads", "1", "--attention-backend", "torch"]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "== per user, vllm preset ==" in out and "== per user, fastswitch preset ==" in out
    assert "identical under both presets: True" in out
    assert out.count("    -> ") == 3 * 2  # every answer of 3 users x 2 turns is printed
    assert (tmp_path / "serve_llama_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "serve_llama.json").read_text())
    vllm, fastswitch = summary["comparison"]
    assert (vllm["preset"], fastswitch["preset"]) == ("vllm", "fastswitch")
    assert vllm["swap_outs"] > 0 and fastswitch["swap_outs"] > 0  # the budget forces context switches
    # Per block moved (the number of swaps follows timing): vLLM 0.3.3 copies each layer's K and V of a
    # block apart, fastswitch each contiguous run of blocks with all its layers.
    assert vllm["copy_calls"] == vllm["blocks_moved"] * TINY_CONFIG["num_hidden_layers"] * 2
    assert 0 < fastswitch["copy_calls"] <= fastswitch["blocks_moved"]
    for preset, users in summary["users"].items():
        assert [u["turns"] for u in users] == [2, 2, 2], preset


def run_notebook(name: str) -> str:
    """Executes examples/<name> in the quick settings (tiny random model, few simulated conversations);
    returns its printed output, after checking that no cell failed."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    env = {**os.environ, "FASTSWITCH_NOTEBOOK_MODEL": "tiny-random", "FASTSWITCH_NOTEBOOK_SIM_CONVERSATIONS": "6",
           "MPLBACKEND": "Agg"}  # fmt: skip
    env.pop("TRITON_INTERPRET", None)  # the notebook runs as a user would: torch attention on CPU
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})  # fmt: skip
    client.execute(env=env)
    assert not [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    return "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )


def test_quickstart_notebook_runs_end_to_end(private_cache):
    outputs = run_notebook("quickstart.ipynb")
    assert "before:" in outputs and "after: " in outputs and "urgent answer" in outputs
    assert "improvement over vllm" in outputs


def test_custom_policy_notebook_compares_its_policy_with_the_built_in_ones(private_cache):
    outputs = run_notebook("custom_policy.ipynb")
    assert "lacks the method(s) ['on_arrival', 'on_step', 'on_first_admission', 'on_output_token']" in outputs
    simulated, real = outputs.split("KV blocks; the cache holds")
    assert "6 conversations, Llama-3-8B on an A10, simulated" in simulated
    for table in (simulated, real):
        rows = [line.split()[0] for line in table.splitlines() if line.strip()]
        assert all(policy in rows for policy in ("fcfs", "priority", "vtc", "mlfq", "srpt")), table
    assert "greedy answers identical under every policy:" in real
