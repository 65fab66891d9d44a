"""Serving that no client can break: one test (or a few) for each way a hostile or careless client
broke the server before (isolation, a responsive loop, validation before the engine, body limits,
bounded client state, bad Unicode, the KV cache's bound, health after a failure)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from server_harness import http_json, running_server, send

POISON_SEED = 4242  # the sampler fails for requests with this seed (a test hook; validation lets it through)
LONG = {"ignore_eos": True}


def completion(prompt: str, max_tokens: int, **extra) -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **LONG, **extra}


def poison_the_sampler(engine) -> None:
    sampler = engine.executor.sampler
    real = sampler.sample

    def sample(logits, params, generators, *rest):
        if any(p.seed == POISON_SEED for p in params):
            raise RuntimeError("this row cannot be sampled")
        return real(logits, params, generators, *rest)

    sampler.sample = sample


def connection_to(base_url: str, timeout: float = 30) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=timeout)


@pytest.fixture(scope="module")
def guarded(tiny_model):
    """A vtc server with a 64 KiB body limit, whose sampler fails for requests seeded POISON_SEED."""
    with running_server(tiny_model, num_gpu_blocks=32, max_body_bytes=64 << 10, policy="vtc") as running:
        poison_the_sampler(running[1].state.serving.engine)
        yield running


def free_blocks(app) -> tuple[int, int]:
    stats = app.state.serving.engine.stats()
    return stats["num_free_gpu_blocks"], stats["num_gpu_blocks"]


def test_a_request_that_fails_in_a_step_fails_alone(guarded):
    base_url, app = guarded
    prompts = [f"Request number {i} goes on" for i in range(3)]
    quiet = [
        http_json(base_url, "POST", "/v1/completions", completion(p, 40))[1]["choices"][0]["text"] for p in prompts
    ]
    with ThreadPoolExecutor(4) as pool:
        long = [pool.submit(http_json, base_url, "POST", "/v1/completions", completion(p, 40)) for p in prompts]
        status, error = pool.submit(http_json, base_url, "POST", "/v1/completions",
                                    completion("bad", 40, seed=POISON_SEED, temperature=1.0)).result()  # fmt: skip
        answers = [future.result() for future in long]
    assert status == 500 and error["error"]["type"] == "server_error"
    assert "this row cannot be sampled" in error["error"]["message"]
    assert [a[1]["choices"][0]["text"] for a in answers] == quiet
    assert all(a[0] == 200 and a[1]["usage"]["completion_tokens"] == 40 for a in answers)
    status, health = http_json(base_url, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert free_blocks(app)[0] == free_blocks(app)[1]


def test_handlers_never_wait_for_the_engine(guarded):
    """The engine's lock held (a step that never ends): /health, /stats, /v1/models still answer, and a
    generation request is accepted and answered once the engine moves again."""
    base_url, app = guarded
    engine = app.state.serving.engine
    with engine._lock:
        for path in ("/health", "/stats", "/v1/models"):
            status, _ = http_json(base_url, "GET", path, timeout=10)
            assert status == 200
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http_json, base_url, "POST", "/v1/completions", completion("held", 3))
            status, _ = http_json(base_url, "GET", "/health", timeout=10)  # while that request waits
            assert status == 200
            engine._lock.release()  # let the engine step (the with-block re-acquires nothing)
            try:
                status, body = answer.result(timeout=60)
            finally:
                engine._lock.acquire()
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_a_request_answered_400_never_enters_the_engine(guarded):
    base_url, app = guarded
    engine = app.state.serving.engine
    added = []
    real_add = engine.add_request
    engine.add_request = lambda *a, **k: added.append(a) or real_add(*a, **k)
    try:
        cases = [
            (dict(stop=[""]), "stop"),
            (dict(stop=["ok", ""]), "stop"),
            (dict(seed=2**64), "seed"),
            (dict(top_p=0.0), "top_p"),
            (dict(temperature=float("nan")), "temperature"),
            (dict(max_tokens=10**30), "max_tokens"),
            # Refused by the engine's front door (add_request) rather than by the server's field checks.
            (dict(prompt=[1, 10**9]), "prompt"),
        ]
        for fields, param in cases:
            body = json.dumps({**completion("hi", 400), **fields})  # NaN as JSON's NaN token, as Python sends it
            status, error = http_json(base_url, "POST", "/v1/completions", body.encode())
            assert status == 400, (fields, error)
            assert error["error"]["param"] in (param if isinstance(param, tuple) else (param,)), (fields, error)
            assert error["error"]["type"] == "invalid_request_error"
    finally:
        del engine.add_request
    # Only max_tokens beyond the context and the token ids outside the vocabulary reach the engine's
    # front door, which refuses them before anything is added.
    assert len(added) == 2
    assert app.state.engine_thread.num_live == 0 and not engine.has_unfinished()


def test_bodies_over_the_limit_get_a_413_before_they_are_read(guarded):
    base_url, _ = guarded
    big = completion("x" * (70 << 10), 4)
    status, error = http_json(base_url, "POST", "/v1/completions", big)
    assert status == 413 and error["error"]["code"] == "request_too_large"
    assert "65536 bytes" in error["error"]["message"]
    # Without a Content-Length (chunked), the body is counted as it arrives.
    connection = connection_to(base_url)
    payload = json.dumps(big).encode()
    chunks = (payload[i : i + 8192] for i in range(0, len(payload), 8192))
    connection.request("POST", "/v1/completions", body=chunks, headers={"Content-Type": "application/json"},
                       encode_chunked=True)  # fmt: skip
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_tokenizing_never_blocks_the_event_loop(guarded):
    base_url, app = guarded
    serving, release = app.state.serving, threading.Event()
    real_encode = serving.encode
    serving.encode = lambda *args, **kwargs: release.wait(30) and real_encode(*args, **kwargs)  # takes its time
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http_json, base_url, "POST", "/v1/completions", completion("slow", 2))
            status, _ = http_json(base_url, "GET", "/health", timeout=10)
            assert status == 200 and not answer.done()
            release.set()
            assert answer.result(timeout=60)[0] == 200
    finally:
        del serving.encode


def test_long_client_ids_are_kept_by_digest(guarded):
    base_url, app = guarded
    policy = app.state.serving.engine.scheduler.policy
    for i in range(5):
        long_id = f"{i}-" + "u" * (20 << 10)
        status, _ = http_json(base_url, "POST", "/v1/completions", completion("hi", 1, user=long_id))
        assert status == 200
    keys = [k for k in policy.counters if str(k).startswith("sha256:")]
    assert len(keys) == 5 and max(len(str(k)) for k in policy.counters) <= 71


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", b'{"model": "tiny", "prompt": "a\\ud800", "max_tokens": 2}', "prompt"),
        ("/v1/completions", b'{"model": "tiny\\udfff", "prompt": "a", "max_tokens": 2}', "model"),
        ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "messages"),
        ("/v1/completions", b'{"model": "tiny", "prompt": "a", "stop": ["\\udc00"], "max_tokens": 2}', "stop"),
    ],
)
def test_lone_surrogates_are_a_400_and_the_connection_stays_usable(guarded, path, body, param):
    base_url, _ = guarded
    connection = connection_to(base_url)
    try:
        status, error = send(connection, "POST", path, body)
        assert status == 400 and error["error"]["param"] == param and "surrogate" in error["error"]["message"]
        status, answer = send(connection, "POST", "/v1/completions", completion("fine", 2))  # same connection
        assert status == 200 and answer["usage"]["completion_tokens"] == 2
    finally:
        connection.close()


def test_max_model_len_is_what_the_kv_cache_holds(tiny_model):
    # 4 blocks of 16 tokens hold 64 tokens: asked for 512, the server serves (and reports) 64.
    with running_server(tiny_model, num_gpu_blocks=4, max_model_len=512) as (base_url, app):
        _, models = http_json(base_url, "GET", "/v1/models")
        assert models["data"][0]["max_model_len"] == 64
        prompt = [5] * 10
        status, error = http_json(base_url, "POST", "/v1/completions", completion(prompt, 60))
        assert status == 400 and error["error"]["code"] == "context_length_exceeded"
        message = error["error"]["message"]
        assert "maximum context length is 64 tokens" in message and "70 tokens" in message
        status, answer = http_json(base_url, "POST", "/v1/completions", completion(prompt, 54))
        assert status == 200 and answer["usage"]["completion_tokens"] == 54
        assert answer["choices"][0]["finish_reason"] == "length"
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **LONG}  # max_tokens omitted
        status, answer = http_json(base_url, "POST", "/v1/chat/completions", chat)
        assert status == 200 and answer["usage"]["total_tokens"] == 64  # the rest of the context
        # A prompt that fills the context leaves no room even for the default max_tokens; in a batch,
        # the prompt before it (added first) is taken back.
        full = {"model": "tiny", "prompt": [[5] * 10, [5] * 64]}
        status, error = http_json(base_url, "POST", "/v1/completions", full)
        assert status == 400 and error["error"]["code"] == "context_length_exceeded"
        assert "requested 65 tokens (64 in the prompt, 1 in the completion)" in error["error"]["message"]
        engine, deadline = app.state.serving.engine, time.monotonic() + 10
        while engine.has_unfinished() and time.monotonic() < deadline:  # the abort reaches the engine thread
            time.sleep(0.05)
        assert not engine.has_unfinished() and app.state.engine_thread.num_live == 0


def test_health_turns_503_when_the_engine_cannot_go_on(tiny_model):
    with running_server(tiny_model, num_gpu_blocks=16) as (base_url, app):
        engine = app.state.serving.engine

        def broken_step():
            raise RuntimeError("device lost")

        engine.step = broken_step
        statuses = []
        for _ in range(4):  # each request fails the step it is in; 3 failed steps in a row end the engine
            status, error = http_json(base_url, "POST", "/v1/completions", completion("hi", 2))
            statuses.append(status)
            assert "device lost" in error["error"]["message"]
        assert statuses[:3] == [500, 500, 500] and statuses[3] == 503
        status, health = http_json(base_url, "GET", "/health")
        assert status == 503 and health["status"] == "failed" and "device lost" in health["error"]["message"]
        assert health["error"]["code"] == "engine_failed"
        status, error = http_json(base_url, "POST", "/v1/completions", completion("hi", 2))
        assert status == 503 and error["error"]["code"] == "engine_failed"
