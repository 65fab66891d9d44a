"""LLM: the facade notebooks and scripts use. Load a model, then `generate`, `chat`, or hold a
multi-turn `conversation`; or drive the engine step by step (`add_request`, `step`).

Behind it is the preemptive engine (fastswitch/engine.py): iteration-level batching under a token
budget, the scheduling policy of the config (`fcfs`, `priority`, `vtc`, `mlfq`, or a plug-in:
`LLM(model, policy=MyPolicy())`, see sched/policies.py), preemption by swap or recompute, and the
three FastSwitch mechanisms as the preset and overrides set them. `stats()` gives the engine's
counters (swaps, bytes, copy calls, time the executor waited on swaps) and the run's tail latencies.
Requests are checked at the engine's front door (Engine.check_request) before anything runs.

Prompts may be strings (tokenized as they are, with the tokenizer's special tokens such as BOS) or
token-id lists (taken as they are). The chat template is applied only by `chat` and conversations.
Within one `generate` call, requests are submitted in priority order (0 most urgent), then prompt
order, so even `fcfs` admits them by priority; `policy="priority"` also preempts for it.

Sampling (`SamplingParams`, fastswitch/models/sampling.py) has vLLM's fields and meanings: stop
strings and stop token ids, n, logprobs and prompt_logprobs, presence / frequency / repetition
penalties, temperature, top-k, top-p, min-p, min_tokens, logit_bias, ignore_eos, seed, max_tokens
(16 by default as in vLLM's LLM; None: until the context is full, as vLLM's server does when it is
omitted). Where a default differs from vLLM's, that module says so (temperature: 0, greedy). Each
output's `text` ends at a stop string (kept with include_stop_str_in_output), `stop_reason` names
what stopped it, and `logprobs` / `prompt_logprobs` hold vLLM's {token id: Logprob} dicts. With
n > 1 the prompt is prefilled once and its KV copied to the other samples: `generate` returns one
output per prompt, completion 0, whose `samples` lists all n (see RequestOutput).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from fastswitch.build import build_engine, load_for_engine
from fastswitch.chat_template import answer_stop_text, chat_turn_tokens, check_chat_template, render_chat
from fastswitch.config import EngineConfig
from fastswitch.models.sampling import SamplingParams
from fastswitch.outputs import RequestOutput
from fastswitch.sched.conversation import Conversation


class LLM:
    def __init__(
        self, model, preset: str = "fastswitch", tokenizer=None, tensor_parallel_size: int = 1, **overrides
    ) -> None:
        """model: a Hugging Face checkpoint folder, a .gguf file, or a transformers model in memory.

        overrides: EngineConfig fields (block_size, num_gpu_blocks, max_model_len, max_num_seqs, ...);
        the pools and max_model_len left None are sized as fastswitch/build.py says (on a CPU: at most
        2048 tokens and 256 MiB of device KV). `max_model_len` is then the longest sequence served.
        tokenizer: replaces the checkpoint's tokenizer (needed for strings with an in-memory model).
        tensor_parallel_size: split the model over this many devices, one process each (cuda:0..N-1,
        or N processes on the CPU); `close()` stops them. See fastswitch/parallel.
        """
        self.config = EngineConfig.from_preset(preset, **overrides)
        loaded, self.workers = load_for_engine(model, self.config, tensor_parallel_size, tokenizer=tokenizer)
        self.model, self.hf_config = loaded.model, loaded.hf_config
        self.tokenizer: Any = loaded.tokenizer  # a transformers tokenizer, or None
        self.eos_token_ids = loaded.eos_token_ids
        self.engine = build_engine(
            self.model, self.config, tokenizer=self.tokenizer, eos_token_ids=self.eos_token_ids, workers=self.workers
        )
        self.max_model_len = self.engine.max_seq_len
        self.kv_cache = self.engine.device_cache

    # ---- run to completion ----------------------------------------------------------------------

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        priorities: list[int] | None = None,
        client_ids: list[Hashable] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order. ValueError before anything runs.

        client_ids: who sent each prompt, for the `vtc` policy (default: one client).
        """
        prompts = _prompt_list(prompts)
        params = self._per_prompt("sampling_params", sampling_params or SamplingParams(), len(prompts))
        priorities = self._per_prompt("priorities", 0 if priorities is None else priorities, len(prompts))
        clients = self._per_prompt("client_ids", "default" if client_ids is None else client_ids, len(prompts))
        tokenized = [self._tokenize(prompt) for prompt in prompts]
        # Every request is checked before any is added: a bad one leaves nothing behind.
        checked = [(text, self.engine.check_request(ids, sp, pr, reserve_output=True))
                   for (text, ids), sp, pr in zip(tokenized, params, priorities)]  # fmt: skip
        ids = [self.engine.new_request_id() for _ in prompts]
        added: dict[int, RequestOutput] = {}
        for i in sorted(range(len(prompts)), key=lambda i: priorities[i]):  # stable: prompt order within a level
            text, token_ids = checked[i]
            added[i] = self.engine.add_request(
                token_ids, params[i], request_id=ids[i], priority=priorities[i], client_id=clients[i], prompt=text
            )
        outputs = [added[i] for i in range(len(prompts))]
        self._run_until(outputs)
        _raise_for_failed(outputs)
        return outputs

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        priorities: list[int] | None = None,
    ) -> list[RequestOutput]:
        """Answer one conversation (a list of {"role", "content"} messages) or a list of them, statelessly.
        For a conversation that continues turn after turn on its own KV, use `conversation()`."""
        if not isinstance(conversations, (list, tuple)):
            kind = type(conversations).__name__
            raise ValueError(f"conversations must be a list of messages or a list of such lists, got {kind}")
        one = bool(conversations) and isinstance(conversations[0], dict)
        chats: list = [conversations] if one else list(conversations)
        for messages in chats:
            check_messages(messages)
        rendered = [render_chat(self.tokenizer, messages) for messages in chats]
        # The template already holds the special tokens (BOS, role markers): add none.
        token_ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        outputs = self.generate(token_ids, sampling_params, priorities)
        for output, text in zip(outputs, rendered):
            output.prompt = text
        return outputs

    def conversation(self, system: str | None = None, priority: int = 0, client_id: Hashable = None) -> ChatSession:
        """A multi-turn chat whose turns append to one KV context: `session.send("...")` answers a turn."""
        check_chat_template(self.tokenizer)
        return ChatSession(self, self.engine.conversation(client_id, priority), system)

    # ---- step by step -----------------------------------------------------------------------------

    def add_request(
        self,
        prompt,
        sampling_params: SamplingParams | None = None,
        priority: int = 0,
        client_id: Hashable = "default",
        arrival_time: float | None = None,
    ) -> RequestOutput:
        """Queue one request without running it; `step()` advances it, and its output fills in.

        arrival_time: when it arrived, on the engine's clock (`time.monotonic()`; default: now)."""
        text, token_ids = self._tokenize(prompt)
        return self.engine.add_request(
            token_ids, sampling_params or SamplingParams(), priority=priority, client_id=client_id, prompt=text,
            arrival_time=arrival_time, reserve_output=True,
        )  # fmt: skip

    def step(self) -> list[RequestOutput]:
        """One engine iteration; returns the outputs that got a token (finished ones included)."""
        return self.engine.step()

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def abort(self, request_id: str) -> RequestOutput | None:
        return self.engine.abort(request_id)

    def stats(self) -> dict:
        """Engine counters (swap_out_count, swap_in_count, swap_out_bytes, swap_in_bytes, copy_calls,
        reused_blocks, executor_idle_on_swaps, ...) and the run's TTFT/TBT percentiles and throughput."""
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()

    def _submit_turn(self, conversation: Conversation, new_token_ids: list[int], params, text: str) -> RequestOutput:
        """A conversation turn, refused up front (as `generate`'s requests are) when its whole context
        plus max_tokens cannot fit."""
        context = conversation.token_ids + list(new_token_ids)
        self.engine.check_request(context, params, conversation.priority, conversation=True, reserve_output=True)
        return conversation.submit(new_token_ids, params, prompt=text)

    # ---- helpers -----------------------------------------------------------------------------------

    def _run_until(self, outputs: list[RequestOutput]) -> None:
        """Steps until every output finished. If a step raises, these requests are aborted (their blocks
        freed) before the error propagates, so a failed call leaves nothing behind for the next."""
        try:
            while not all(output.all_finished for output in outputs):
                self.engine.step()
        except BaseException:
            for output in outputs:
                self.engine.abort(output.request_id)
            raise

    @staticmethod
    def _per_prompt(name: str, value, count: int) -> list:
        if not isinstance(value, (list, tuple)):
            return [value] * count
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries but there are {count} prompts")
        return list(value)

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of one prompt: a string tokenized, token ids as they are (the engine
        checks them, Engine.check_request, with room for max_tokens as every request here)."""
        if not isinstance(prompt, (str, list, tuple)):
            raise ValueError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not isinstance(prompt, str):
            return None, list(prompt)
        if self.tokenizer is None:
            raise ValueError("a string prompt needs a tokenizer; pass token ids or LLM(..., tokenizer=...)")
        return prompt, list(self.tokenizer(prompt)["input_ids"])


def _prompt_list(prompts) -> list:
    """generate's prompts as a list: one string or one token-id list becomes a list of one."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(
            f"prompts must be a string, a list of strings or a list of token-id lists, got {type(prompts).__name__}"
            + (" (pass tensor.tolist())" if hasattr(prompts, "tolist") else "")
        )
    if prompts and isinstance(prompts[0], int):
        return [prompts]
    return list(prompts)


def _raise_for_failed(outputs: list[RequestOutput]) -> None:
    """The engine failed some requests alone (see Engine.step): say which and why. The others finished,
    and nothing of the failed ones is left in the engine."""
    failed = [o for o in outputs if o.finish_reason == "error"]
    if failed:
        raise RuntimeError("; ".join(f"request {o.request_id} failed: {o.error}" for o in failed))


def check_messages(messages) -> None:
    """A chat: a list of {"role": str, "content": str} dicts. ValueError naming the first bad message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"a conversation must be a non-empty list of messages, got {messages!r:.60}")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):  # fmt: skip
            raise ValueError(
                f"message {i} must be a dict with a string 'role' and a string 'content', got {message!r:.80}"
            )


class ChatSession:
    """A chat on one KV context: each `send` renders only the new message with the chat template and
    appends its tokens to exactly the tokens the conversation holds (earlier prompts and answers)."""

    def __init__(self, llm: LLM, conversation: Conversation, system: str | None) -> None:
        self.llm = llm
        self.conversation = conversation
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    @property
    def turns(self) -> list[RequestOutput]:
        return self.conversation.turns

    def submit(self, text: str, sampling_params: SamplingParams | None = None) -> RequestOutput:
        """Queue the next user message without running it (step the LLM, or call `send`)."""
        if not isinstance(text, str):
            raise ValueError(f"a chat message must be a string, got {type(text).__name__}")
        if self.conversation.busy:
            raise ValueError("the previous turn is still running; step the LLM until it finishes")
        params = sampling_params or SamplingParams()
        last = self.turns[-1] if self.turns else None
        history = self.messages if last is None else self.messages + [{"role": "assistant", "content": last.text or ""}]
        new_ids = chat_turn_tokens(self.llm.tokenizer, history, text, answer_stop_text(self.llm.tokenizer, last))
        output = self.llm._submit_turn(self.conversation, new_ids, params, text)
        self.messages = history + [{"role": "user", "content": text}]  # only once the turn is accepted
        return output

    def send(self, text: str, sampling_params: SamplingParams | None = None) -> RequestOutput:
        """Answer one user message; other queued work advances alongside it."""
        output = self.submit(text, sampling_params)
        self.llm._run_until([output])
        _raise_for_failed([output])
        return output

    def close(self) -> None:
        self.conversation.close()
