"""The serving forward against transformers' own forward: logits of a prefill and of decode steps."""

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from fastswitch.cache import KVCache
from fastswitch.models import LlamaForServing, ModelRunner, load_model
from fastswitch.models.llama import check_supported_config, max_supported_len
from fastswitch.parallel.messages import StepChunk
from tiny_llamas import TINY_QWEN_VARIANTS, TINY_VARIANTS, tiny_config, tiny_llama, tiny_variant

BLOCK_SIZE = 8


def make_runner(hf_model, num_blocks: int = 32, dtype="auto", backend: str = "torch") -> ModelRunner:
    model = load_model(hf_model, dtype=dtype, progress=False).model
    cache = KVCache(num_blocks, model.num_layers, BLOCK_SIZE, model.num_kv_heads, model.head_dim, model.dtype, "cpu")
    return ModelRunner(model, cache, backend=backend)


def reference_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0].float()  # [L, V]


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS) + sorted(TINY_QWEN_VARIANTS))
def test_prefill_then_decode_logits_match_transformers(variant):
    hf = tiny_variant(variant)
    runner = make_runner(hf)
    tokens = torch.randint(0, 384, (28,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = reference_logits(hf, tokens)
    table = [7, 3, 12, 0]  # deliberately out of order: the block table, not adjacency, defines the sequence
    prompt_len = 21
    logits = runner.forward([StepChunk(tokens[:prompt_len], 0, table)])
    torch.testing.assert_close(logits[0], expected[prompt_len - 1], atol=1e-4, rtol=1e-4)
    for pos in range(prompt_len, len(tokens)):
        logits = runner.forward([StepChunk([tokens[pos]], pos, table)])
        torch.testing.assert_close(logits[0], expected[pos], atol=1e-4, rtol=1e-4)


def test_mixed_batch_of_prefills_chunks_and_decodes_matches_each_alone():
    hf = tiny_llama(**TINY_VARIANTS["gqa"])
    runner = make_runner(hf)
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (13, 30, 6)]
    tables = [[0, 1], [5, 9, 2, 3], [11]]
    # Put a prefix of sequences 1 and 2 in the cache first, so the mixed step holds a decode (seq 0 is
    # cached up to its last token), a prefill chunk in the middle of a prompt (seq 1) and a full prefill.
    runner.forward([StepChunk(seqs[0][:12], 0, tables[0]), StepChunk(seqs[1][:10], 0, tables[1])])
    logits = runner.forward([
        StepChunk(seqs[0][12:], 12, tables[0]),
        StepChunk(seqs[1][10:], 10, tables[1]),
        StepChunk(seqs[2], 0, tables[2]),
    ])
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], reference_logits(hf, seq)[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stays_close_to_fp32(dtype):
    hf = tiny_llama(**TINY_VARIANTS["gqa"])
    tokens = list(range(5, 25))
    half = make_runner(hf, dtype=dtype)
    assert half.model.dtype == getattr(torch, dtype)
    logits = half.forward([StepChunk(tokens, 0, [0, 1, 2])])[0]
    expected = reference_logits(hf, tokens)[-1]
    # Same argmax region and a small error relative to the logits' spread.
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
        dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64),
        dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
    ],
    ids=lambda r: r["rope_type"],
)
def test_other_rope_types_match_transformers(rope):
    # max_position_embeddings 24 < 40 tokens: dynamic NTK really rescales past position 24.
    hf = tiny_llama(rope_parameters=rope, max_position_embeddings=24 if rope["rope_type"] == "dynamic" else 256)
    runner = make_runner(hf)
    tokens = list(range(3, 43))
    table = list(range(6))
    prefill = runner.forward([StepChunk(tokens[:-1], 0, table)])
    decode = runner.forward([StepChunk(tokens[-1:], len(tokens) - 1, table)])
    # Compare with transformers' own incremental decoding: for dynamic NTK the cached keys keep the
    # frequencies of the step that wrote them, so a full forward over all tokens is not the reference.
    with torch.no_grad():
        first = hf(torch.tensor([tokens[:-1]]), use_cache=True)
        second = hf(torch.tensor([tokens[-1:]]), cache=first.cache)
    torch.testing.assert_close(prefill[0], first.logits[0, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decode[0], second.logits[0, -1], atol=1e-4, rtol=1e-4)


def test_attention_bias_and_mlp_bias_are_loaded():
    hf = tiny_llama(attention_bias=True, mlp_bias=True)
    tokens = list(range(10, 30))
    logits = make_runner(hf).forward([StepChunk(tokens, 0, [0, 1, 2])])
    torch.testing.assert_close(logits[0], reference_logits(hf, tokens)[-1], atol=1e-4, rtol=1e-4)


def test_non_llama_configs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        check_supported_config(GPT2Config(n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        LlamaForServing(tiny_config(hidden_act="gelu"), torch.float32)
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        LlamaForServing(
            tiny_config(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
            torch.float32,
        )


def test_sliding_window_caps_the_supported_length():
    config = LlamaConfig(max_position_embeddings=4096)
    assert max_supported_len(config) == 4096
    config.sliding_window = 1024
    assert max_supported_len(config) == 1024


def test_mistral_checkpoint_runs_through_the_same_forward():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, sliding_window=None,
    )
    hf = MistralForCausalLM(config).eval()
    tokens = list(range(40, 63))
    logits = make_runner(hf).forward([StepChunk(tokens, 0, [4, 1, 0])])
    torch.testing.assert_close(logits[0], reference_logits(hf, tokens)[-1], atol=1e-4, rtol=1e-4)
