import json

import pytest

from fastswitch.sim.__main__ import main
from fastswitch.sim.experiments import get_experiment
from fastswitch.sim.plots import plot_experiment
from fastswitch.sim.runner import Job, comparison_rows, jobs_of, run_job, run_jobs

# Three short conversations per run: enough for every code path, a second or so per simulation.
TINY_RUN = ["--conversations", "3", "--rate", "4", "--processes", "1", "--quiet"]


def test_cli_runs_an_experiment_and_writes_json_and_plots(tmp_path, capsys):
    assert main(["smoke", *TINY_RUN, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "improvement over vllm" in printed and "fastswitch / vllm" in printed
    document = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["preset"] for r in document["runs"]] == ["vllm", "fastswitch"]
    assert document["runs"][0]["num_finished_requests"] == document["runs"][0]["num_turns"]
    assert (tmp_path / "smoke-cdf.png").stat().st_size > 0
    assert (tmp_path / "smoke-improvement.png").stat().st_size > 0


def test_cli_lists_experiments_and_rejects_bad_presets(tmp_path, capsys):
    assert main(["--list"]) == 0
    assert "qwen32b-a100" in capsys.readouterr().out
    with pytest.raises(ValueError, match="preset='turbo'"):
        main(["smoke", *TINY_RUN, "--presets", "turbo", "--out", str(tmp_path)])


def test_jobs_cover_rates_seeds_and_presets():
    exp = get_experiment("rate-sweep-llama8b-a10").replace(seeds=(0, 1))
    jobs = jobs_of(exp)
    assert len(jobs) == 5 * 2 * 2
    assert {(j.rate, j.seed, j.preset) for j in jobs} == {
        (r, s, p) for r in exp.rates for s in (0, 1) for p in ("vllm", "fastswitch")
    }


def test_parallel_runs_equal_sequential_runs_and_plot_a_sweep(tmp_path):
    exp = get_experiment("smoke").replace(num_conversations=2, rates=(2.0, 4.0), presets=("vllm", "fastswitch"))
    jobs = jobs_of(exp)
    parallel = run_jobs(jobs, processes=2, progress=False)
    sequential = [run_job(job) for job in jobs]
    for a, b in zip(parallel, sequential):
        a.pop("wall_time_s"), b.pop("wall_time_s")
        assert a == b
    assert len(comparison_rows(parallel)) == 2
    paths = plot_experiment(parallel, tmp_path)
    assert [p.name for p in paths] == ["smoke-cdf.png", "smoke-improvement.png", "smoke-rates.png"]


def test_ray_needs_ray_installed():
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs ray installed"):
            run_jobs([Job(get_experiment("smoke"), "vllm", 0, 1.0)], ray_address="auto")
    else:
        pytest.skip("ray is installed: the error path cannot be reached")
