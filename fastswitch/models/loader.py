"""load_model: a Hugging Face folder, a .gguf file or an in-memory transformers model -> LlamaForServing.

Families: Llama, Mistral, Qwen2/Qwen2.5 and Qwen3 (fastswitch.models.llama.SUPPORTED_MODEL_TYPES).

- A folder is read straight from its safetensors (one file or sharded with an index), so loading
  costs one pass over the weights and no transformers model is built.
- A .gguf file is converted once by transformers' GGUF support and cached as such a folder
  (`fastswitch.models.gguf_cache`); later loads read the cache.
- A transformers `PreTrainedModel` (LlamaForCausalLM or a same-architecture one) is copied from its
  state dict; it has no tokenizer unless one is passed.

dtype "auto" means float32 on CPU (half-precision matmuls are slow there and lose accuracy) and the
checkpoint's own dtype elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PretrainedConfig, PreTrainedModel

from fastswitch.models.gguf_cache import converted_gguf_folder
from fastswitch.models.llama import LlamaForServing, check_supported_config
from fastswitch.models.weights import load_weights
from fastswitch.parallel.partition import WHOLE_MODEL, Partition

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: LlamaForServing
    tokenizer: object | None  # a transformers tokenizer, or None for an in-memory model without one
    hf_config: PretrainedConfig
    eos_token_ids: list[int]


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto": cuda when there is one, else cpu. ValueError for a device this machine lacks."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but this machine has no CUDA device (torch sees none); use 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, checkpoint_dtype: object, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use one of {tuple(DTYPES)}")
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {('auto', *DTYPES)}")
        return DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = DTYPES.get(checkpoint_dtype)
    if isinstance(checkpoint_dtype, torch.dtype) and checkpoint_dtype in DTYPES.values():
        return checkpoint_dtype
    return torch.float32


def _as_id_list(ids: int | list[int] | tuple[int, ...] | None) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def eos_token_ids(generation_config: GenerationConfig | None, config: PretrainedConfig, tokenizer) -> list[int]:
    """The ids that end generation, as transformers' generate sees them (generation config first)."""
    for ids in (getattr(generation_config, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if _as_id_list(ids):
            return _as_id_list(ids)
    return _as_id_list(getattr(tokenizer, "eos_token_id", None))


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {str(folder)!r} (other weight formats are not supported)")
    return files


def _iter_safetensors(files: list[Path]):
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _count_tensors(files: list[Path]) -> int:
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            total += len(list(f.keys()))
    return total


def _load_tokenizer(folder: Path, tokenizer):
    if tokenizer is not None:
        return AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder)
    return None


def _load_folder(
    folder: Path, dtype, device: torch.device, tokenizer, progress: bool, partition: Partition
) -> LoadedModel:
    config = AutoConfig.from_pretrained(folder)
    check_supported_config(config)  # before reading any weights
    files = safetensors_files(folder)
    model = LlamaForServing(config, resolve_dtype(dtype, getattr(config, "dtype", None), device), device, partition)
    load_weights(model, _iter_safetensors(files), total=_count_tensors(files), progress=progress)
    generation_config = (
        GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").is_file() else None
    )
    tokenizer = _load_tokenizer(folder, tokenizer)
    return LoadedModel(model, tokenizer, config, eos_token_ids(generation_config, config, tokenizer))


def _load_in_memory(
    source: PreTrainedModel, dtype, device: torch.device, tokenizer, progress: bool, partition: Partition
) -> LoadedModel:
    config = source.config
    model = LlamaForServing(config, resolve_dtype(dtype, source.dtype, device), device, partition)
    state = source.state_dict()
    load_weights(model, state.items(), total=len(state), progress=progress)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    generation_config = getattr(source, "generation_config", None)
    return LoadedModel(model, tokenizer, config, eos_token_ids(generation_config, config, tokenizer))


def load_model(
    source: str | Path | PreTrainedModel,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    tokenizer=None,
    progress: bool = True,
    partition: Partition = WHOLE_MODEL,
) -> LoadedModel:
    """Load a Llama-family model (Llama, Mistral, Qwen2/Qwen2.5, Qwen3) for serving.

    source: a Hugging Face checkpoint folder (safetensors), a .gguf file, or a transformers model.
    tokenizer: overrides the checkpoint's tokenizer (a tokenizer object or a folder).
    partition: the tensor-parallel slice to load (default: the whole model).
    Raises ValueError for a missing path, an unsupported model, or weights that do not match the config.
    """
    device = resolve_device(device)
    if isinstance(source, PreTrainedModel):
        return _load_in_memory(source, dtype, device, tokenizer, progress, partition)
    if not isinstance(source, (str, Path)):
        raise ValueError(f"model source {source!r} is neither a path nor a transformers PreTrainedModel")
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        path = converted_gguf_folder(path, progress=progress)
    elif not path.is_dir():
        raise ValueError(f"model source {str(source)!r} is neither a checkpoint folder nor a .gguf file")
    return _load_folder(path, dtype, device, tokenizer, progress, partition)
