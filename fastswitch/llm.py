"""LLM: the facade notebooks and scripts use. Load a model, then `generate` or `chat`.

This version runs a simple run-to-completion loop with continuous batching: up to `max_num_seqs`
requests run together; each step packs the decode tokens of running requests and the prompt pieces
of new ones (chunked to `max_num_batched_tokens`) into one forward. A request reserves the blocks
for its whole length (prompt + max_tokens) when it is admitted, so the loop never needs to preempt;
requests are admitted in priority order (0 most urgent), then prompt order. The preemptive engine
(scheduler, swapping) replaces `_run` and keeps this interface.

Prompts may be strings (tokenized as they are, with the tokenizer's special tokens such as BOS) or
token-id lists (taken as they are). The chat template is applied only by `chat`, which renders a
conversation (a list of {"role", "content"} messages) with the checkpoint's template and a
generation prompt.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from fastswitch.cache import BlockManager, KVCache
from fastswitch.config import EngineConfig
from fastswitch.models.llama import max_supported_len
from fastswitch.models.loader import load_model, resolve_device
from fastswitch.models.runner import ForwardChunk, ModelRunner, default_num_blocks, kv_cache_spec
from fastswitch.models.sampling import Sampler, SamplingParams
from fastswitch.outputs import RequestMetrics, RequestOutput


@dataclass
class _Sequence:
    """One request's state in the loop."""

    output: RequestOutput
    params: SamplingParams
    generator: torch.Generator
    priority: int
    num_cached: int = 0  # tokens whose K/V are in the cache

    @property
    def tokens(self) -> list[int]:
        return self.output.prompt_token_ids + self.output.token_ids


class LLM:
    def __init__(self, model, preset: str = "fastswitch", tokenizer=None, **overrides) -> None:
        """model: a Hugging Face checkpoint folder, a .gguf file, or a transformers model in memory.

        overrides: EngineConfig fields (block_size, num_gpu_blocks, max_model_len, max_num_seqs, ...).
        tokenizer: replaces the checkpoint's tokenizer (needed for strings with an in-memory model).
        """
        self.config = EngineConfig.from_preset(preset, **overrides)
        device = resolve_device(self.config.device)
        loaded = load_model(model, dtype=self.config.dtype, device=device, tokenizer=tokenizer)
        self.model, self.tokenizer, self.hf_config = loaded.model, loaded.tokenizer, loaded.hf_config
        self.eos_token_ids = loaded.eos_token_ids
        limit = max_supported_len(self.hf_config)
        self.max_model_len = self.config.max_model_len or limit
        if self.max_model_len > limit:
            raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's limit of {limit} tokens")
        spec = kv_cache_spec(self.model)
        block_size = self.config.block_size
        num_blocks = self.config.num_gpu_blocks or default_num_blocks(
            spec, block_size, self.config.max_num_seqs, self.max_model_len, device
        )
        self.kv_cache = KVCache(
            num_blocks, spec.num_layers, block_size, spec.num_kv_heads, spec.head_dim, spec.dtype, device
        )
        self.block_manager = BlockManager(num_blocks, block_size, block_groups=self.config.block_groups)
        self.runner = ModelRunner(self.model, self.kv_cache, backend=self.config.attention_backend)
        self.sampler = Sampler()
        self._generator = torch.Generator().manual_seed(self.config.seed)  # for requests without a seed
        self._next_request_id = 0
        self._counters = {"num_steps": 0, "num_prompt_tokens": 0, "num_generated_tokens": 0}

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        priorities: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order. ValueError before anything runs."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = self._per_prompt("sampling_params", sampling_params or SamplingParams(), len(prompts))
        priorities = self._per_prompt("priorities", 0 if priorities is None else priorities, len(prompts))
        checked = [self._check_request(p, sp, pr) for p, sp, pr in zip(prompts, params, priorities)]
        arrival = time.monotonic()
        sequences = [
            self._new_sequence(text, ids, sp, pr, arrival) for (text, ids), sp, pr in zip(checked, params, priorities)
        ]
        self._run(sequences)
        return [seq.output for seq in sequences]

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        priorities: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Answer one conversation (a list of {"role", "content"} messages) or a list of them."""
        if self.tokenizer is None or getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("chat needs a tokenizer with a chat template; this model has none")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        rendered = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        # The template already holds the special tokens (BOS, role markers): add none.
        token_ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        outputs = self.generate(token_ids, sampling_params, priorities)
        for output, text in zip(outputs, rendered):
            output.prompt = text
        return outputs

    def stats(self) -> dict:
        """Counters of the engine. This loop never swaps, so the swap counters stay 0."""
        return {
            "swap_out_count": 0,
            "swap_in_count": 0,
            "swap_out_bytes": 0,
            "swap_in_bytes": 0,
            "copy_calls": 0,
            "num_preemptions": 0,
            **self._counters,
            "num_gpu_blocks": self.kv_cache.num_blocks,
            "num_free_gpu_blocks": self.block_manager.num_free,
            "block_bytes": self.kv_cache.block_bytes,
        }

    @staticmethod
    def _per_prompt(name: str, value, count: int) -> list:
        if not isinstance(value, (list, tuple)):
            return [value] * count
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries but there are {count} prompts")
        return list(value)

    def _check_request(self, prompt, params: SamplingParams, priority: int) -> tuple[str | None, list[int]]:
        """Validate one request and tokenize its prompt; returns (text or None, token ids)."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params entry {params!r} is not a SamplingParams")
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority={priority!r} must be an integer >= 0")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a string prompt needs a tokenizer; pass token ids or LLM(..., tokenizer=...)")
            text, token_ids = prompt, list(self.tokenizer(prompt)["input_ids"])
        else:
            text, token_ids = None, list(prompt)
        vocab = self.model.vocab_size
        if not token_ids:
            raise ValueError("a prompt is empty; it needs at least one token")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in token_ids):
            raise ValueError(f"a prompt holds token ids outside the vocabulary 0..{vocab - 1}")
        params.check_vocab(vocab)
        total = len(token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt of {len(token_ids)} tokens + max_tokens={params.max_tokens} = {total} exceeds "
                f"max_model_len={self.max_model_len}"
            )
        blocks = self.block_manager.blocks_for_tokens(total)
        if blocks > self.kv_cache.num_blocks:
            raise ValueError(
                f"a request of {total} tokens needs {blocks} KV blocks but the cache holds {self.kv_cache.num_blocks}"
            )
        return text, token_ids

    def _new_sequence(
        self, text: str | None, token_ids: list[int], params: SamplingParams, priority: int, arrival: float
    ) -> _Sequence:
        request_id = str(self._next_request_id)
        self._next_request_id += 1
        output = RequestOutput(request_id, text, token_ids, [], None, None, RequestMetrics(arrival))
        generator = self._generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        return _Sequence(output, params, generator, priority)

    def _run(self, sequences: list[_Sequence]) -> None:
        waiting = deque(sorted(sequences, key=lambda s: s.priority))  # stable: prompt order within a level
        running: list[_Sequence] = []
        while waiting or running:
            while waiting and len(running) < self.config.max_num_seqs:
                seq = waiting[0]
                # The last sampled token is never fed back, so the cache holds at most total - 1 tokens.
                reserve = len(seq.output.prompt_token_ids) + seq.params.max_tokens - 1
                if not self.block_manager.can_fit(seq.output.request_id, reserve):
                    break
                self.block_manager.ensure_capacity(seq.output.request_id, reserve)
                running.append(waiting.popleft())
            self._step(running)
            for seq in [s for s in running if s.output.finished]:
                self.block_manager.free(seq.output.request_id)
                running.remove(seq)

    def _step(self, running: list[_Sequence]) -> None:
        """One forward: every running request feeds the tokens not yet cached, within the token budget."""
        budget = self.config.max_num_batched_tokens
        chunks, fed = [], []
        for seq in running:
            if budget == 0:
                break
            pending = seq.tokens[seq.num_cached :]
            take = min(len(pending), budget)
            block_table = self.block_manager.block_table(seq.output.request_id)
            chunks.append(ForwardChunk(pending[:take], seq.num_cached, block_table))
            fed.append((seq, take == len(pending)))
            budget -= take
        logits = self.runner.forward(chunks)
        self._counters["num_steps"] += 1
        for (seq, _), chunk in zip(fed, chunks):
            seq.num_cached += len(chunk.token_ids)
            if seq.num_cached <= len(seq.output.prompt_token_ids):
                self._counters["num_prompt_tokens"] += len(chunk.token_ids)
        # Only a request whose every token is now cached has its next-token logits in this step.
        ready = [row for row, (_, complete) in enumerate(fed) if complete]
        if not ready:
            return
        seqs = [fed[row][0] for row in ready]
        tokens = self.sampler.sample(logits[ready], [s.params for s in seqs], [s.generator for s in seqs])
        now = time.monotonic()
        for seq, token in zip(seqs, tokens):
            self._append_token(seq, token, now)

    def _append_token(self, seq: _Sequence, token: int, now: float) -> None:
        output, params = seq.output, seq.params
        output.token_ids.append(token)
        output.metrics.record_token(now)
        self._counters["num_generated_tokens"] += 1
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            output.finish_reason = "stop"
        elif len(output.token_ids) >= params.max_tokens:
            output.finish_reason = "length"
        if output.finished:
            output.metrics.finish_time = now
            kept = output.token_ids[:-1] if output.finish_reason == "stop" else output.token_ids
            if self.tokenizer is not None:
                output.text = self.tokenizer.decode(kept, skip_special_tokens=True)
