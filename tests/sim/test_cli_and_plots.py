import json

import pytest

from fastswitch.sim.__main__ import main
from fastswitch.sim.experiments import get_experiment
from fastswitch.sim.plots import plot_experiment
from fastswitch.sim.runner import comparison_rows, jobs_of, run_job, run_jobs

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
        assert json.dumps(a) == json.dumps(b)  # NaN (no swaps: no mean switch latency) compares equal here
    assert len(comparison_rows(parallel)) == 2
    paths = plot_experiment(parallel, tmp_path)
    assert [p.name for p in paths] == ["smoke-cdf.png", "smoke-improvement.png", "smoke-rates.png"]


def test_a_sweep_runs_on_a_local_ray_cluster_as_on_local_processes():
    """Starts a local Ray instance with one worker (it imports torch once; about 20-40 s on 2 busy
    cores), runs two seeds of a tiny sweep as Ray tasks, and checks each result against the same job
    run in this process."""
    pytest.importorskip("ray")
    exp = get_experiment("smoke").replace(num_conversations=2, seeds=(0, 1), presets=("vllm",))
    jobs = jobs_of(exp)
    on_ray = run_jobs(jobs, ray_address="local", processes=1, progress=False)
    local = run_jobs(jobs, processes=1, progress=False)
    assert [(r["seed"], r["preset"]) for r in on_ray] == [(0, "vllm"), (1, "vllm")]
    for a, b in zip(on_ray, local):
        a.pop("wall_time_s"), b.pop("wall_time_s")
        assert json.dumps(a) == json.dumps(b)
    import ray

    assert not ray.is_initialized()  # the instance started for the run is shut down after it
