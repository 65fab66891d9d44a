"""vLLM's sampling surface through the engine and LLM, on a tiny random Llama, against transformers.

Logprobs against a log-softmax of transformers' own logits; penalties and logit_bias against a greedy
decode that applies vLLM's definitions to transformers' logits step by step; min_tokens; stop
strings with and without include_stop_str_in_output; n > 1 from one prefill, under preemption too.
"""

from __future__ import annotations

import pytest
import torch

from fastswitch.build import build_engine
from fastswitch.config import EngineConfig
from fastswitch.models.loader import load_model
from fastswitch.models.sampling import SamplingParams
from tiny_llamas import tiny_llama

VOCAB, EOS = 128, 1
PROMPT = [5, 9, 30, 41, 7, 8, 9, 10, 11, 12, 13, 50, 60]


@pytest.fixture(scope="module")
def hf():
    return tiny_llama(vocab_size=VOCAB, rms_norm_eps=1e-6)


@pytest.fixture(scope="module")
def model(hf):
    return load_model(hf, dtype="float32", progress=False).model


def make_engine(model, num_gpu_blocks=64, tokenizer=None, **overrides):
    config = EngineConfig.from_preset("fastswitch", block_size=8, attention_backend="torch", max_model_len=256,
                                      num_gpu_blocks=num_gpu_blocks, **overrides)  # fmt: skip
    return build_engine(model, config, tokenizer=tokenizer, eos_token_ids=[EOS])


def generate(engine, params, prompt=PROMPT):
    output = engine.add_request(list(prompt), params)
    engine.run_until_done()
    return output


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def test_logprobs_are_a_log_softmax_of_the_models_logits(hf, model):
    # A token budget of 5 splits the prompt over three prefill chunks: prompt logprobs gather across them.
    engine = make_engine(model, max_num_batched_tokens=5)
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    output = generate(engine, params)
    tokens = PROMPT + output.token_ids
    reference = torch.log_softmax(hf_logits(hf, tokens), dim=-1)
    assert len(output.logprobs) == 6 and len(output.prompt_logprobs) == len(PROMPT)
    assert output.prompt_logprobs[0] is None
    entries = [(PROMPT[p], output.prompt_logprobs[p], p - 1, 2) for p in range(1, len(PROMPT))]
    entries += [(t, output.logprobs[i], len(PROMPT) - 1 + i, 3) for i, t in enumerate(output.token_ids)]
    for token, entry, row, k in entries:
        expected = reference[row]
        top = expected.topk(k)
        assert list(entry)[0] == token  # the chosen token first, then the top k
        assert set(entry) == {token, *top.indices.tolist()}
        for token_id, logprob in entry.items():
            assert logprob.logprob == pytest.approx(float(expected[token_id]), abs=1e-4)
            assert logprob.rank == int((expected >= expected[token_id]).sum())
    engine.close()


def vllm_greedy(hf, prompt, params: SamplingParams, steps: int) -> list[int]:
    """Greedy decoding on transformers' logits with vLLM's definitions applied directly, token by token."""
    out: list[int] = []
    for _ in range(steps):
        row = hf_logits(hf, prompt + out)[-1].tolist()
        for token, bias in (params.logit_bias or {}).items():
            row[token] += bias
        for token in range(len(row)):
            if token in prompt or token in out:
                r = params.repetition_penalty
                row[token] = row[token] / r if row[token] > 0 else row[token] * r
            row[token] -= params.frequency_penalty * out.count(token) + params.presence_penalty * (token in out)
        out.append(max(range(len(row)), key=row.__getitem__))
    return out


@pytest.mark.parametrize(
    "penalties",
    [
        dict(repetition_penalty=1.8),
        dict(frequency_penalty=1.5),
        dict(presence_penalty=2.0),
        dict(presence_penalty=-0.5, frequency_penalty=0.7, repetition_penalty=1.3, logit_bias={5: 3.0, 9: -2.0}),
    ],
)
def test_penalties_and_logit_bias_change_the_output_as_vllm_defines(hf, model, penalties):
    engine = make_engine(model)
    plain = generate(engine, SamplingParams(max_tokens=12, ignore_eos=True)).token_ids
    params = SamplingParams(max_tokens=12, ignore_eos=True, **penalties)
    penalised = generate(engine, params).token_ids
    assert penalised == vllm_greedy(hf, PROMPT, params, 12)
    assert penalised != plain  # each setting is strong enough to matter on this model
    engine.close()


def test_logit_bias_forces_a_token_even_when_sampling(model):
    engine = make_engine(model)
    output = generate(engine, SamplingParams(max_tokens=8, temperature=1.0, logit_bias={42: 100}, ignore_eos=True))
    assert output.token_ids == [42] * 8
    engine.close()


def test_min_tokens_holds_off_stop_tokens_and_eos(model):
    engine = make_engine(model)
    first = generate(engine, SamplingParams(max_tokens=8, ignore_eos=True)).token_ids[0]
    stopped = generate(engine, SamplingParams(max_tokens=8, stop_token_ids=[first]))
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop" and stopped.stop_reason == first
    held = generate(engine, SamplingParams(max_tokens=8, stop_token_ids=[first, EOS], min_tokens=5))
    assert len(held.token_ids) >= 5 and first not in held.token_ids[:5] and EOS not in held.token_ids[:5]
    engine.close()


def letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + t % 26) for t in ids)


class Letters:
    """A tokenizer's decode for the engine: token t is the letter t mod 26."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return letters(ids)


def test_stop_strings_cut_the_text_with_and_without_the_stop_string(model):
    engine = make_engine(model, tokenizer=Letters())
    free = generate(engine, SamplingParams(max_tokens=12, ignore_eos=True))
    text = letters(free.token_ids)
    stop = text[4:6]
    first = text.find(stop)
    cut = generate(engine, SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop, "@never"]))
    assert (cut.text, cut.finish_reason, cut.stop_reason) == (text[:first], "stop", stop)
    assert cut.token_ids == free.token_ids[: first + len(stop)]  # it ended on the token that completed it
    kept = generate(engine, SamplingParams(max_tokens=12, ignore_eos=True, stop=stop, include_stop_str_in_output=True))
    assert kept.text == text[: first + len(stop)]
    # min_tokens: a stop string completed before it is not looked at again
    late_params = SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop], min_tokens=first + len(stop) + 1)
    late = generate(engine, late_params)
    assert late.text.find(stop) in (first, -1) and len(late.token_ids) > first + len(stop)
    engine.close()


def test_stop_strings_need_a_tokenizer(model):
    engine = make_engine(model)
    with pytest.raises(ValueError, match="stop=\\['x'\\] needs a tokenizer"):
        engine.add_request(PROMPT, SamplingParams(stop="x"))
    engine.close()


def test_n_samples_share_one_prefill(model):
    engine = make_engine(model)
    params = SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=11, ignore_eos=True, logprobs=1)
    output = generate(engine, params)
    assert engine.num_prompt_tokens == len(PROMPT)  # prefilled once
    samples = output.samples
    assert [s.index for s in samples] == [0, 1, 2] and [s.request_id for s in samples] == ["0", "0:1", "0:2"]
    assert all(s.finish_reason == "length" and len(s.token_ids) == 8 and len(s.logprobs) == 8 for s in samples)
    assert len({tuple(s.token_ids) for s in samples}) == 3
    again = generate(make_engine(model), params).samples
    assert [s.token_ids for s in again] == [s.token_ids for s in samples]  # seeds seed, seed + 1, seed + 2
    # sample 1 is what a lone request seeded seed + 1 draws: the fork copies the prompt's KV faithfully
    lone = generate(make_engine(model), SamplingParams(max_tokens=8, temperature=1.0, seed=12, ignore_eos=True))
    assert lone.token_ids == samples[1].token_ids
    assert engine.swap_manager.num_free_device_blocks == engine.swap_manager.num_device_blocks
    engine.close()


@pytest.mark.parametrize("preset, scheduler_mode", [("fastswitch", "chunked"), ("vllm", "vllm-0.3.3")])
@pytest.mark.parametrize("num_gpu_blocks", [64, 6, 4])
def test_greedy_n_gives_identical_answers_under_memory_pressure(model, num_gpu_blocks, preset, scheduler_mode):
    # 6 blocks: the samples are preempted (swapped) while they decode; 4: no room to copy the
    # prompt's KV at the fork, so the samples are prefilled again later.
    reference = generate(make_engine(model), SamplingParams(max_tokens=10, ignore_eos=True)).token_ids
    config = EngineConfig.from_preset(preset, block_size=8, attention_backend="torch", scheduler_mode=scheduler_mode,
                                      num_gpu_blocks=num_gpu_blocks, max_model_len=256)  # fmt: skip
    engine = build_engine(model, config, eos_token_ids=[EOS])
    output = generate(engine, SamplingParams(n=3, max_tokens=10, ignore_eos=True))
    assert [s.token_ids for s in output.samples] == [reference] * 3
    stats = engine.stats()
    if num_gpu_blocks == 6:
        assert stats["swap_out_count"] > 0 and stats["num_prompt_tokens"] == len(PROMPT)
    if num_gpu_blocks == 4:
        assert stats["num_prompt_tokens"] > len(PROMPT)
    assert engine.swap_manager.num_free_device_blocks == num_gpu_blocks
    engine.close()


def test_abort_of_the_first_sample_aborts_the_others(model):
    engine = make_engine(model)
    output = engine.add_request(PROMPT, SamplingParams(n=3, max_tokens=50, ignore_eos=True))
    while not output.forked:
        engine.step()
    engine.abort(output.request_id)
    assert [s.finish_reason for s in output.samples] == ["abort"] * 3 and not engine.has_unfinished()
    assert engine.swap_manager.num_free_device_blocks == engine.swap_manager.num_device_blocks
    engine.close()


def test_what_a_conversation_cannot_take_is_refused(model):
    engine = make_engine(model)
    with pytest.raises(ValueError, match="n=2 is for a lone request"):
        engine.add_request(PROMPT, SamplingParams(n=2), seq_id="chat", keep_kv=True)
    with pytest.raises(ValueError, match="prompt_logprobs=1 is for a lone request"):
        engine.add_request(PROMPT, SamplingParams(prompt_logprobs=1), seq_id="chat", keep_kv=True)
    engine.close()


def test_max_tokens_none_runs_to_the_end_of_the_context(model):
    config = EngineConfig.from_preset("fastswitch", block_size=8, attention_backend="torch", num_gpu_blocks=8,
                                      max_model_len=24)  # fmt: skip
    engine = build_engine(model, config, eos_token_ids=[EOS])
    output = generate(engine, SamplingParams(max_tokens=None, ignore_eos=True))
    assert output.finish_reason == "length" and len(PROMPT) + len(output.token_ids) == 24
    engine.close()


def test_llm_generate_with_stop_strings_and_n(tmp_path):
    from fastswitch.llm import LLM
    from fastswitch.model_sources import tiny_random_llama

    llm = LLM(tiny_random_llama(seed=0, root=tmp_path / "model"), block_size=8, attention_backend="torch")
    free = llm.generate("Hello there", SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    outputs = llm.generate("Hello there", SamplingParams(max_tokens=12, ignore_eos=True, stop=stop, n=2))
    assert len(outputs) == 1 and len(outputs[0].samples) == 2
    for sample in outputs[0].samples:
        assert sample.text == free.text[: free.text.find(stop)] and sample.stop_reason == stop
    llm.close()


def test_a_conversation_continues_after_a_turn_ended_by_a_stop_string(tmp_path):
    from fastswitch.chat_template import chat_turn_tokens
    from fastswitch.llm import LLM
    from fastswitch.model_sources import tiny_random_llama

    llm = LLM(tiny_random_llama(seed=0, root=tmp_path / "model"), block_size=8, attention_backend="torch")
    chat = llm.conversation(system="Be brief.")
    probe = chat.send("Hi", SamplingParams(max_tokens=10, ignore_eos=True))
    chat.close()
    stop = probe.text[3:5]
    chat = llm.conversation(system="Be brief.")
    first = chat.send("Hi", SamplingParams(max_tokens=10, ignore_eos=True, stop=stop))
    assert first.stop_reason == stop and first.text == probe.text[: probe.text.find(stop)]
    history = chat.messages + [{"role": "assistant", "content": first.text}]
    second = chat.send("And then?", SamplingParams(max_tokens=4, ignore_eos=True))
    context = first.prompt_token_ids + first.token_ids  # the KV holds every generated token
    # the answer ended on an ordinary token: the template's closing marker is appended in full
    assert second.prompt_token_ids == context + chat_turn_tokens(llm.tokenizer, history, "And then?", None)
    llm.close()
