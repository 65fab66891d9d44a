"""The Llama-family forward written for serving: packed tokens, paged KV cache, no padding.

All new tokens of a step (prefills, prefill chunks and decodes of many sequences) run as one packed
[T, hidden] batch. Each layer writes its new K/V into the block-major cache through `store_kv` (at
the step's slot mapping) and attends over each sequence's cached blocks with `paged_attention` (as
the step's `AttentionBatch` says; the ModelRunner builds both), so a prefill chunk and a decode
token take the same path. Q, K and V come from one fused matmul, gate and up from another: fewer,
larger matmuls are what a CPU (and a GPU) does best. Ops otherwise follow `transformers`' Llama in
the same order and precision (RMSNorm in fp32, rotary in fp32 then cast), so outputs match it.

The families differ only in small ways, all read from the config: Qwen2 has biases on q/k/v (not
on o); Qwen3 normalises each query and key head (RMSNorm over head_dim) before rope and may have a
head_dim other than hidden/heads; Mistral and Qwen may slide their attention window (see
`max_supported_len`).

Under tensor parallelism (`fastswitch.parallel.partition.Partition`) each rank builds only its heads
and MLP rows; o and down are row-parallel and sum their partial outputs with one all-reduce each.

The weights are created uninitialised (on the meta device first, so no random init is paid for);
`fastswitch.models.loader` fills them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from fastswitch.kernels import AttentionBatch, paged_attention, store_kv
from fastswitch.models.rope import RotaryEmbedding, apply_rotary
from fastswitch.parallel.partition import WHOLE_MODEL, Partition, check_tensor_parallel_size

if TYPE_CHECKING:
    from fastswitch.cache.kv_cache import KVCache

# Model types whose checkpoints use Llama's architecture and weight names (plus the extras below).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
QKV_BIAS_TYPES = ("qwen2",)  # q/k/v biases always, o without (Qwen2's attention_bias is not a field)
QK_NORM_TYPES = ("qwen3",)  # per-head RMSNorm on q and k before rope


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_kv_heads_of(config: PretrainedConfig) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def sliding_window_of(config: PretrainedConfig) -> int | None:
    """The attention window the config asks for, or None for full attention in every layer.

    Mistral slides when `sliding_window` is set; Qwen2/Qwen3 only in the layers their `layer_types`
    mark "sliding_attention" (use_sliding_window=True; Qwen2.5 and Qwen3 checkpoints set it false).
    """
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def check_supported_config(config: PretrainedConfig) -> None:
    """Raise ValueError naming what is wrong when config is not a Llama-family model this forward runs."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r} is not supported: the forward runs Llama-architecture models "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported; Llama's SwiGLU MLP uses 'silu'")
    heads, kv_heads = config.num_attention_heads, num_kv_heads_of(config)
    if heads % kv_heads != 0:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if head_dim_of(config) % 2 != 0:
        raise ValueError(f"head_dim={head_dim_of(config)} must be even for rotary embeddings")


def max_supported_len(config: PretrainedConfig) -> int:
    """Longest sequence the forward computes exactly: the position limit, and a sliding window if any.

    Attention here is full attention; with a sliding window (Mistral, or Qwen with
    use_sliding_window=True) it equals the model's own as long as sequences do not outgrow the
    window, so the window caps the length a request may reach.
    """
    window = sliding_window_of(config)
    limit = config.max_position_embeddings
    return min(limit, window) if window else limit


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, **factory) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, **factory))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, exactly as transformers does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def row_parallel(linear: nn.Linear, x: torch.Tensor, partition: Partition) -> torch.Tensor:
    """A row-parallel linear: this rank's input columns, summed over ranks, then the (whole) bias once."""
    if partition.size == 1:
        return linear(x)
    out = partition.all_reduce(F.linear(x, linear.weight))
    return out if linear.bias is None else out + linear.bias


class LlamaAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, partition: Partition = WHOLE_MODEL, **factory) -> None:
        super().__init__()
        self.partition = partition
        self.head_dim = head_dim_of(config)
        start, stop = partition.even_slice(config.num_attention_heads)
        self.num_heads = stop - start  # this rank's query heads
        start, stop = partition.kv_head_slice(num_kv_heads_of(config))
        self.num_kv_heads = stop - start
        self.scale = self.head_dim**-0.5
        bias = getattr(config, "attention_bias", False)
        qkv_bias = bias or config.model_type in QKV_BIAS_TYPES
        qkv_size = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_size, bias=qkv_bias, **factory)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias, **factory)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.model_type in QK_NORM_TYPES:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, **factory)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, **factory)

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]
        cos: torch.Tensor,  # [T, D]
        sin: torch.Tensor,
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], a view of the block-major cache
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [T] int64: the cache slot of each new token
        batch: AttentionBatch,
        backend: str,
    ) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))  # [T, Hq, D]
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))  # [T, Hkv, D]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim)).contiguous()
        store_kv(k, v, k_cache, v_cache, slot_mapping, backend=backend)
        out = paged_attention(
            q, k_cache, v_cache, batch.block_tables, batch.seq_lens_tensor, batch.query_start_loc_tensor,
            scale=self.scale, backend=backend, layout=batch,
        )  # [T, Hq, D]
        return row_parallel(self.o_proj, out.flatten(1), self.partition)


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig, partition: Partition = WHOLE_MODEL, **factory) -> None:
        super().__init__()
        self.partition = partition
        bias = getattr(config, "mlp_bias", False)
        self.intermediate_size = config.intermediate_size // partition.size  # this rank's rows
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=bias, **factory)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return row_parallel(self.down_proj, F.silu(gate) * up, self.partition)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, partition: Partition = WHOLE_MODEL, **factory) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.self_attn = LlamaAttention(config, partition, **factory)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.mlp = LlamaMLP(config, partition, **factory)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        batch: AttentionBatch,
        backend: str,
    ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, slot_mapping, batch, backend)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForServing(nn.Module):
    """A Llama-family causal LM over a paged KV cache. Weights start uninitialised: use the loader.

    partition: the slice a tensor-parallel rank holds (default: the whole model)."""

    def __init__(
        self,
        config: PretrainedConfig,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        partition: Partition = WHOLE_MODEL,
    ) -> None:
        check_supported_config(config)
        check_tensor_parallel_size(
            partition.size, config.num_attention_heads, num_kv_heads_of(config), config.intermediate_size
        )
        super().__init__()
        self.config = config
        self.partition = partition
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        factory: dict[str, Any] = {"dtype": dtype, "device": "meta"}
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, **factory)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, partition, **factory) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.lm_head = None if self.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False, **factory
        )
        self.to_empty(device=device)
        self.requires_grad_(False)
        self.rotary = RotaryEmbedding(config, torch.device(device))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def decoder_layers(self) -> list[LlamaDecoderLayer]:
        """The layers, typed (to a type checker an nn.ModuleList holds plain Modules)."""
        return cast(list[LlamaDecoderLayer], list(self.layers))

    @property
    def num_kv_heads(self) -> int:
        """KV heads this rank holds (all of them without tensor parallelism): its KV cache's width."""
        return self.decoder_layers[0].self_attn.num_kv_heads

    @property
    def head_dim(self) -> int:
        return head_dim_of(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        slot_mapping: torch.Tensor,  # [T] int64: block_id * block_size + offset of each new token
        batch: AttentionBatch,
        kv_cache: KVCache,
        backend: str,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm. The new tokens' K/V land in kv_cache at
        slot_mapping, and every layer attends over the cache as `batch` says; backend picks the
        kernels (see `fastswitch.kernels.dispatch`)."""
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, batch.seq_lens, batch.query_lens, hidden.dtype)
        for index, layer in enumerate(self.layers):
            key, value = kv_cache.key(index), kv_cache.value(index)
            hidden = layer(hidden, cos, sin, key, value, slot_mapping, batch, backend)
        return self.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> logits [B, vocab] in the model's dtype."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)
