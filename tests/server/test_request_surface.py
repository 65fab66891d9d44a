"""vLLM's request surface through the official `openai` client: n, logprobs, echo, logit_bias, batches of
prompts, nulls, a missing model, the tool role, the utility endpoints, and a 400 for every field the
server does not implement."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from fastswitch.server.protocol import REJECTED
from server_harness import http_json

LONG = {"ignore_eos": True}


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_n_gives_n_choices_from_one_prefill(server):
    base_url, app = server
    before = app.state.engine_thread.stats["num_prompt_tokens"]
    prompt = [5, 6, 7, 8, 9, 10, 11, 12]
    answer = client(base_url).completions.create(model="tiny", prompt=prompt, n=3, max_tokens=5, temperature=1.0,
                                                 seed=1, extra_body=LONG)  # fmt: skip
    assert sorted(c.index for c in answer.choices) == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in answer.choices)
    assert answer.usage.prompt_tokens == len(prompt) and answer.usage.completion_tokens == 15
    # the engine thread republishes after the request: its prompt counter grew by one prefill
    prompt_tokens = http_json(base_url, "GET", "/stats")[1]["num_prompt_tokens"]
    assert prompt_tokens - before == len(prompt)
    streamed = client(base_url).completions.create(model="tiny", prompt=prompt, n=3, max_tokens=5, temperature=1.0,
                                                   seed=1, stream=True, extra_body=LONG)  # fmt: skip
    texts = {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {c.index: c.text for c in answer.choices}  # seeded: the same samples


def test_logprobs_and_echo_agree_with_a_log_softmax_of_the_models_logits(server, tiny_model):
    base_url, _ = server
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = [3, 14, 15, 92, 65, 35]
    answer = client(base_url).completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0, logprobs=2,
                                                 echo=True, extra_body=LONG)  # fmt: skip
    choice = answer.choices[0]
    tokens = choice.logprobs.tokens
    assert len(tokens) == len(prompt) + 4 and choice.logprobs.token_logprobs[0] is None
    generated = choice.logprobs.token_logprobs[len(prompt) :]
    model = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    ids = prompt + [int(t) for t in _generated_ids(base_url, prompt)]
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [reference[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=2e-3)
    assert all(1 <= len(top) <= 3 for top in choice.logprobs.top_logprobs[1:])  # keyed by text: may collide
    assert choice.text.startswith(tokenizer.decode(prompt)) and generated
    offsets = choice.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0


def _generated_ids(base_url: str, prompt: list[int]) -> list[int]:
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 0, "ignore_eos": True,
            "return_tokens_as_token_ids": True}  # fmt: skip
    status, answer = http_json(base_url, "POST", "/v1/completions", body)
    assert status == 200
    return [t.split(":")[1] for t in answer["choices"][0]["logprobs"]["tokens"]]


def test_chat_logprobs_have_the_chat_shape(server):
    base_url, _ = server
    answer = client(base_url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, top_logprobs=2,
        extra_body=LONG,
    )  # fmt: skip
    content = answer.choices[0].logprobs.content
    assert len(content) == 3
    for item in content:
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.bytes == list(item.token.encode()) and item.logprob <= 0


def test_logit_bias_forces_a_token(server):
    base_url, _ = server
    extra = {**LONG, "return_tokens_as_token_ids": True}
    answer = client(base_url).completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=1.0,
                                                 logit_bias={"65": 100}, extra_body=extra, logprobs=0)  # fmt: skip
    assert answer.choices[0].logprobs.tokens == ["token_id:65"] * 6


def test_a_list_of_prompts_gives_one_choice_each(server):
    base_url, _ = server
    prompts = ["a b", "c d e", [7, 8, 9]]
    answer = client(base_url).completions.create(model="tiny", prompt=prompts, max_tokens=3, n=2, extra_body=LONG)
    assert sorted(c.index for c in answer.choices) == list(range(6))
    singles = [client(base_url).completions.create(model="tiny", prompt=p, max_tokens=3, temperature=0, extra_body=LONG)
               for p in prompts]  # fmt: skip
    greedy = client(base_url).completions.create(
        model="tiny", prompt=prompts, max_tokens=3, temperature=0, extra_body=LONG
    )
    assert [c.text for c in sorted(greedy.choices, key=lambda c: c.index)] == [s.choices[0].text for s in singles]


def test_nulls_mean_defaults_and_the_model_may_be_omitted(server):
    base_url, _ = server
    body = {"prompt": "hi", "max_tokens": 2, "temperature": None, "top_p": None, "n": None, "stop": None,
            "logprobs": None, "seed": None, "top_k": -1, "presence_penalty": None, "ignore_eos": True}  # fmt: skip
    status, answer = http_json(base_url, "POST", "/v1/completions", body)
    assert status == 200 and answer["model"] == "tiny" and answer["usage"]["completion_tokens"] == 2


def test_the_tool_role_and_assistant_content_null_render(server):
    base_url, _ = server
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                              "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]  # fmt: skip
    answer = client(base_url).chat.completions.create(model="tiny", messages=messages, max_tokens=2, extra_body=LONG)
    assert answer.choices[0].finish_reason == "length"
    status, tokens = http_json(base_url, "POST", "/tokenize", {"messages": messages})
    assert status == 200 and tokens["count"] == answer.usage.prompt_tokens


def test_stop_with_include_stop_str_in_output(server):
    base_url, _ = server
    prompt = [5, 6, 7]
    full = client(base_url).completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, extra_body=LONG
    )
    text = full.choices[0].text
    stop = text[3:5]
    assert stop.strip(), text
    for stream in (False, True):
        for include in (False, True):
            answer = client(base_url).completions.create(
                model="tiny", prompt=prompt, max_tokens=12, temperature=0, stop=[stop], stream=stream,
                extra_body={**LONG, "include_stop_str_in_output": include},
            )  # fmt: skip
            got = "".join(c.choices[0].text for c in answer) if stream else answer.choices[0].text
            cut = text.index(stop)
            assert got == text[: cut + len(stop) if include else cut]


def test_tokenize_detokenize_round_trip_and_model_by_id(server):
    base_url, _ = server
    status, tokens = http_json(base_url, "POST", "/tokenize", {"prompt": "hello world", "model": "tiny"})
    assert status == 200 and tokens["count"] == len(tokens["tokens"]) > 0
    status, text = http_json(base_url, "POST", "/detokenize", {"tokens": tokens["tokens"]})
    assert status == 200 and text["prompt"].strip() == "hello world"
    assert client(base_url).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client(base_url).models.retrieve("gpt-4")
    status, body = http_json(base_url, "GET", "/version")
    assert status == 200 and body["version"]


REJECTED_VALUES = {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
                   "response_format": {"type": "json_object"}, "echo": True, "suffix": "x",
                   "skip_special_tokens": False, "use_beam_search": True, "length_penalty": 2.0,
                   "include_reasoning": False, "store": True,
                   "service_tier": "flex", "bad_words": ["x"], "return_token_ids": True,
                   "modalities": ["audio"], "function_call": "auto", "functions": [{"name": "f"}]}  # fmt: skip


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_every_field_not_implemented_is_a_400_naming_it(server, endpoint):
    base_url, _ = server
    base = {"prompt": "hi"} if endpoint == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    names = [*REJECTED[endpoint], "no_such_field"]
    for name in names:
        value = REJECTED_VALUES.get(name, "something")
        status, body = http_json(base_url, "POST", path, {**base, "max_tokens": 1, name: value})
        assert status == 400 and body["error"]["param"] == name, (name, body)
    conflicts = [("stream_options", {"stream_options": {"include_usage": True}}), ("best_of", {"best_of": 2}),
                 ("prompt_logprobs", {"prompt_logprobs": 1, "stream": True})]  # fmt: skip
    if endpoint == "completions":
        conflicts.append(("echo", {"echo": True, "logprobs": 1, "stream": True}))
    for name, fields in conflicts:
        status, body = http_json(base_url, "POST", path, {**base, "max_tokens": 1, **fields})
        assert status == 400 and body["error"]["param"] == name, (name, body)


def test_chat_streams_n_choices_with_continuous_usage(server):
    base_url, _ = server
    stream = client(base_url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2, temperature=1.0, seed=3,
        stream=True, stream_options={"include_usage": True}, extra_body={**LONG, "stream_options": {
            "include_usage": True, "continuous_usage_stats": True}},
    )  # fmt: skip
    finished, usages = {}, []
    for chunk in stream:
        usages.append(chunk.usage.completion_tokens)
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length"}
    assert usages == sorted(usages) and usages[-1] == 8 and usages[0] == 0


def test_min_tokens_holds_off_a_stop_token(server):
    base_url, _ = server
    prompt = [5, 6, 7]
    first = _generated_ids(base_url, prompt)[0]
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "stop_token_ids": [int(first)]}
    status, answer = http_json(base_url, "POST", "/v1/completions", body)
    assert status == 200 and answer["usage"]["completion_tokens"] == 1
    assert answer["choices"][0]["stop_reason"] == int(first)
    status, answer = http_json(base_url, "POST", "/v1/completions", {**body, "min_tokens": 3})
    assert status == 200 and answer["usage"]["completion_tokens"] >= 3


def test_chat_template_fields_act(server):
    base_url, app = server
    tokenizer = app.state.serving.tokenizer
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]

    def prompt_tokens(**fields) -> int:
        body = {"messages": messages, "max_tokens": 1, **fields}
        status, answer = http_json(base_url, "POST", "/v1/chat/completions", body)
        assert status == 200, answer
        return answer["usage"]["prompt_tokens"]

    cued = prompt_tokens()
    closed = prompt_tokens(add_generation_prompt=False)
    continued = prompt_tokens(add_generation_prompt=False, continue_final_message=True)
    assert continued < closed < cued  # no cue; then not even the last message's end marker
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = original + "{% if greeting %}{{ greeting }}{% endif %}"
        assert prompt_tokens(chat_template_kwargs={"greeting": "good morning"}) > cued
        tokenizer.chat_template = (
            "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}{% endfor %}"
        )
        status, answer = http_json(base_url, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1})
        assert status == 400 and "'assistant'" in answer["error"]["message"]
    finally:
        tokenizer.chat_template = original


def test_truncate_prompt_tokens_and_prompt_logprobs(server):
    base_url, _ = server
    body = {"prompt": list(range(10, 30)), "max_tokens": 1, "truncate_prompt_tokens": 5, "prompt_logprobs": 1}
    status, answer = http_json(base_url, "POST", "/v1/completions", body)
    assert status == 200 and answer["usage"]["prompt_tokens"] == 5
    prompt_logprobs = answer["choices"][0]["prompt_logprobs"]
    assert len(prompt_logprobs) == 5 and prompt_logprobs[0] is None
    assert all(str(token) in entry for token, entry in zip(range(26, 30), prompt_logprobs[1:]))


def test_penalties_and_logit_bias_act_as_defined(server, tiny_model):
    """Greedy answers with logit_bias and presence / frequency / repetition penalties equal a greedy loop
    over transformers' logits with OpenAI's and vLLM's definitions applied directly."""
    base_url, _ = server
    model = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    prompt, bias = [5, 6, 7], {65: 3.0, 130: -2.0}

    def reference(presence: float, frequency: float, repetition: float) -> list[int]:
        ids = list(prompt)
        for _ in range(8):
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].double()
            for token, value in bias.items():
                logits[token] += value
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[ids] = True  # repetition: prompt and output tokens
            logits = torch.where(seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
            counts = torch.bincount(torch.tensor(ids[len(prompt) :], dtype=torch.long), minlength=logits.numel())
            logits = logits - frequency * counts - presence * (counts > 0)
            ids.append(int(logits.argmax()))
        return ids[len(prompt) :]

    answers = []
    for presence, frequency, repetition in [(0.0, 0.0, 1.0), (1.5, 0.0, 1.0), (0.0, 1.0, 1.0), (0.0, 0.0, 3.0)]:
        body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 0, "ignore_eos": True,
                "return_tokens_as_token_ids": True, "logit_bias": {str(k): v for k, v in bias.items()},
                "presence_penalty": presence, "frequency_penalty": frequency,
                "repetition_penalty": repetition}  # fmt: skip
        status, answer = http_json(base_url, "POST", "/v1/completions", body)
        assert status == 200, answer
        got = [int(t.split(":")[1]) for t in answer["choices"][0]["logprobs"]["tokens"]]
        assert got == reference(presence, frequency, repetition), (presence, frequency, repetition)
        answers.append(got)
    assert all(penalised != answers[0] for penalised in answers[1:]), answers  # each penalty changed the answer
