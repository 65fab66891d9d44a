"""ShareGPT-format JSON files on disk -> the same `Workload` records that `synthetic_sharegpt` makes.

ShareGPT has no timestamps, so arrivals, think times, clients and priorities are drawn as in
`fastswitch.workloads.synthetic_sharegpt`; only the turns and their lengths come from the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fastswitch.workloads import (
    Conversation,
    Turn,
    Workload,
    check_trace_params,
    draw_priorities,
    fit_turns,
    seeded_streams,
)

# A rough tokens-per-character rate for English text (about 4 characters per token for BPE
# vocabularies), used only when load_sharegpt is given no tokenizer.
CHARS_PER_TOKEN = 4.0


class TextEncoder(Protocol):
    """What load_sharegpt needs of a tokenizer (a transformers tokenizer has it)."""

    def encode(self, text: str) -> Sequence[int]: ...


_HUMAN_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def _messages(record: dict) -> list[tuple[str, str]]:
    raw = record.get("conversations", record.get("messages", record.get("conversation")))
    if not isinstance(raw, list):
        return []
    messages = []
    for m in raw:
        if not isinstance(m, dict):
            continue
        role = str(m.get("from", m.get("role", ""))).lower()
        text = m.get("value", m.get("content", ""))
        if isinstance(text, str):
            messages.append((role, text))
    return messages


def _pairs_of(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(user text, answer text) pairs in order; system messages, leading answers and a final
    unanswered user message are dropped, and consecutive messages of one side are joined."""
    pairs: list[tuple[str, str]] = []
    user: list[str] = []
    answer: list[str] = []
    for role, text in messages:
        if role in _HUMAN_ROLES:
            if answer:
                pairs.append(("\n".join(user), "\n".join(answer)))
                user, answer = [], []
            user.append(text)
        elif role in _ASSISTANT_ROLES and user:
            answer.append(text)
    if user and answer:
        pairs.append(("\n".join(user), "\n".join(answer)))
    return pairs


def load_sharegpt(
    path: str | Path,
    tokenizer: TextEncoder | None = None,
    num_conversations: int | None = None,
    rate: float = 1.0,
    seed: int = 0,
    think_time_mean: float = 10.0,
    max_context_tokens: int = 8192,
    num_clients: int = 10,
    priority_pattern: str = "random",
    num_priority_levels: int = 4,
) -> Workload:
    """Read a ShareGPT-format JSON file: a list of {"conversations": [{"from": "human"|"gpt", "value": str}, ...]}
    (OpenAI-style {"messages": [{"role", "content"}]} is accepted too).

    Token counts come from `tokenizer.encode(text)` when a tokenizer is given (and the prompt ids are
    kept), else from len(text) / 4, a rough rate for English BPE text. ShareGPT has no timestamps, so
    arrivals, think times, clients and priorities are drawn as in `synthetic_sharegpt`, from `seed`.
    Conversations with no answered user message are skipped.
    """
    check_trace_params(rate, num_clients, think_time_mean, max_context_tokens)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")

    def encode(text: str) -> tuple[int, tuple[int, ...] | None]:
        if tokenizer is None:
            return max(1, round(len(text) / CHARS_PER_TOKEN)), None
        ids = tuple(tokenizer.encode(text))
        return max(1, len(ids)), ids

    arrivals_rng, think_rng, client_rng, prio_rng = seeded_streams(seed, 4)
    conversations: list[Conversation] = []
    clock = 0.0
    for record in data:
        if num_conversations is not None and len(conversations) >= num_conversations:
            break
        pairs = _pairs_of(_messages(record)) if isinstance(record, dict) else []
        if not pairs:
            continue
        encoded = [(encode(u), encode(a)) for u, a in pairs]
        fitted = fit_turns([(p[0], r[0]) for p, r in encoded], max_context_tokens)
        priorities = draw_priorities(prio_rng, priority_pattern, num_priority_levels, len(fitted))
        turns = []
        for i, (prompt_len, response_len) in enumerate(fitted):
            user_text = pairs[i][0]
            ids = encoded[i][0][1]
            turns.append(
                Turn(
                    prompt_tokens=prompt_len,
                    response_tokens=response_len,
                    think_time=0.0 if i == 0 else float(think_rng.exponential(think_time_mean)),
                    priority=priorities[i],
                    prompt_token_ids=ids[:prompt_len] if ids is not None else None,
                    prompt_text=user_text,
                )
            )
        clock += float(arrivals_rng.exponential(1.0 / rate))
        client = int(client_rng.integers(0, num_clients))
        conversations.append(Conversation(len(conversations), client, clock, tuple(turns)))

    params = {
        "source": str(path), "rate": rate, "think_time_mean": think_time_mean,
        "max_context_tokens": max_context_tokens, "num_clients": num_clients,
        "priority_pattern": priority_pattern, "num_priority_levels": num_priority_levels,
    }  # fmt: skip
    return Workload(f"sharegpt:{Path(path).name}", tuple(conversations), seed, params)
