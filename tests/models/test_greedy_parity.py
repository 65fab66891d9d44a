"""Greedy generation through LLM equals transformers' generate, token for token."""

import os

import pytest
import torch

from fastswitch.llm import LLM
from fastswitch.models import SamplingParams
from tiny_llamas import TINY_QWEN_VARIANTS, TINY_VARIANTS, tiny_variant

PROMPT_LENGTHS = (3, 11, 26, 7)
MAX_TOKENS = 10


def random_prompts(lengths, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    # Ids from 3 up: the tiny configs use 1 and 2 as BOS/EOS.
    return [torch.randint(3, 384, (n,), generator=gen).tolist() for n in lengths]


def transformers_greedy(hf, prompt: list[int], max_tokens: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS) + sorted(TINY_QWEN_VARIANTS))
def test_greedy_batch_matches_transformers(variant):
    hf = tiny_variant(variant)
    # max_num_seqs 3 < 4 prompts and a 16-token budget: requests join mid-run and prompts are chunked.
    llm = LLM(hf, block_size=8, max_num_seqs=3, max_num_batched_tokens=16, attention_backend="torch")
    prompts = random_prompts(PROMPT_LENGTHS)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    for prompt, output in zip(prompts, outputs):
        assert output.prompt_token_ids == prompt
        assert output.token_ids == transformers_greedy(hf, prompt, MAX_TOKENS)
    assert llm.stats()["num_free_gpu_blocks"] == llm.stats()["num_gpu_blocks"]  # every block came back


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU)")
@pytest.mark.parametrize("variant", ["gqa", "head_dim_80", "qwen3_gqa_head_dim_24"])
def test_greedy_with_triton_kernels_matches_transformers(variant):
    hf = tiny_variant(variant)
    llm = LLM(hf, block_size=8, max_num_seqs=4, attention_backend="triton")
    prompts = random_prompts((5, 12), seed=1)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=6))
    for prompt, output in zip(prompts, outputs):
        assert output.token_ids == transformers_greedy(hf, prompt, 6)
