"""The server through the official `openai` client: answers, streams, errors, and disconnects."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from server_harness import http_json, running_server

LONG = {"ignore_eos": True}  # the random model may sample its EOS early; these tests want exact lengths


def client(base_url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60, **kwargs)


def test_models_lists_the_served_model(server):
    base_url, _ = server
    models = client(base_url).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_greedy_completion_equals_transformers_generate(server, tiny_model):
    base_url, _ = server
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids = tokenizer("The quick brown fox")["input_ids"]
    reference = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        generated = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                                       min_new_tokens=12)  # fmt: skip
    expected = tokenizer.decode(generated[0, len(prompt_ids) :], skip_special_tokens=True)
    out = client(base_url).completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12,
                                              temperature=0, extra_body=LONG)  # fmt: skip
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt_ids), 12)


def test_chat_stream_concatenates_to_the_non_streamed_answer(server):
    base_url, _ = server
    c = client(base_url)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, extra_body=LONG)
    stream = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body=LONG)  # fmt: skip
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 10


def test_stop_string_ends_the_answer_before_it(server):
    base_url, _ = server
    c = client(base_url)
    full = c.completions.create(model="tiny", prompt="abc", max_tokens=30, temperature=0, extra_body=LONG)
    text = full.choices[0].text
    stop = text[5:7]  # cut in the middle of what greedy decoding says
    assert len(stop) == 2
    cut = c.completions.create(model="tiny", prompt="abc", max_tokens=30, temperature=0, stop=[stop], extra_body=LONG)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "request_kwargs, status, param",
    [
        (dict(max_tokens=0), 400, "max_tokens"),
        (dict(max_tokens=600), 400, "max_tokens"),  # 600 > max_model_len=512
        (dict(temperature=-1.0), 400, "temperature"),
        (dict(n=2, extra_body={"best_of": 3}), 400, "best_of"),
        (dict(model="gpt-4"), 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(server, request_kwargs, status, param):
    base_url, _ = server
    kwargs = {"model": "tiny", "prompt": "hi", "max_tokens": 4, **request_kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client(base_url).completions.create(**kwargs)
    assert info.value.status_code == status
    error = info.value.body if "message" in info.value.body else info.value.body["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_malformed_bodies_get_openai_errors(server):
    base_url, _ = server
    status, missing = http_json(base_url, "POST", "/v1/chat/completions", {"model": "tiny"})
    assert status == 400 and missing["error"]["param"] == "messages"
    status, not_json = http_json(base_url, "POST", "/v1/completions", b"{nope")
    assert status == 400 and set(not_json["error"]) == {"message", "type", "param", "code"}
    status, nowhere = http_json(base_url, "GET", "/v1/engines")
    assert status == 404 and nowhere["error"]["type"] == "not_found_error"


def test_many_concurrent_streams_under_preemption_all_complete(tiny_model):
    # 8 blocks of 16 tokens for 10 clients of ~40 tokens each: the scheduler must swap contexts out.
    prompts = [f"Client {i} asks question number {i}?" for i in range(10)]
    with running_server(tiny_model, num_gpu_blocks=8, max_num_seqs=4, policy="vtc") as (base_url, app):
        alone = [
            client(base_url).completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0,
                                                extra_body=LONG).choices[0].text
            for p in prompts
        ]  # fmt: skip

        def stream(i: int) -> tuple[str, str | None]:
            c = client(base_url, default_headers={"X-Client-Id": f"client-{i}"})
            chunks = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=24, temperature=0, stream=True,
                                          extra_body=LONG)  # fmt: skip
            pieces = [(ch.choices[0].text, ch.choices[0].finish_reason) for ch in chunks]
            return "".join(t for t, _ in pieces), pieces[-1][1]

        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(stream, range(len(prompts))))
        stats = app.state.serving.engine.stats()
    assert [text for text, _ in results] == alone
    assert all(reason == "length" for _, reason in results)
    assert stats["num_preemptions"] > 0 and stats["swap_out_count"] > 0
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]


def test_client_that_disconnects_mid_stream_frees_its_request_and_blocks(server):
    base_url, app = server
    aborted_before = app.state.engine_thread.num_aborted  # the stop-string test aborts one too
    body = {"model": "tiny", "prompt": "Tell me a long story", "max_tokens": 400, "stream": True, "ignore_eos": True}
    connection = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=30)
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    events = (line for line in iter(response.readline, b"") if line.startswith(b"data:"))
    received = [next(events) for _ in range(3)]
    assert json.loads(received[0][5:])["choices"][0]["finish_reason"] is None
    engine = app.state.serving.engine
    assert engine.has_unfinished() and engine.stats()["num_free_gpu_blocks"] < engine.stats()["num_gpu_blocks"]
    connection.close()  # hang up with the answer far from done
    deadline = time.monotonic() + 10
    engine_thread = app.state.engine_thread
    while time.monotonic() < deadline and (engine.has_unfinished() or engine_thread.num_aborted == aborted_before):
        time.sleep(0.05)
    _, stats = http_json(base_url, "GET", "/stats")
    assert stats["num_aborted"] == aborted_before + 1 and stats["num_live_requests"] == 0
    assert not engine.has_unfinished()
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]


def test_vtc_serves_a_new_client_before_another_clients_backlog(tiny_model):
    # One sequence at a time: under fcfs the light client's request would wait for the whole backlog.
    with running_server(tiny_model, num_gpu_blocks=64, max_num_seqs=1, policy="vtc") as (base_url, app):
        heavy = client(base_url, default_headers={"X-Client-Id": "heavy"})
        light = client(base_url)
        done: dict[str, float] = {}
        # The engine thread sees no work until every request is queued, so what is measured is the
        # policy's order, not how fast this machine happened to queue them.
        engine, gate = app.state.serving.engine, threading.Event()
        has_unfinished = engine.has_unfinished
        engine.has_unfinished = lambda: gate.is_set() and has_unfinished()

        def ask(name: str, c: openai.OpenAI, max_tokens: int, user: str | None = None) -> None:
            extra = {"user": user} if user else {}
            c.completions.create(model="tiny", prompt=f"{name} asks", max_tokens=max_tokens, extra_body=LONG, **extra)
            done[name] = time.monotonic()

        def wait_until_live(count: int) -> None:
            deadline = time.monotonic() + 30
            while app.state.engine_thread.num_live < count:
                live = app.state.engine_thread.num_live
                assert time.monotonic() < deadline, f"only {live} of {count} requests queued"
                time.sleep(0.005)

        with ThreadPoolExecutor(4) as pool:
            backlog = [pool.submit(ask, f"heavy-{i}", heavy, 80) for i in range(3)]
            wait_until_live(3)
            answer = pool.submit(ask, "light", light, 4, user="light")
            wait_until_live(4)
            gate.set()
            answer.result()
            for future in backlog:
                future.result()
    assert sum(done["light"] < done[f"heavy-{i}"] for i in range(3)) >= 2


def test_client_that_gives_up_on_a_whole_answer_frees_its_request(server):
    # The engine is held (it adds requests but does not step) until the client has left, so the answer
    # cannot finish first however fast or slow this machine is: the disconnect itself must be noticed.
    base_url, app = server
    engine, engine_thread, gate = app.state.serving.engine, app.state.engine_thread, threading.Event()
    aborted_before, generated_before = engine_thread.num_aborted, engine.stats()["num_generated_tokens"]
    has_unfinished = engine.has_unfinished
    engine.has_unfinished = lambda: gate.is_set() and has_unfinished()
    try:
        body = {"model": "tiny", "prompt": "Another long story", "max_tokens": 480, "ignore_eos": True}
        connection = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=30)
        headers = {"Content-Type": "application/json"}
        connection.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        wait_for(lambda: engine_thread.num_live == 1, "the request to be queued")
        connection.close()  # give up before a single token
        wait_for(lambda: engine_thread.num_aborted == aborted_before + 1, "the disconnect to abort the request")
    finally:
        gate.set()
        del engine.has_unfinished
    assert engine_thread.num_live == 0 and not engine.has_unfinished()
    stats = engine.stats()
    assert stats["num_generated_tokens"] == generated_before
    assert stats["num_free_gpu_blocks"] == stats["num_gpu_blocks"]


def wait_for(condition, what: str, timeout: float = 60) -> None:
    """Waits for something another thread does (a bound only against hanging forever, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.01)


def test_a_failing_engine_step_answers_500_and_the_server_recovers(tiny_model):
    with running_server(tiny_model, num_gpu_blocks=16) as (base_url, app):
        engine = app.state.serving.engine
        real_step = engine.step
        failures = iter([RuntimeError("device lost")])

        def step_that_fails_once():
            for failure in failures:
                raise failure
            return real_step()

        engine.step = step_that_fails_once
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 4, "ignore_eos": True}
        status, error = http_json(base_url, "POST", "/v1/completions", body)
        assert status == 500 and error["error"]["type"] == "server_error"
        assert "device lost" in error["error"]["message"]
        _, health = http_json(base_url, "GET", "/health")
        assert "device lost" in health["last_error"]
        status, answer = http_json(base_url, "POST", "/v1/completions", body)
        assert status == 200 and answer["usage"]["completion_tokens"] == 4
        assert engine.stats()["num_free_gpu_blocks"] == 16


def test_the_servers_latency_percentiles_cover_a_bounded_window(server):
    from fastswitch.server.serving_engine import METRICS_WINDOW

    base_url, app = server
    client(base_url).completions.create(model="tiny", prompt="hello", max_tokens=2)
    run_metrics = app.state.serving.engine.run_metrics
    assert run_metrics.window == METRICS_WINDOW and run_metrics.ttfts.maxlen == METRICS_WINDOW
    assert len(run_metrics.ttfts) >= 1
