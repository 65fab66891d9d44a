"""Sampling parameters (vLLM's meanings) and the sampler that turns a batch of logits into next tokens.

`SamplingParams` validates every value when it is built (ValueError naming the value and its limit),
so nothing a request asks for can make a step fail later. Meanings, limits and defaults are those
of vLLM's `SamplingParams` (current main), with two differences:

- `temperature` defaults to 0.0 (greedy), where vLLM's defaults to 1.0.
- `n > 1` with greedy sampling gives n identical answers; vLLM refuses it.

`max_tokens` defaults to 16 as in vLLM's `SamplingParams` (so `LLM.generate` too); None, as there,
means the rest of the context (what vLLM's server does when a request omits max_tokens). As vLLM does,
0 < temperature < 0.01 is raised to 0.01 (not made greedy), top_k -1 is stored as 0 and seed -1 as
None; logprobs above 20 (vLLM's default max_logprobs) are refused.

The Sampler follows the order of vLLM's V1 sampler, each step one tensor operation over the batch
(no per-request loop over the vocabulary):

1. min_tokens: EOS and `stop_token_ids` are masked (-inf) while a row has fewer than min_tokens
   output tokens; `logit_bias` is added.
2. Penalties: repetition (prompt and output tokens: positive logits divided by it, negative ones
   multiplied), then frequency (times the count in the output) and presence (once per token in the
   output) subtracted, as OpenAI defines them.
3. Greedy rows (temperature 0) take the argmax here.
4. The other rows: divided by temperature, cut by min_p (tokens below min_p x the top probability),
   then top-k, then top-p (the smallest set of most likely tokens whose mass reaches top_p), and drawn
   by inverse CDF from one uniform number of the row's own `torch.Generator`, so a seeded request
   draws the same tokens whatever else shares its batch and on any device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

GREEDY_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS: a temperature below it is greedy
MIN_TEMPERATURE = 1e-2  # vLLM's _MAX_TEMP: 0 < temperature < 0.01 is raised to 0.01 (no inf/nan)
MAX_TEMPERATURE = 2.0  # vLLM's and OpenAI's upper limit
MAX_N = 16384  # vLLM's default VLLM_MAX_N_SEQUENCES
MAX_LOGPROBS = 20  # vLLM's default max_logprobs (-1, the whole vocabulary, counts as vocab_size)
MAX_LOGIT_BIAS = 100.0  # OpenAI's limit on a logit_bias value
MAX_PENALTY = 2.0  # presence and frequency penalties lie in [-2, 2]
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of generation. Fields and meanings are vLLM's (see the module docstring
    for the defaults that differ); every value is checked here."""

    max_tokens: int | None = 16  # None: until the context (max_model_len) is full
    temperature: float = 0.0  # 0: greedy; 0 < t < 0.01 becomes 0.01; at most 2
    top_k: int = 0  # 0 or -1: off (-1 is stored as 0)
    top_p: float = 1.0  # in (0, 1]; 1: off
    min_p: float = 0.0  # in [0, 1]; 0: off
    seed: int | None = None  # None (or -1): drawn from the engine's seeded generator
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1  # completions of the prompt; the prompt is prefilled once and its KV copied
    stop: tuple[str, ...] = ()  # stop strings (a str or a list is accepted)
    include_stop_str_in_output: bool = False
    min_tokens: int = 0  # no EOS / stop token / stop string before this many output tokens
    presence_penalty: float = 0.0  # in [-2, 2]
    frequency_penalty: float = 0.0  # in [-2, 2]
    repetition_penalty: float = 1.0  # > 0; 1: off
    logit_bias: Mapping[int, float] | None = field(default=None, hash=False)  # token id -> bias in [-100, 100]
    logprobs: int | None = None  # top logprobs per output token (plus the sampled token's); -1: all
    prompt_logprobs: int | None = None  # the same for every prompt token after the first

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise ValueError(f"max_tokens={self.max_tokens!r} must be None or an integer >= 1")
        t = self.temperature
        if not _is_number(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise ValueError(f"temperature={t!r} must be a finite number in [0, {MAX_TEMPERATURE}]")
        if 0 < t < MIN_TEMPERATURE:
            set_("temperature", MIN_TEMPERATURE)  # as vLLM: 1/t would overflow the logits
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 1, or 0 or -1 (off)")
        set_("top_k", max(self.top_k, 0))
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must lie in (0, 1]")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p={self.min_p!r} must lie in [0, 1]")
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise ValueError(f"n={self.n!r} must be an integer in [1, {MAX_N}]")
        if self.seed is not None:
            if not _is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX - (self.n - 1):
                raise ValueError(
                    f"seed={self.seed!r} must be None or an integer in [{SEED_MIN}, {SEED_MAX}] "
                    f"(with n={self.n}, seed + n - 1 must fit too: sample i uses seed + i)"
                )
            if self.seed == -1:
                set_("seed", None)  # vLLM's "no seed"
        set_("stop_token_ids", self._token_list("stop_token_ids", self.stop_token_ids))
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop={self.stop!r} must be a non-empty string or a list of non-empty strings")
        set_("stop", tuple(dict.fromkeys(stop)))
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a bool")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens={self.min_tokens!r} must be an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens!r} must be at most max_tokens={self.max_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -MAX_PENALTY <= value <= MAX_PENALTY:
                raise ValueError(f"{name}={value!r} must be a number in [-{MAX_PENALTY}, {MAX_PENALTY}]")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty!r} must be a finite number > 0")
        set_("logit_bias", self._checked_logit_bias())
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not -1 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name}={value!r} must be None, -1 (all) or an integer in [0, {MAX_LOGPROBS}]")

    @staticmethod
    def _token_list(name: str, value) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r} must be a list of token ids")
        for token in value:
            if not _is_int(token) or token < 0:
                raise ValueError(f"{name} contains {token!r}; token ids are integers >= 0")
        return tuple(dict.fromkeys(value))

    def _checked_logit_bias(self) -> dict[int, float] | None:
        if self.logit_bias is None:
            return None
        if not isinstance(self.logit_bias, Mapping):
            raise ValueError(f"logit_bias={self.logit_bias!r} must be a mapping of token id to bias")
        checked: dict[int, float] = {}
        for key, bias in self.logit_bias.items():
            token = key
            if isinstance(key, str) and key.strip().lstrip("-").isdigit():
                token = int(key)  # JSON object keys are strings, as OpenAI's API sends them
            if not _is_int(token) or token < 0:
                raise ValueError(f"logit_bias key {key!r} is not a token id (an integer >= 0)")
            if not _is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"logit_bias value {bias!r} for token {token} must be a number in "
                    f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]"
                )
            checked[token] = float(bias)
        return checked

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ValueError if a token id lies outside the model's vocabulary, or logprobs=-1 asks for
        more than MAX_LOGPROBS entries."""
        for token in self.stop_token_ids:
            if token >= vocab_size:
                raise ValueError(f"stop token id {token} is outside the vocabulary (size {vocab_size})")
        for token in self.logit_bias or ():
            if token >= vocab_size:
                raise ValueError(f"logit_bias token id {token} is outside the vocabulary (size {vocab_size})")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) == -1 and vocab_size > MAX_LOGPROBS:
                raise ValueError(
                    f"{name}=-1 asks for all {vocab_size} tokens, "
                    f"more than the limit of {MAX_LOGPROBS} (vLLM's max_logprobs)"
                )


@dataclass(frozen=True)
class TokenHistory:
    """What a row's penalties and min_tokens read: the request's tokens so far and its EOS ids."""

    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    eos_token_ids: Sequence[int] = ()


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Sets logits [B, V] outside each row's top-k (k in [1, V]), then outside its top-p nucleus, to -inf.

    The nucleus is the smallest set of most likely tokens (after top-k) whose probability reaches
    top_p: a token is dropped when the tokens ranked above it already hold top_p. The best one stays.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = (mass_before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_penalties(
    logits: torch.Tensor, histories: Sequence[TokenHistory], params: Sequence[SamplingParams]
) -> torch.Tensor:
    """vLLM's penalties on logits [B, V] (in place): repetition over prompt and output tokens, then
    frequency and presence over output tokens."""
    batch, vocab = logits.shape
    device = logits.device
    presence = torch.tensor([p.presence_penalty for p in params], device=device)
    frequency = torch.tensor([p.frequency_penalty for p in params], device=device)
    repetition = torch.tensor([p.repetition_penalty for p in params], device=device)
    output_counts = _token_counts([h.output_token_ids for h in histories], vocab, device)
    seen = (_token_counts([h.prompt_token_ids for h in histories], vocab, device) > 0) | (output_counts > 0)
    factor = torch.where(seen, repetition.unsqueeze(1), torch.ones((), device=device))
    logits = torch.where(logits > 0, logits / factor, logits * factor)
    logits -= frequency.unsqueeze(1) * output_counts
    logits -= presence.unsqueeze(1) * (output_counts > 0)
    return logits


def _token_counts(token_lists: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[B, V] float counts of each token id in each row's list (one scatter over a padded batch)."""
    width = max((len(t) for t in token_lists), default=0)
    ids = torch.full((len(token_lists), width), vocab, dtype=torch.long)  # padding goes to a spare column
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    ids.clamp_(0, vocab)  # an id outside the vocabulary counts for nothing (the spare column)
    counts = torch.zeros((len(token_lists), vocab + 1), device=device)
    counts.scatter_add_(1, ids.to(device), torch.ones(ids.shape, device=device))
    return counts[:, :vocab]


class Sampler:
    """Picks one next token per row of a logits batch (see the module docstring for the order)."""

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        histories: list[TokenHistory] | None = None,
    ) -> list[int]:
        """logits [B, V]; params and CPU generators one per row (None: torch's global generator);
        histories one per row, needed when a row has penalties or min_tokens."""
        if logits.dim() != 2 or logits.shape[0] != len(params) or len(params) != len(generators):
            raise ValueError(
                f"logits {tuple(logits.shape)}, {len(params)} params and {len(generators)} generators "
                "must agree on the batch size"
            )
        if histories is not None and len(histories) != len(params):
            raise ValueError(f"{len(histories)} histories for a batch of {len(params)} rows")
        logits = self.process(logits.float(), params, histories)
        tokens = logits.argmax(dim=-1)
        random_rows = [row for row, p in enumerate(params) if not p.greedy]
        if random_rows:
            chosen = [params[row] for row in random_rows]
            tokens[random_rows] = self._draw(
                logits[random_rows], chosen, [generators[row] for row in random_rows]
            )
        return tokens.tolist()

    def process(
        self, logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[TokenHistory] | None
    ) -> torch.Tensor:
        """Steps 1-2 on fp32 logits [B, V]: min_tokens masking, logit_bias, penalties (a new tensor)."""
        logits = logits.clone()
        vocab = logits.shape[1]
        needs_history = [row for row, p in enumerate(params) if p.min_tokens or p.has_penalties]
        if needs_history and histories is None:
            raise ValueError(f"rows {needs_history} have penalties or min_tokens and need their token histories")
        rows_history: Sequence[TokenHistory] = histories or ()
        masked_rows, masked_tokens, bias_rows, bias_tokens, bias_values = [], [], [], [], []
        for row, p in enumerate(params):
            if p.min_tokens and len(rows_history[row].output_token_ids) < p.min_tokens:
                stops = set(p.stop_token_ids) | set(rows_history[row].eos_token_ids)
                masked_rows += [row] * len(stops)
                masked_tokens += sorted(stops)
            for token, bias in (p.logit_bias or {}).items():
                bias_rows.append(row)
                bias_tokens.append(token)
                bias_values.append(bias)
        if any(t >= vocab for t in masked_tokens + bias_tokens):
            raise ValueError(f"a stop, EOS or logit_bias token id lies outside the vocabulary 0..{vocab - 1}")
        device = logits.device
        if bias_rows:
            index = (torch.tensor(bias_rows, device=device), torch.tensor(bias_tokens, device=device))
            logits.index_put_(index, torch.tensor(bias_values, device=device), accumulate=True)
        if masked_rows:
            index = (torch.tensor(masked_rows, device=device), torch.tensor(masked_tokens, device=device))
            logits.index_put_(index, torch.tensor(float("-inf"), device=device))
        penalised = [row for row, p in enumerate(params) if p.has_penalties]
        if penalised:
            rows = torch.tensor(penalised, device=device)
            logits[rows] = apply_penalties(
                logits[rows], [rows_history[row] for row in penalised], [params[row] for row in penalised]
            )
        return logits

    @staticmethod
    def _draw(
        logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
    ) -> torch.Tensor:
        """Step 4 for rows that sample: temperature, min_p, top-k, top-p, then one draw per row."""
        device, vocab = logits.device, logits.shape[1]
        temperature = torch.tensor([p.temperature for p in params], device=device)
        logits = logits / temperature.unsqueeze(1)
        min_p = torch.tensor([p.min_p for p in params], device=device)
        if bool((min_p > 0).any()):
            probs = torch.softmax(logits, dim=-1)
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
        top_p = torch.tensor([p.top_p for p in params], device=device)
        if bool((top_k < vocab).any() or (top_p < 1).any()):
            logits = apply_top_k_top_p(logits, top_k, top_p)
        # Inverse CDF: the first token whose cumulative probability exceeds u x total. One uniform
        # number per row from the row's own generator, drawn on the CPU: batch- and device-independent.
        uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
        cdf = torch.cumsum(torch.softmax(logits, dim=-1).double(), dim=-1)
        targets = (uniforms.to(device) * cdf[:, -1]).unsqueeze(1)
        tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
        # u x total rounds up to total only for u within 2^-53 of 1: take the most likely token then.
        return torch.where(tokens < vocab, tokens, logits.argmax(dim=-1))
