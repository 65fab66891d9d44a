"""Tiny random Llamas (and Qwen2/Qwen3 models) for the model tests.

initializer_range 0.1 (not the default 0.02, from TINY_CONFIG) keeps the logits spread out, so greedy
decoding does not collapse into one repeated token and a token-for-token comparison with transformers
means something.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastswitch.model_sources import TINY_CONFIG

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
    """The library's tiny-random shape (fastswitch.model_sources.TINY_CONFIG) over a small vocabulary
    and position limit of the tests' own."""
    base = {**TINY_CONFIG, "vocab_size": 384, "max_position_embeddings": 256, "rms_norm_eps": 1e-5}
    return LlamaConfig(**{**base, **overrides})


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**overrides)).eval()


# name -> (family, config overrides): the Qwen families in the shapes their checkpoints come in.
TINY_QWEN_VARIANTS = {
    "qwen2_gqa": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen2_mqa_tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    # Qwen3's head_dim is its own field: 24 and 40 are neither hidden/heads nor a power of two.
    "qwen3_gqa_head_dim_24": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24)),
    "qwen3_tied_head_dim_40": (
        "qwen3", dict(num_attention_heads=2, num_key_value_heads=1, head_dim=40, tie_word_embeddings=True),
    ),
    "qwen3_attention_bias": (
        "qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True),
    ),
}


def tiny_qwen_config(family: str, **overrides):
    from transformers import Qwen2Config, Qwen3Config

    base = {**TINY_CONFIG, "vocab_size": 384, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
    config_class = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    return config_class(**{**base, **overrides})


def tiny_qwen(family: str, seed: int = 0, **overrides):
    """A tiny random Qwen2/Qwen3. Biases and norm weights are random too (transformers starts them at
    0 and 1), so a bias or a q/k norm that is dropped or misplaced changes the outputs."""
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

    torch.manual_seed(seed)
    model_class = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}[family]
    model = model_class(tiny_qwen_config(family, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.normal_(1.0, 0.2)
    return model


def tiny_variant(name: str):
    """Any variant of either table by name."""
    if name in TINY_QWEN_VARIANTS:
        family, overrides = TINY_QWEN_VARIANTS[name]
        return tiny_qwen(family, **overrides)
    return tiny_llama(**TINY_VARIANTS[name])
