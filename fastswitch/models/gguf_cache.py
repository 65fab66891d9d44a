"""Convert a .gguf file once into a plain Hugging Face folder, and reuse that folder afterwards.

`transformers` reads GGUF by de-quantising every tensor, which takes tens of seconds even for a
135M model. The converted weights (safetensors), config, generation config and tokenizer are saved
under `<cache root>/gguf/<file stem>-<key>/`, where the key hashes the file's absolute path, size and
modification time: editing or replacing the file makes a new entry. The cache root is
$FASTSWITCH_CACHE, else $XDG_CACHE_HOME/fastswitch, else ~/.cache/fastswitch. The folder is written
under a temporary name and renamed into place, so an interrupted conversion never leaves a half
entry that a later load would trust.

Llama, Mistral, Qwen2 and Qwen3 files convert (transformers maps their llama.cpp tensor names). One
gap is filled here: transformers reads no head dimension for Qwen2/Qwen3 files, so a Qwen3 whose
`attention.key_length` is not Qwen3Config's default of 128 would be built with the wrong shapes; the
key length the file declares is passed as head_dim.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from fastswitch.models.llama import check_supported_config

# Bump when the layout of a cache entry changes, so old entries are not misread.
CACHE_FORMAT_VERSION = 1
ENTRY_FILES = ("config.json", "model.safetensors")


def cache_root() -> Path:
    if "FASTSWITCH_CACHE" in os.environ:
        return Path(os.environ["FASTSWITCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "fastswitch"


def cache_entry(gguf_path: Path) -> Path:
    """The folder a converted gguf_path lives in (whether or not it exists yet)."""
    path = gguf_path.resolve()
    stat = path.stat()
    key_text = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|v{CACHE_FORMAT_VERSION}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def is_complete(entry: Path) -> bool:
    return all((entry / name).is_file() for name in ENTRY_FILES)


def declared_head_dim(gguf_path: Path) -> int | None:
    """The `<architecture>.attention.key_length` of a GGUF file (its head_dim), or None if absent."""
    import gguf  # the optional dependency transformers' GGUF support needs too (pip install fastswitch[gguf])

    fields = gguf.GGUFReader(str(gguf_path)).fields
    arch_field = fields.get("general.architecture")
    if arch_field is None:
        return None
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    field = fields.get(f"{arch}.attention.key_length")
    return None if field is None else int(field.parts[field.data[0]][0])


def converted_gguf_folder(gguf_path: str | Path, progress: bool = True) -> Path:
    """A Hugging Face folder holding gguf_path's de-quantised weights and tokenizer; converts on first use."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file {str(gguf_path)!r} does not exist")
    entry = cache_entry(gguf_path)
    if is_complete(entry):
        return entry
    folder, name = str(gguf_path.resolve().parent), gguf_path.name
    # The config comes from the file's metadata alone: refuse an unsupported file before de-quantising it.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    check_supported_config(config)
    head_dim = declared_head_dim(gguf_path)
    if head_dim is not None:
        config.head_dim = head_dim
    if progress:
        tqdm.write(f"Converting {gguf_path.name} once; the result is cached in {entry}", file=sys.stderr)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    staging = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tied = bool(getattr(hf_model.config, "tie_word_embeddings", False))
    state = {
        key: tensor.contiguous()
        for key, tensor in hf_model.state_dict().items()
        if not (tied and key == "lm_head.weight")  # safetensors refuses shared storage; the tie is in config
    }
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config = hf_model.config.to_dict()
    # The weights are de-quantised now: a GGUF quantization config would send transformers back to the file.
    config.pop("quantization_config", None)
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    hf_model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if entry.exists() and not is_complete(entry):
        shutil.rmtree(entry)  # a broken entry left by an older crash: replace it
    try:
        staging.rename(entry)
    except OSError:
        # Another process finished the same conversion first; its entry is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(entry):
            raise
    return entry
