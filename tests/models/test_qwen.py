"""Qwen2/Qwen2.5 and Qwen3 beside Llama: loading from folders and GGUF, their sliding-window setting,
and the families still refused. Tokens and logits against transformers are in test_greedy_parity.py
and test_llama_forward.py, over the same tiny variants."""

import pytest
import torch
from transformers import GemmaConfig

from fastswitch.cache import KVCache
from fastswitch.llm import LLM
from fastswitch.models import LlamaForServing, ModelRunner, SamplingParams, load_model
from fastswitch.models.llama import check_supported_config, max_supported_len
from fastswitch.parallel.messages import StepChunk
from tiny_llamas import TINY_QWEN_VARIANTS, tiny_qwen, tiny_qwen_config


def params_equal(a, b) -> bool:
    named_b = dict(b.named_parameters())
    return all(torch.equal(p, named_b[name]) for name, p in a.named_parameters())


@pytest.mark.parametrize("variant", ["qwen2_gqa", "qwen3_tied_head_dim_40"])
def test_folder_load_equals_in_memory_load(tmp_path, variant):
    family, overrides = TINY_QWEN_VARIANTS[variant]
    hf = tiny_qwen(family, **overrides)
    hf.save_pretrained(tmp_path)
    from_folder, from_memory = load_model(tmp_path, progress=False), load_model(hf, progress=False)
    assert params_equal(from_folder.model, from_memory.model)
    attn = from_folder.model.layers[0].self_attn
    assert (attn.qkv_proj.bias is not None) == (family == "qwen2")
    assert (attn.q_norm is not None) == (family == "qwen3")


@pytest.mark.parametrize("variant", ["qwen2_gqa", "qwen3_gqa_head_dim_24", "qwen3_tied_head_dim_40"])
def test_gguf_file_loads_and_generates_like_transformers(tmp_path, monkeypatch, variant):
    pytest.importorskip("gguf")
    from tiny_gguf import write_tiny_gguf

    monkeypatch.setenv("FASTSWITCH_CACHE", str(tmp_path / "cache"))
    family, overrides = TINY_QWEN_VARIANTS[variant]
    hf = tiny_qwen(family, **overrides)
    path = write_tiny_gguf(hf, tmp_path / f"{variant}.gguf")
    loaded = load_model(path, progress=False)
    # head_dim 24 and 40 are not Qwen3Config's default: the file's key length must have been used.
    config = hf.config
    default_head_dim = config.hidden_size // config.num_attention_heads
    assert loaded.model.head_dim == (config.head_dim if family == "qwen3" else default_head_dim)
    assert params_equal(loaded.model, load_model(hf, progress=False).model)
    prompt = list(range(5, 17))
    llm = LLM(path, block_size=8, attention_backend="torch")
    out = llm.generate([prompt], SamplingParams(max_tokens=6))[0]
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):].tolist()
    assert out.token_ids == expected


def test_sliding_window_follows_use_sliding_window():
    # Qwen2.5 and Qwen3 checkpoints carry a window but use_sliding_window=false: full attention.
    off = tiny_qwen_config("qwen2", use_sliding_window=False, sliding_window=16)
    assert max_supported_len(off) == off.max_position_embeddings
    # With it on, full attention equals the model's own only inside the window: the window caps lengths.
    on = tiny_qwen_config("qwen3", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert max_supported_len(on) == 16
    hf = tiny_qwen("qwen3", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ValueError, match="max_model_len=32 exceeds the model's limit of 16"):
        LLM(hf, max_model_len=32)
    # Inside the window the sliding layers see every token: logits equal transformers'.
    model = load_model(hf, progress=False).model
    cache = KVCache(4, model.num_layers, 8, model.num_kv_heads, model.head_dim, model.dtype, "cpu")
    tokens = list(range(20, 36))
    logits = ModelRunner(model, cache, backend="torch").forward([StepChunk(tokens, 0, [2, 0])])
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-4, rtol=1e-4)


def test_other_families_keep_their_clear_error():
    with pytest.raises(ValueError, match=r"model_type='gemma' is not supported.*llama, mistral, qwen2, qwen3"):
        check_supported_config(GemmaConfig())
    with pytest.raises(ValueError, match="model_type='gemma'"):
        LlamaForServing(GemmaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64), torch.float32)
