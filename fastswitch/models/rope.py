"""Rotary position embeddings for packed batches, for every rope type a `transformers` config can name.

The inverse frequencies and the attention scaling come from `transformers`' own ROPE_INIT_FUNCTIONS
(default, linear, dynamic, yarn, longrope, llama3, ...), so a checkpoint's `rope_parameters` mean
here exactly what they mean there. cos/sin are computed per token from its position (one outer
product, cheaper than the matmuls around it), in fp32 like `transformers`, then cast to the
activations' dtype.

Two types depend on the sequence length: "dynamic" (NTK) grows its base once a sequence passes
`max_position_embeddings`, and "longrope" switches to its long factors once a sequence passes
`original_max_position_embeddings`. `transformers` decides from the longest sequence of its batch;
here each sequence decides from its own length, so a request's result does not depend on its batch
neighbours (for one sequence the two agree).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

LENGTH_DEPENDENT_TYPES = ("dynamic", "longrope")


def rope_parameters(config: PretrainedConfig) -> dict:
    """The config's rope parameters, in the `transformers` 5 form (old `rope_scaling` is folded in)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        # Older configs kept theta and scaling apart.
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def default_inv_freq(config: PretrainedConfig, device: torch.device | None = None, **_) -> tuple[torch.Tensor, float]:
    """The original RoPE frequencies, theta ** (-2i / head_dim); attention scaling 1."""
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = rope_parameters(config)["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)), 1.0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, D] -> x rotated by each token's angle."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class RotaryEmbedding:
    def __init__(self, config: PretrainedConfig, device: torch.device) -> None:
        params = rope_parameters(config)
        self.config = config
        self.rope_type = params["rope_type"]
        if self.rope_type != "default" and self.rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"rope_type={self.rope_type!r} is not known; known types: default, {', '.join(ROPE_INIT_FUNCTIONS)}"
            )
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(
                f"partial_rotary_factor={params['partial_rotary_factor']} is not supported by the Llama "
                "forward (it rotates the whole head dimension)"
            )
        self.init_fn = default_inv_freq if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        self.inv_freq, self.attention_scaling = self.init_fn(config, device)
        self.inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        if self.rope_type == "dynamic":
            self.length_threshold = config.max_position_embeddings
        elif self.rope_type == "longrope":
            self.length_threshold = params.get("original_max_position_embeddings", config.max_position_embeddings)
        self.device = device
        self._longrope_long_inv_freq: torch.Tensor | None = None

    def cos_sin(
        self, positions: torch.Tensor, seq_ends: list[int], query_lens: list[int], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] of the packed tokens; seq_ends/query_lens per sequence -> cos, sin [T, D]."""
        if self.rope_type in LENGTH_DEPENDENT_TYPES:
            per_seq = torch.stack([self._inv_freq_for_length(end) for end in seq_ends])
            inv_freq = torch.repeat_interleave(
                per_seq, torch.tensor(query_lens, device=per_seq.device), dim=0
            )  # [T, D/2]
            freqs = positions[:, None].float() * inv_freq
        else:
            freqs = positions[:, None].float() * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos() * self.attention_scaling
        sin = angles.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)

    def _inv_freq_for_length(self, seq_len: int) -> torch.Tensor:
        if seq_len <= self.length_threshold:
            return self.inv_freq
        if self.rope_type == "dynamic":
            # The NTK base grows with the length itself: recompute (D/2 values, negligible).
            inv_freq, _ = self.init_fn(self.config, self.device, seq_len=seq_len)
            return inv_freq.to(device=self.device, dtype=torch.float32)
        if self._longrope_long_inv_freq is None:
            # The long factors are the same for any length past the threshold: compute them once.
            inv_freq, _ = self.init_fn(self.config, self.device, seq_len=self.length_threshold + 1)
            self._longrope_long_inv_freq = inv_freq.to(device=self.device, dtype=torch.float32)
        return self._longrope_long_inv_freq
