"""ServingEngine: an Engine over a loaded model, with the tokenizer that turns text and chats into ids.

The CLI, the HTTP server and the examples all need the same thing: a model named by the user (or the
default), the preemptive Engine behind it with a preset and overrides, and text in and out. The
engine itself speaks token ids only; this record adds the tokenizer side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastswitch.chat_template import chat_turn_tokens
from fastswitch.config import EngineConfig
from fastswitch.engine import Engine
from fastswitch.models.llama import max_supported_len
from fastswitch.models.loader import LoadedModel, load_model, resolve_device
from fastswitch.models.runner import default_num_blocks, kv_cache_spec
from fastswitch.parallel.partition import WHOLE_MODEL
from fastswitch.parallel.workers import WorkerGroup
from fastswitch.server.model_sources import resolve_model

# On CPU the default model's full 8k context would size a pool nobody uses; chat turns are short.
DEFAULT_CPU_MAX_MODEL_LEN = 2048
# On CPU the "device" pool and the 4x host pool share the machine's RAM, and zero-filling them is paid
# at start-up: 256 MiB of device KV (~5.8k tokens of SmolLM2-135M in fp32) keeps start-up quick.
DEFAULT_CPU_KV_BYTES = 256 << 20


@dataclass
class ServingEngine:
    engine: Engine
    tokenizer: object  # a transformers tokenizer
    model_name: str
    max_model_len: int  # the longest sequence served: the model's (or the configured) limit, cut to the KV cache

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        preset: str = "fastswitch",
        progress: bool = True,
        tensor_parallel_size: int = 1,
        **overrides,
    ) -> ServingEngine:
        """model: a checkpoint folder, a .gguf file, "tiny-random", or None for SmolLM2-135M-Instruct.

        overrides: EngineConfig fields. tensor_parallel_size: devices (processes) the model is split
        over (fastswitch/parallel). Raises ValueError for a bad field, a missing model, a model
        without a tokenizer, or a max_model_len beyond the model's limit, before loading weights
        where it can.
        """
        config = EngineConfig.from_preset(preset, **overrides)
        source = resolve_model(model)
        device = resolve_device(config.device)
        workers = WorkerGroup.start(source, tensor_parallel_size, config.dtype, device)
        partition = WHOLE_MODEL if workers is None else workers.partition
        loaded = load_model(source, dtype=config.dtype, device=device, progress=progress, partition=partition)
        return cls.for_loaded(loaded, Path(str(source)).name, preset, workers=workers, **overrides)

    @classmethod
    def for_loaded(
        cls, loaded: LoadedModel, model_name: str, preset: str = "fastswitch", workers=None, **overrides
    ) -> ServingEngine:
        """workers: the WorkerGroup of a tensor-parallel model whose rank 0 shard `loaded` is (one engine
        per group; None without tensor parallelism).

        A fresh engine (own KV pools, own counters) over an already loaded model: several presets can
        then be compared on one model without loading it again. A policy given as a name, class or
        factory is made afresh for each engine; a policy object drives only one engine at a time."""
        config = EngineConfig.from_preset(preset, **overrides)
        if loaded.tokenizer is None:
            raise ValueError(f"model {model_name!r} has no tokenizer files; serving text needs one")
        device = loaded.model.device
        limit = max_supported_len(loaded.hf_config)
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(f"max_model_len={config.max_model_len} exceeds the model's limit of {limit} tokens")
        max_model_len = config.max_model_len or (min(limit, DEFAULT_CPU_MAX_MODEL_LEN) if device.type == "cpu" else limit)
        spec = kv_cache_spec(loaded.model)
        num_gpu_blocks = config.num_gpu_blocks or default_num_blocks(
            spec, config.block_size, config.max_num_seqs, max_model_len, device
        )
        if config.num_gpu_blocks is None and device.type == "cpu":
            num_gpu_blocks = max(1, min(num_gpu_blocks, DEFAULT_CPU_KV_BYTES // spec.block_bytes(config.block_size)))
        # What the cache cannot hold is not served: one sequence may use every device block, no more.
        max_model_len = min(max_model_len, num_gpu_blocks * config.block_size)
        tokenizer = loaded.tokenizer
        engine = Engine.for_model(
            loaded.model, config, max_model_len, num_gpu_blocks, eos_token_ids=loaded.eos_token_ids,
            detokenize=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), workers=workers,
        )  # fmt: skip
        return cls(engine, tokenizer, model_name, max_model_len)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A plain prompt, with the tokenizer's own special tokens (BOS where the model uses one) unless
        add_special_tokens is False."""
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_chat(
        self, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False,
        template_kwargs: dict | None = None, add_special_tokens: bool = False,
    ) -> list[int]:  # fmt: skip
        """A conversation rendered by the checkpoint's chat template, ending with the assistant's cue
        (add_generation_prompt) or inside its last, unfinished message (continue_final_message).
        template_kwargs: extra variables for the template. ValueError when the template fails or leaves
        out a message's text (a role it cannot render)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"model {self.model_name!r} has no chat template; use a plain prompt instead")
        reserved = {"conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message"}
        if reserved & set(template_kwargs or {}):
            raise ValueError(f"chat_template_kwargs must not set {sorted(reserved & set(template_kwargs))}")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                tokenize=False, **(template_kwargs or {}),
            )  # fmt: skip
        except Exception as exc:  # jinja's TemplateError (raise_exception in a template), or a bad message
            raise ValueError(f"the chat template cannot render these messages: {type(exc).__name__}: {exc}") from exc
        for message in messages:
            if message["content"].strip() and message["content"].strip() not in text:
                raise ValueError(f"this model's chat template does not render a {message['role']!r} message")
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def token_text_fn(self, as_token_ids: bool = False):
        """One token's text as logprobs show it: its decoded text, or "token_id:<id>" (vLLM's
        return_tokens_as_token_ids)."""
        if as_token_ids:
            return lambda token: f"token_id:{token}"
        return lambda token: self.tokenizer.decode([token])

    def encode_chat_turn(self, history: list[dict], message: str, answer_ended_with_stop: bool) -> list[int]:
        """The tokens a conversation's next user message appends to its KV context.

        history: the messages so far, the last one the assistant's answer as generated (its context
        is the earlier prompt plus exactly those tokens). The template renders the whole conversation;
        the new tokens are what it puts after that answer: its closing marker (unless the model
        already produced it as the stop token), the user's message and the assistant's cue.
        """
        eos_ids = self.engine.eos_token_ids
        stop_text = self.tokenizer.decode(eos_ids[:1]) if answer_ended_with_stop and eos_ids else None
        return chat_turn_tokens(self.tokenizer, history, message, stop_text)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        self.engine.close()
