"""Sampling parameters and the sampler that turns a batch of logits into next tokens.

Greedy (temperature 0) rows take the argmax, so they match `transformers` greedy decoding exactly.
Other rows are scaled by their temperature, cut by top-k and then top-p (the order `transformers`
uses), and drawn with the request's own `torch.Generator`, so a seeded request gives the same tokens
whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None  # None: drawn from the engine's seeded generator
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        temperature = self.temperature
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be a finite number >= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 0 (0 turns it off)")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must lie in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed={self.seed!r} must be None or an integer >= 0")
        stops = tuple(self.stop_token_ids)
        for token in stops:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"stop_token_ids contains {token!r}; token ids are integers >= 0")
        # A frozen dataclass: normalise a list given by the caller into the hashable tuple.
        object.__setattr__(self, "stop_token_ids", stops)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos={self.ignore_eos!r} must be a bool")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ValueError if a stop token lies outside the model's vocabulary."""
        for token in self.stop_token_ids:
            if token >= vocab_size:
                raise ValueError(f"stop token id {token} is outside the vocabulary (size {vocab_size})")


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits [V] outside the top-k, then outside the top-p nucleus, to -inf (one row)."""
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best one always stays.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Sampler:
    """Picks one next token per row of a logits batch."""

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> list[int]:
        """logits [B, V]; params and CPU generators one per row (None: torch's global generator)."""
        if logits.dim() != 2 or logits.shape[0] != len(params) or len(params) != len(generators):
            raise ValueError(
                f"logits {tuple(logits.shape)}, {len(params)} params and {len(generators)} generators "
                "must agree on the batch size"
            )
        logits = logits.float()
        tokens = logits.argmax(dim=-1).tolist()
        for row, (p, generator) in enumerate(zip(params, generators)):
            if p.greedy:
                continue
            # Drawn on the CPU with CPU generators: the same seed gives the same tokens on any device.
            row_logits = filter_top_k_top_p(logits[row].cpu() / p.temperature, p.top_k, p.top_p)
            probs = torch.softmax(row_logits, dim=-1)
            tokens[row] = int(torch.multinomial(probs, 1, generator=generator).item())
        return tokens
