"""Tiny random Llamas for the model tests.

initializer_range 0.1 (not the default 0.02) keeps the logits spread out, so greedy decoding does
not collapse into one repeated token and a token-for-token comparison with transformers means
something.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# name -> LlamaConfig overrides; every variant the forward must get right.
TINY_VARIANTS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "head_dim_80": dict(hidden_size=160, num_attention_heads=2, num_key_value_heads=1),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama3_rope": dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64,
        ),
    ),
}


def tiny_config(**overrides) -> LlamaConfig:
    base = dict(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, rms_norm_eps=1e-5,
    )
    return LlamaConfig(**{**base, **overrides})


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**overrides)).eval()
