"""Copy checkpoint tensors (Hugging Face names) into LlamaForServing's fused layout, checking every shape.

A checkpoint names q/k/v and gate/up projections apart; the serving model holds each group in one
fused matrix, so each checkpoint tensor lands in a row slice of its fused destination. The table of
destinations is built from the model's own config, so a tensor whose shape the config does not imply,
a tensor the architecture does not have, or a missing tensor is reported by name before the model is
used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from fastswitch.models.llama import LlamaForServing

# Buffers some checkpoints carry that the serving model recomputes from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Destination:
    param: torch.Tensor
    row_start: int
    row_stop: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.row_stop - self.row_start, *self.param.shape[1:])


def _whole(param: torch.Tensor) -> Destination:
    return Destination(param, 0, param.shape[0])


def weight_destinations(model: LlamaForServing) -> dict[str, Destination]:
    """Every tensor name a Hugging Face checkpoint of this config holds, mapped to where it goes."""
    table = {
        "model.embed_tokens.weight": _whole(model.embed_tokens.weight),
        "model.norm.weight": _whole(model.norm.weight),
    }
    if model.lm_head is not None:
        table["lm_head.weight"] = _whole(model.lm_head.weight)
    for index, layer in enumerate(model.layers):
        prefix = f"model.layers.{index}."
        attn, mlp = layer.self_attn, layer.mlp
        q_rows, kv_rows = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        fused_rows = {
            "self_attn.q_proj": (attn.qkv_proj, 0, q_rows),
            "self_attn.k_proj": (attn.qkv_proj, q_rows, q_rows + kv_rows),
            "self_attn.v_proj": (attn.qkv_proj, q_rows + kv_rows, q_rows + 2 * kv_rows),
            "mlp.gate_proj": (mlp.gate_up_proj, 0, mlp.intermediate_size),
            "mlp.up_proj": (mlp.gate_up_proj, mlp.intermediate_size, 2 * mlp.intermediate_size),
        }
        for name, (linear, start, stop) in fused_rows.items():
            table[f"{prefix}{name}.weight"] = Destination(linear.weight, start, stop)
            if linear.bias is not None:
                table[f"{prefix}{name}.bias"] = Destination(linear.bias, start, stop)
        for name, linear in (("self_attn.o_proj", attn.o_proj), ("mlp.down_proj", mlp.down_proj)):
            table[f"{prefix}{name}.weight"] = _whole(linear.weight)
            if linear.bias is not None:
                table[f"{prefix}{name}.bias"] = _whole(linear.bias)
        table[f"{prefix}input_layernorm.weight"] = _whole(layer.input_layernorm.weight)
        table[f"{prefix}post_attention_layernorm.weight"] = _whole(layer.post_attention_layernorm.weight)
    return table


def _is_ignored(model: LlamaForServing, name: str) -> bool:
    # A tied checkpoint may still store lm_head.weight; transformers then uses the embedding, as we do.
    return name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.lm_head is None)


def _describe_config(model: LlamaForServing) -> str:
    c = model.config
    return (
        f"vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size={c.intermediate_size}, "
        f"num_attention_heads={c.num_attention_heads}, num_key_value_heads={model.num_kv_heads}, "
        f"head_dim={model.head_dim}, num_hidden_layers={c.num_hidden_layers}"
    )


def load_weights(
    model: LlamaForServing,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    total: int | None = None,
    progress: bool = True,
) -> None:
    """Fill model's parameters from (Hugging Face name, tensor) pairs; ValueError on any mismatch."""
    table = weight_destinations(model)
    seen: set[str] = set()
    bar = tqdm(total=total, desc="Loading weights", unit="tensor", disable=not progress)
    with torch.no_grad(), bar:
        for name, tensor in named_tensors:
            bar.update(1)
            if _is_ignored(model, name):
                continue
            if name not in table:
                raise ValueError(
                    f"checkpoint tensor {name!r} does not belong to a {model.config.model_type} model with "
                    f"{model.num_layers} layers ({_describe_config(model)})"
                )
            dest = table[name]
            if tuple(tensor.shape) != dest.shape:
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)} but the config implies "
                    f"{dest.shape} ({_describe_config(model)})"
                )
            dest.param[dest.row_start : dest.row_stop].copy_(tensor)
            seen.add(name)
    missing = sorted(set(table) - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the config needs: {shown}")
