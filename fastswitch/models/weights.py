"""Copy checkpoint tensors (Hugging Face names) into LlamaForServing's fused layout, checking every shape.

A checkpoint names q/k/v and gate/up projections apart; the serving model holds each group in one
fused matrix, so each checkpoint tensor lands in a row slice of its fused destination. The table of
destinations is built from the model's own config, so a tensor whose shape the config does not imply,
a tensor the architecture does not have, or a missing tensor is reported by name before the model is
used.

Under tensor parallelism a rank takes only its slice of each sharded tensor: the rows of its heads
(q/k/v, their biases) and of its intermediate units (gate/up) -- column-parallel -- and the matching
input columns of o and down -- row-parallel. Everything else is copied whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from fastswitch.models.llama import LlamaForServing, num_kv_heads_of

# Buffers some checkpoints carry that the serving model recomputes from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Destination:
    param: torch.Tensor
    row_start: int
    row_stop: int
    shape: tuple[int, ...]  # the whole checkpoint tensor's shape, as the config implies it
    shard_dim: int = 0
    shard: tuple[int, int] | None = None  # [start, stop) of shard_dim this rank takes; None: all

    def piece(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.shard is None:
            return tensor
        start, stop = self.shard
        return tensor.narrow(self.shard_dim, start, stop - start)


def _whole(param: torch.Tensor) -> Destination:
    return Destination(param, 0, param.shape[0], tuple(param.shape))


def _columns(param: torch.Tensor, full: int, shard: tuple[int, int]) -> Destination:
    """A row-parallel weight: this rank holds the input columns shard of a [out, full] tensor."""
    return Destination(param, 0, param.shape[0], (param.shape[0], full), shard_dim=1, shard=shard)


def weight_destinations(model: LlamaForServing) -> dict[str, Destination]:
    """Every tensor name a Hugging Face checkpoint of this config holds, mapped to where it goes."""
    config, partition = model.config, model.partition
    hidden, dim = config.hidden_size, model.head_dim
    q_heads = partition.even_slice(config.num_attention_heads)
    kv_heads = partition.kv_head_slice(num_kv_heads_of(config))
    units = partition.even_slice(config.intermediate_size)
    q_shard, kv_shard = (q_heads[0] * dim, q_heads[1] * dim), (kv_heads[0] * dim, kv_heads[1] * dim)
    full_q, full_kv = config.num_attention_heads * dim, num_kv_heads_of(config) * dim
    table = {
        "model.embed_tokens.weight": _whole(model.embed_tokens.weight),
        "model.norm.weight": _whole(model.norm.weight),
    }
    if model.lm_head is not None:
        table["lm_head.weight"] = _whole(model.lm_head.weight)
    for index, layer in enumerate(model.decoder_layers):
        prefix = f"model.layers.{index}."
        attn, mlp = layer.self_attn, layer.mlp
        q_rows, kv_rows = attn.num_heads * dim, attn.num_kv_heads * dim
        inter = mlp.intermediate_size
        # name -> (fused linear, first row, checkpoint rows, this rank's rows of the checkpoint tensor)
        fused_rows = {
            "self_attn.q_proj": (attn.qkv_proj, 0, full_q, q_shard),
            "self_attn.k_proj": (attn.qkv_proj, q_rows, full_kv, kv_shard),
            "self_attn.v_proj": (attn.qkv_proj, q_rows + kv_rows, full_kv, kv_shard),
            "mlp.gate_proj": (mlp.gate_up_proj, 0, config.intermediate_size, units),
            "mlp.up_proj": (mlp.gate_up_proj, inter, config.intermediate_size, units),
        }
        for name, (linear, start, full, shard) in fused_rows.items():
            stop = start + shard[1] - shard[0]
            sliced = shard if partition.size > 1 else None
            table[f"{prefix}{name}.weight"] = Destination(linear.weight, start, stop, (full, hidden), 0, sliced)
            if linear.bias is not None:
                table[f"{prefix}{name}.bias"] = Destination(linear.bias, start, stop, (full,), 0, sliced)
        for name, linear, full, shard in (
            ("self_attn.o_proj", attn.o_proj, full_q, q_shard),
            ("mlp.down_proj", mlp.down_proj, config.intermediate_size, units),
        ):
            weight = _columns(linear.weight, full, shard) if partition.size > 1 else _whole(linear.weight)
            table[f"{prefix}{name}.weight"] = weight
            if linear.bias is not None:
                table[f"{prefix}{name}.bias"] = _whole(linear.bias)  # added once, after the all-reduce
        table[f"{prefix}input_layernorm.weight"] = _whole(layer.input_layernorm.weight)
        table[f"{prefix}post_attention_layernorm.weight"] = _whole(layer.post_attention_layernorm.weight)
        if attn.q_norm is not None and attn.k_norm is not None:
            table[f"{prefix}self_attn.q_norm.weight"] = _whole(attn.q_norm.weight)
            table[f"{prefix}self_attn.k_norm.weight"] = _whole(attn.k_norm.weight)
    return table


def _is_ignored(model: LlamaForServing, name: str) -> bool:
    # A tied checkpoint may still store lm_head.weight; transformers then uses the embedding, as we do.
    return name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.lm_head is None)


def _describe_config(model: LlamaForServing) -> str:
    c = model.config
    return (
        f"vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size={c.intermediate_size}, "
        f"num_attention_heads={c.num_attention_heads}, num_key_value_heads={num_kv_heads_of(c)}, "
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
            dest.param[dest.row_start : dest.row_stop].copy_(dest.piece(tensor))
            seen.add(name)
    missing = sorted(set(table) - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the config needs: {shown}")
