"""Model shapes: the sizes of a Llama-family decoder that its FLOPs and bytes follow from.

Built-in shapes come from the models' published config.json files on the Hugging Face hub
(meta-llama/Meta-Llama-3-8B, meta-llama/Meta-Llama-3-70B, Qwen/Qwen2.5-32B-Instruct,
HuggingFaceTB/SmolLM2-135M-Instruct); any Hugging Face config (LlamaConfig, Qwen2Config, any
PretrainedConfig with the usual field names) converts with `ModelShape.from_hf_config`.

Tensor parallelism: `shape.shard(n)` (or a name with a ":tpN" suffix, "llama-3-70b:tp8") is what one
of n GPUs holds, as fastswitch/parallel splits it: its heads, its KV heads (one, replicated, when n
exceeds them), its MLP rows, and the whole embeddings and LM head. Every per-GPU quantity (weights,
KV bytes per token and block, FLOPs) then follows from the same formulas; `tensor_parallel_size`
tells the cost model how many ranks share each all-reduce of hidden_size activations.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 adds biases to q/k/v
    dtype_bytes: int = 2  # bf16/fp16 weights and KV cache
    tensor_parallel_size: int = 1  # > 1: a shard, whose heads and intermediate_size are one rank's

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "dtype_bytes", "tensor_parallel_size"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer (model {self.name!r})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (model {self.name!r})"
            )

    def shard(self, tensor_parallel_size: int) -> ModelShape:
        """What one of tensor_parallel_size GPUs holds (ValueError when the model does not split so)."""
        n = tensor_parallel_size
        if self.tensor_parallel_size != 1:
            raise ValueError(f"model {self.name!r} is already a shard of {self.tensor_parallel_size} GPUs")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"tensor_parallel_size={n!r} must be a positive integer")
        if self.num_heads % n or self.intermediate_size % n or (self.num_kv_heads % n and n % self.num_kv_heads):
            raise ValueError(
                f"tensor_parallel_size={n} does not split model {self.name!r} (num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, intermediate_size={self.intermediate_size})"
            )
        if n == 1:
            return self
        return dataclasses.replace(
            self, name=f"{self.name}:tp{n}", num_heads=self.num_heads // n,
            num_kv_heads=max(1, self.num_kv_heads // n), intermediate_size=self.intermediate_size // n,
            tensor_parallel_size=n,
        )  # fmt: skip

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_matmul_params(self) -> int:
        """Weights one token multiplies through in one decoder layer (q, k, v, o and the SwiGLU MLP)."""
        attention = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attention + mlp

    @property
    def layer_params(self) -> int:
        bias = (self.q_size + 2 * self.kv_size) if self.attention_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden_size  # two RMSNorm weights

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.num_layers * self.layer_params + embeddings + head + self.hidden_size  # + final norm

    @property
    def weight_bytes_per_step(self) -> int:
        """Weight bytes a forward step streams from memory: every layer and the LM head. The embedding
        table is gathered a few rows at a time, so it is counted with the activations, not here."""
        return (self.num_layers * self.layer_params + self.lm_head_params + self.hidden_size) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.kv_size * self.dtype_bytes

    @property
    def activation_bytes_per_token(self) -> int:
        """Activation bytes one token moves in one forward: per layer, each matmul reads its input and
        writes its output (q/k/v, o, gate/up, down), plus the embedding row it is gathered from."""
        h, i = self.hidden_size, self.intermediate_size
        per_layer = (h + self.q_size + 2 * self.kv_size) + (self.q_size + h) + (h + 2 * i) + (i + h)
        return (self.num_layers * per_layer + h) * self.dtype_bytes

    def profile_activation_bytes(self, num_tokens: int, num_seqs: int) -> int:
        """Peak activation memory of a profiling forward over num_tokens tokens in num_seqs sequences,
        as vLLM 0.3.3 runs one before sizing its KV pool: the MLP's gate/up output and their product
        (3 x intermediate per token), four hidden-size buffers per token (residual, normed input,
        attention output, MLP output), and float32 logits of each sequence's last token."""
        per_token = (3 * self.intermediate_size + 4 * self.hidden_size) * self.dtype_bytes
        return num_tokens * per_token + num_seqs * self.vocab_size * 4

    def kv_block_bytes(self, block_size: int) -> int:
        return self.kv_bytes_per_token * block_size

    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None, dtype_bytes: int | None = None) -> ModelShape:
        """Shape of any Hugging Face decoder config with Llama's field names (LlamaConfig, Qwen2Config...)."""
        missing = [f for f in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                               "vocab_size") if getattr(config, f, None) is None]  # fmt: skip
        if missing:
            raise ValueError(f"config {type(config).__name__} lacks {missing}: not a Llama-family decoder config")
        heads = int(config.num_attention_heads)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if dtype_bytes is None:
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            dtype_bytes = _DTYPE_BYTES.get(str(dtype).replace("torch.", ""), 2)
        model_type = getattr(config, "model_type", "")
        return cls(
            name=name or getattr(config, "name_or_path", "") or model_type or type(config).__name__,
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            intermediate_size=int(config.intermediate_size),
            vocab_size=int(config.vocab_size),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", model_type == "qwen2")),
            dtype_bytes=int(dtype_bytes),
        )


# Published config.json values (the hub repositories named in the module docstring).
MODEL_SHAPES: dict[str, ModelShape] = {
    "llama-3-8b": ModelShape("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
    "qwen2.5-32b": ModelShape("qwen2.5-32b", 64, 5120, 40, 8, 128, 27648, 152064, attention_bias=True),
    "llama-3-70b": ModelShape("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256),
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, tie_word_embeddings=True),
}
# The paper says "Qwen-32B"; Qwen2.5-32B is the shape we use for it.
MODEL_ALIASES = {"llama3-8b": "llama-3-8b", "llama-8b": "llama-3-8b", "llama3-70b": "llama-3-70b",
                 "qwen-32b": "qwen2.5-32b",
                 "qwen2.5-32b-instruct": "qwen2.5-32b", "smollm2": "smollm2-135m"}  # fmt: skip


def get_model_shape(name_or_config: str | object) -> ModelShape:
    """A built-in shape by name (case-insensitive, aliases allowed; ":tpN" for one of N tensor-parallel
    GPUs) or the shape of a Hugging Face config."""
    if not isinstance(name_or_config, str):
        return ModelShape.from_hf_config(name_or_config)
    split = re.fullmatch(r"(.+):tp(\d+)", name_or_config)
    if split:
        return get_model_shape(split.group(1)).shard(int(split.group(2)))
    key = MODEL_ALIASES.get(name_or_config.lower(), name_or_config.lower())
    if key not in MODEL_SHAPES:
        raise ValueError(f"model={name_or_config!r} is not one of {sorted(MODEL_SHAPES) + sorted(MODEL_ALIASES)}")
    return MODEL_SHAPES[key]
