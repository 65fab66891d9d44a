"""ServingEngine: an Engine over a loaded model, with the tokenizer that turns text and chats into ids.

The CLI, the HTTP server and the examples all need the same thing: a model named by the user (or the
default), the preemptive Engine behind it with a preset and overrides, and text in and out. The
engine itself speaks token ids only; this record adds the tokenizer side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastswitch.build import build_engine, load_for_engine
from fastswitch.chat_template import answer_stop_text, chat_turn_tokens, render_chat
from fastswitch.config import EngineConfig
from fastswitch.engine import Engine
from fastswitch.model_sources import resolve_model
from fastswitch.models.loader import LoadedModel
from fastswitch.outputs import RequestOutput
from fastswitch.parallel.workers import WorkerGroup

# A server runs for weeks: its latency percentiles (stats(), /stats) cover the most recent 100,000
# samples of each distribution, so its memory stays bounded (fastswitch/sched/metrics.py RunMetrics).
METRICS_WINDOW = 100_000


@dataclass
class ServingEngine:
    engine: Engine
    tokenizer: Any  # a transformers tokenizer
    model_name: str
    max_model_len: int  # the longest sequence served (Engine.max_seq_len): max_model_len cut to the KV cache

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
        loaded, workers = load_for_engine(source, config, tensor_parallel_size, progress=progress)
        return cls.for_loaded(loaded, Path(str(source)).name, preset, workers=workers, **overrides)

    @classmethod
    def for_loaded(
        cls, loaded: LoadedModel, model_name: str, preset: str = "fastswitch", workers: WorkerGroup | None = None,
        **overrides,
    ) -> ServingEngine:  # fmt: skip
        """workers: the WorkerGroup of a tensor-parallel model whose rank 0 shard `loaded` is (one engine
        per group; None without tensor parallelism).

        A fresh engine (own KV pools, own counters) over an already loaded model: several presets can
        then be compared on one model without loading it again. A policy given as a name, class or
        factory is made afresh for each engine; a policy object drives only one engine at a time."""
        config = EngineConfig.from_preset(preset, **overrides)
        if loaded.tokenizer is None:
            raise ValueError(f"model {model_name!r} has no tokenizer files; serving text needs one")
        engine = build_engine(
            loaded.model, config, tokenizer=loaded.tokenizer, eos_token_ids=loaded.eos_token_ids, workers=workers,
            metrics_window=METRICS_WINDOW,
        )  # fmt: skip
        return cls(engine, loaded.tokenizer, model_name, engine.max_seq_len)

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
        out a message's text (fastswitch/chat_template.py render_chat)."""
        text = render_chat(self.tokenizer, messages, add_generation_prompt, continue_final_message, template_kwargs)
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def token_text_fn(self, as_token_ids: bool = False):
        """One token's text as logprobs show it: its decoded text, or "token_id:<id>" (vLLM's
        return_tokens_as_token_ids)."""
        if as_token_ids:
            return lambda token: f"token_id:{token}"
        return lambda token: self.tokenizer.decode([token])

    def encode_chat_turn(self, history: list[dict], message: str, last_turn: RequestOutput | None) -> list[int]:
        """The tokens a conversation's next user message appends to its KV context.

        history: the messages so far, the last one the assistant's answer as generated (its context
        is the earlier prompt plus exactly those tokens); last_turn: the output of that answer (None
        before the first). The template renders the whole conversation; the new tokens are what it
        puts after that answer: its closing marker (unless the model already produced it as the stop
        token), the user's message and the assistant's cue (fastswitch/chat_template.py).
        """
        return chat_turn_tokens(self.tokenizer, history, message, answer_stop_text(self.tokenizer, last_turn))

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        self.engine.close()
