"""load_model from checkpoint folders (single and sharded safetensors) and the errors a bad checkpoint gives."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from fastswitch.models import load_model
from fastswitch.models.gguf_cache import cache_entry, converted_gguf_folder
from fastswitch.models.loader import resolve_dtype
from tiny_llamas import tiny_llama


def params_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("shard_size", [None, "20KB"], ids=["single", "sharded"])
def test_folder_load_equals_in_memory_load(tmp_path, shard_size):
    hf = tiny_llama(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, **({"max_shard_size": shard_size} if shard_size else {}))
    if shard_size:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    from_folder = load_model(tmp_path, progress=False)
    from_memory = load_model(hf, progress=False)
    assert params_equal(from_folder.model, from_memory.model)
    assert from_folder.tokenizer is None  # the folder holds no tokenizer files
    assert from_folder.eos_token_ids == [hf.config.eos_token_id]


def test_tied_checkpoint_has_no_separate_lm_head(tmp_path):
    hf = tiny_llama(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, progress=False).model
    assert loaded.lm_head is None
    torch.testing.assert_close(loaded.embed_tokens.weight, hf.lm_head.weight)


def _edit_weights(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_shape_mismatch_names_the_tensor_and_the_config(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 96  # the weights were made with 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    implied = r"mlp\.\w+_proj\.weight' has shape .*but the config implies.*intermediate_size=96"
    with pytest.raises(ValueError, match=implied):
        load_model(tmp_path, progress=False)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(tmp_path, progress=False)
    _edit_weights(tmp_path, lambda t: t.update({"model.layers.2.mlp.down_proj.weight": torch.zeros(64, 128)}))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.down_proj\.weight.*2 layers"):
        load_model(tmp_path, progress=False)


def test_non_llama_checkpoints_and_bad_sources_are_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported"):
        load_model(tmp_path / "gpt2", progress=False)
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        load_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)), progress=False)
    with pytest.raises(ValueError, match="neither a checkpoint folder nor a .gguf file"):
        load_model(tmp_path / "nothing-here", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.gguf", progress=False)
    (tmp_path / "empty").mkdir()
    tiny_llama().config.save_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        load_model(tmp_path / "empty", progress=False)


def test_dtype_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", torch.bfloat16, cpu) == torch.float32
    assert resolve_dtype("auto", "bfloat16", cuda) == torch.bfloat16
    assert resolve_dtype("float16", None, cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, None, cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='int8'"):
        resolve_dtype("int8", None, cpu)


def test_gguf_cache_key_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSWITCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"x" * 10)
    first = cache_entry(gguf)
    assert first.parent == tmp_path / "cache" / "gguf"
    assert cache_entry(gguf) == first
    os.utime(gguf, ns=(1, 1))  # same path and size, other modification time: a new entry
    assert cache_entry(gguf) != first


def test_complete_gguf_cache_entry_is_loaded_without_conversion(tmp_path, monkeypatch):
    # A complete entry is trusted as is: the (fake) .gguf file is never parsed.
    monkeypatch.setenv("FASTSWITCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not really gguf")
    hf = tiny_llama()
    hf.save_pretrained(cache_entry(gguf))
    assert converted_gguf_folder(gguf) == cache_entry(gguf)
    assert params_equal(load_model(gguf, progress=False).model, load_model(hf, progress=False).model)
