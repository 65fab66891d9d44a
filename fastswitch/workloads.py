"""Multi-turn conversation traces: the workload that drives both a real run and a simulated one.

A `Workload` is a list of `Conversation`s. Each conversation starts at `start_time` (Poisson arrivals),
belongs to a client (for VTC) and holds `Turn`s: a user message of `prompt_tokens` new tokens, the
answer the engine must produce (`response_tokens`), the think time the user waits after the previous
answer before sending this message, and the turn's priority level. A turn's context is everything
before it in the conversation plus its own prompt, so KV reuse can apply across turns.

`synthetic_sharegpt(...)` follows Multi-Round ShareGPT as the FastSwitch paper used it (1,000
conversations, 5.5 turns on average, Poisson arrivals). Per-turn length percentiles of ShareGPT are
not published, so the *shapes* below are assumptions; only the means come from sources (docs/references.md):
- prompt and response lengths: log-normal with means 161 and 338 tokens (vLLM paper, Fig. 11, ShareGPT);
  the sigmas (1.0 and 0.8) are assumptions chosen for the heavy right tail chat traces show;
- turns per conversation: geometric with mean 5.5 (the paper); the geometric shape is an assumption;
  it makes 1 - 1/5.5 = 82% of conversations multi-turn, near the 73% of CachedAttention (ATC'24);
- think time: exponential (as Pensieve models it); the mean (default 10 s) is an assumption, since
  no source gives a figure for chat (one agentic trace: median 1.6 s, mean 37 s).

`fastswitch.sharegpt.load_sharegpt(path, ...)` reads a ShareGPT-format JSON file into the same records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

PRIORITY_PATTERNS = ("random", "markov")

# ShareGPT means (vLLM paper, Fig. 11) and the paper's turns per conversation.
SHAREGPT_MEAN_PROMPT_TOKENS = 161.0
SHAREGPT_MEAN_RESPONSE_TOKENS = 338.0
MULTI_ROUND_SHAREGPT_MEAN_TURNS = 5.5


@dataclass(frozen=True)
class Turn:
    """One user message and the answer to it."""

    prompt_tokens: int  # new tokens of the user's message (the earlier context is not counted)
    response_tokens: int  # tokens the engine generates for this turn
    think_time: float  # seconds between the previous answer's last token and this message (0 for turn 0)
    priority: int = 0  # priority level; 0 is the most urgent, as in the scheduler (vLLM's convention)
    prompt_token_ids: tuple[int, ...] | None = None
    prompt_text: str | None = None


@dataclass(frozen=True)
class Conversation:
    conversation_id: int
    client_id: int
    start_time: float  # seconds since the start of the trace when turn 0 is sent
    turns: tuple[Turn, ...]

    @property
    def context_tokens(self) -> int:
        """Tokens of the whole conversation once every turn is answered."""
        return sum(t.prompt_tokens + t.response_tokens for t in self.turns)


@dataclass(frozen=True)
class Workload:
    name: str
    conversations: tuple[Conversation, ...]
    seed: int | None = None
    params: dict = field(default_factory=dict, compare=False)

    @property
    def num_turns(self) -> int:
        return sum(len(c.turns) for c in self.conversations)

    @property
    def num_clients(self) -> int:
        return len({c.client_id for c in self.conversations})

    def summary(self) -> dict[str, float]:
        """Means that can be checked against the sources (docs/references.md)."""
        turns = [t for c in self.conversations for t in c.turns]
        n = max(len(turns), 1)
        return {
            "conversations": len(self.conversations),
            "turns": len(turns),
            "mean_turns": len(turns) / max(len(self.conversations), 1),
            "mean_prompt_tokens": sum(t.prompt_tokens for t in turns) / n,
            "mean_response_tokens": sum(t.response_tokens for t in turns) / n,
            "max_context_tokens": max((c.context_tokens for c in self.conversations), default=0),
            "duration_s": max((c.start_time for c in self.conversations), default=0.0),
        }


def seeded_streams(seed: int, count: int) -> list[np.random.Generator]:
    """Independent generators from one seed, one per drawn quantity, so one draw never shifts another."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _lognormal_lengths(rng: np.random.Generator, mean: float, sigma: float, size: int, cap: int) -> np.ndarray:
    # mu chosen so that the mean of the (unclipped) log-normal is `mean`: E = exp(mu + sigma^2 / 2).
    mu = math.log(mean) - sigma * sigma / 2.0
    return np.clip(np.rint(rng.lognormal(mu, sigma, size)), 1, cap).astype(np.int64)


def draw_priorities(
    rng: np.random.Generator, pattern: str, num_levels: int, count: int, markov_stay: float = 0.5
) -> list[int]:
    """Priority levels of `count` successive turns of one conversation.

    The FastSwitch paper takes its patterns from Yin et al. 2024 without defining them; this reading
    is an assumption (docs/references.md), the same as the scheduler's run-time re-draws
    (fastswitch/sched/priority_patterns.py) but applied from turn to turn: `random` draws every level
    uniformly and independently; `markov` draws the first level uniformly, then stays with probability
    `markov_stay` or moves one level up or down (reflected at the ends), so a conversation's
    importance drifts slowly.

    When the engine also re-draws priorities while requests run (`priority_update_freq` > 0), a
    replay reads every level from the workload's priority trace (sched/priority_trace.py), which
    starts each conversation at its first turn's level drawn here: later turns' levels come from the
    trace at the time they run.
    """
    if pattern not in PRIORITY_PATTERNS:
        raise ValueError(f"priority pattern={pattern!r} is not one of {PRIORITY_PATTERNS}")
    if num_levels < 1:
        raise ValueError(f"num_levels={num_levels} must be at least 1")
    if not 0.0 <= markov_stay <= 1.0:
        raise ValueError(f"markov_stay={markov_stay} must lie in [0, 1]")
    if count <= 0:
        return []
    if pattern == "random" or num_levels == 1:
        return [int(x) for x in rng.integers(0, num_levels, count)]
    levels = [int(rng.integers(0, num_levels))]
    for _ in range(count - 1):
        level = levels[-1]
        if rng.random() >= markov_stay:
            step = 1 if rng.random() < 0.5 else -1
            level += step
            if not 0 <= level < num_levels:
                level -= 2 * step
        levels.append(level)
    return levels


def _synthetic_ids(rng: np.random.Generator, count: int, vocab_range: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(vocab_range[0], vocab_range[1], count))


def _check_vocab_range(vocab_range: tuple[int, int] | None) -> None:
    if vocab_range is not None and not 0 <= vocab_range[0] < vocab_range[1]:
        raise ValueError(f"vocab_range={vocab_range} must be (low, high) with 0 <= low < high")


def check_trace_params(rate: float, num_clients: int, think_time_mean: float, max_context_tokens: int) -> None:
    if not rate > 0:
        raise ValueError(f"rate={rate} conversations/s must be > 0")
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be at least 1")
    if think_time_mean < 0:
        raise ValueError(f"think_time_mean={think_time_mean} s must be >= 0")
    if max_context_tokens < 2:
        raise ValueError(
            f"max_context_tokens={max_context_tokens} must be at least 2 (one prompt and one answer token)"
        )


def fit_turns(pairs: Sequence[tuple[int, int]], max_context_tokens: int) -> list[tuple[int, int]]:
    """Keep the leading turns whose whole context fits; a first turn too long is cut to fit."""
    kept: list[tuple[int, int]] = []
    used = 0
    for prompt, response in pairs:
        if used + prompt + response > max_context_tokens:
            if not kept:
                # Cut the first turn rather than drop the conversation: keep at least one answer token.
                response = max(1, min(response, max_context_tokens // 2))
                prompt = max_context_tokens - response if prompt + response > max_context_tokens else prompt
                kept.append((prompt, response))
            break
        kept.append((prompt, response))
        used += prompt + response
    return kept


def synthetic_sharegpt(
    num_conversations: int = 1000,
    rate: float = 1.0,
    seed: int = 0,
    mean_turns: float = MULTI_ROUND_SHAREGPT_MEAN_TURNS,
    mean_prompt_tokens: float = SHAREGPT_MEAN_PROMPT_TOKENS,
    mean_response_tokens: float = SHAREGPT_MEAN_RESPONSE_TOKENS,
    prompt_sigma: float = 1.0,
    response_sigma: float = 0.8,
    think_time_mean: float = 10.0,
    max_context_tokens: int = 8192,
    num_clients: int = 10,
    priority_pattern: str = "random",
    num_priority_levels: int = 4,
    vocab_range: tuple[int, int] | None = None,
) -> Workload:
    """A Multi-Round ShareGPT-like trace; the same seed always gives the same workload.

    rate: conversation arrivals per second (Poisson). max_context_tokens: a conversation ends before
    the turn that would make its context exceed this (the model's context window). vocab_range:
    (low, high) to attach synthetic prompt token ids drawn uniformly from [low, high), so a real run
    on a small model can replay the same trace. Clients are drawn uniformly from `num_clients`.
    """
    if num_conversations < 0:
        raise ValueError(f"num_conversations={num_conversations} must be >= 0")
    if mean_turns < 1:
        raise ValueError(f"mean_turns={mean_turns} must be at least 1")
    if min(mean_prompt_tokens, mean_response_tokens) < 1:
        raise ValueError(
            f"mean_prompt_tokens={mean_prompt_tokens} and mean_response_tokens={mean_response_tokens} must be >= 1"
        )
    if prompt_sigma < 0 or response_sigma < 0:
        raise ValueError(f"prompt_sigma={prompt_sigma} and response_sigma={response_sigma} must be >= 0")
    check_trace_params(rate, num_clients, think_time_mean, max_context_tokens)
    _check_vocab_range(vocab_range)
    if priority_pattern not in PRIORITY_PATTERNS:
        raise ValueError(f"priority_pattern={priority_pattern!r} is not one of {PRIORITY_PATTERNS}")

    # Independent streams per quantity, so changing e.g. the think-time mean leaves lengths unchanged.
    arrivals_rng, turns_rng, lengths_rng, think_rng, client_rng, prio_rng, ids_rng = seeded_streams(seed, 7)
    start_times = np.cumsum(arrivals_rng.exponential(1.0 / rate, num_conversations))
    turn_counts = turns_rng.geometric(1.0 / mean_turns, num_conversations)
    clients = client_rng.integers(0, num_clients, num_conversations)

    conversations = []
    for cid in range(num_conversations):
        n = int(turn_counts[cid])
        prompts = _lognormal_lengths(lengths_rng, mean_prompt_tokens, prompt_sigma, n, max_context_tokens)
        responses = _lognormal_lengths(lengths_rng, mean_response_tokens, response_sigma, n, max_context_tokens)
        thinks = think_rng.exponential(think_time_mean, n) if think_time_mean > 0 else np.zeros(n)
        pairs = fit_turns(list(zip(prompts.tolist(), responses.tolist())), max_context_tokens)
        priorities = draw_priorities(prio_rng, priority_pattern, num_priority_levels, len(pairs))
        turns = tuple(
            Turn(
                prompt_tokens=p,
                response_tokens=r,
                think_time=0.0 if i == 0 else float(thinks[i]),
                priority=priorities[i],
                prompt_token_ids=_synthetic_ids(ids_rng, p, vocab_range) if vocab_range else None,
            )
            for i, (p, r) in enumerate(pairs)
        )
        conversations.append(Conversation(cid, int(clients[cid]), float(start_times[cid]), turns))

    params = {
        "rate": rate, "mean_turns": mean_turns, "mean_prompt_tokens": mean_prompt_tokens,
        "mean_response_tokens": mean_response_tokens, "prompt_sigma": prompt_sigma,
        "response_sigma": response_sigma, "think_time_mean": think_time_mean,
        "max_context_tokens": max_context_tokens, "num_clients": num_clients,
        "priority_pattern": priority_pattern, "num_priority_levels": num_priority_levels,
        "vocab_range": vocab_range,
    }  # fmt: skip
    return Workload("synthetic-sharegpt", tuple(conversations), seed, params)


def workload_from_prompts(
    prompt_lengths: Sequence[int],
    response_tokens: int | Sequence[int],
    arrival_times: Sequence[float] | None = None,
    priorities: Sequence[int] | None = None,
    client_ids: Sequence[int] | None = None,
    token_ids: Callable[[int, int], Sequence[int]] | None = None,
) -> Workload:
    """Single-turn conversations from explicit lengths (tests and small benchmarks).

    token_ids(conversation_index, length) gives the prompt's ids when a real run needs them.
    """
    n = len(prompt_lengths)
    responses = [response_tokens] * n if isinstance(response_tokens, int) else list(response_tokens)
    for name, seq in (("response_tokens", responses), ("arrival_times", arrival_times),
                      ("priorities", priorities), ("client_ids", client_ids)):  # fmt: skip
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected one per prompt ({n})")
    if any(p < 1 for p in prompt_lengths) or any(r < 1 for r in responses):
        raise ValueError("every prompt length and response_tokens must be >= 1")
    conversations = []
    for i in range(n):
        ids = tuple(int(x) for x in token_ids(i, prompt_lengths[i])) if token_ids else None
        turn = Turn(int(prompt_lengths[i]), int(responses[i]), 0.0, int(priorities[i]) if priorities else 0, ids)
        start = float(arrival_times[i]) if arrival_times is not None else 0.0
        conversations.append(Conversation(i, int(client_ids[i]) if client_ids else 0, start, (turn,)))
    return Workload("explicit", tuple(conversations))
