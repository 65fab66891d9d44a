"""`fastswitch serve --tensor-parallel-size 2` on the CPU: the server answers through an engine whose
model is split over this process and one worker, and the worker ends with the server."""

from __future__ import annotations

import pytest
import torch

from fastswitch.cli import main
from fastswitch.parallel.workers import WorkerGroup

TINY = ["--model", "tiny-random", "--num-gpu-blocks", "16", "--max-model-len", "256", "--device", "cpu",
        "--attention-backend", "torch", "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def private_cache_and_threads(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FASTSWITCH_CACHE", str(tmp_path_factory.getbasetemp() / "fastswitch-cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_serve_with_two_ranks_answers_and_stops_its_worker(monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    groups: list[WorkerGroup] = []
    start = WorkerGroup.start

    def recording_start(*args, **kwargs):
        group = start(*args, **kwargs)
        groups.append(group)
        return group

    seen = {}

    def fake_run(app, host, port, log_level):  # answers through the app instead of opening a socket
        with TestClient(app) as http:
            seen["answer"] = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3,
                                                                 "ignore_eos": True}).json()  # fmt: skip
            seen["worker"] = groups[0].worker_stats()[0]

    monkeypatch.setattr(WorkerGroup, "start", staticmethod(recording_start))
    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--tensor-parallel-size", "2", "--served-model-name", "tiny", *TINY]) == 0
    assert seen["answer"]["usage"]["completion_tokens"] == 3
    assert groups[0].size == 2 and seen["worker"]["steps"] >= 3  # the worker ran every step
    assert all(p.exitcode == 0 for p in groups[0].processes)  # stopped cleanly when the server stopped
