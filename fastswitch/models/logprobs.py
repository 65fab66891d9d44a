"""Log probabilities of tokens, as vLLM returns them (`SamplingParams.logprobs` / `prompt_logprobs`).

They come from a log-softmax of the model's own logits, before any sampling transformation
(logit_bias, penalties, temperature, top-k/top-p): vLLM's V1 engine returns these "raw_logprobs" by
default (its `logprobs_mode`; the V0 engine returned the processed distribution instead).

Per position a dict {token id: Logprob}: the token that was sampled (or, for the prompt, the token
that follows) first, then the `k` most likely tokens, so k or k + 1 entries. `rank` is the token's
place in the distribution counted as vLLM does: the number of tokens at least as likely (1 for the
most likely). A prompt's first token has no logprob (None in its place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Logprob:
    logprob: float
    rank: int


TokenLogprobs = dict[int, Logprob]


def token_logprobs(logits: torch.Tensor, token_ids: list[int], num_top: list[int]) -> list[TokenLogprobs]:
    """One dict per row of logits [N, V]: token_ids[i]'s logprob and rank, then the num_top[i] most
    likely tokens (-1: all of them)."""
    if logits.dim() != 2 or not logits.shape[0] == len(token_ids) == len(num_top):
        raise ValueError(f"logits {tuple(logits.shape)}, {len(token_ids)} tokens and {len(num_top)} counts disagree")
    if not token_ids:
        return []
    vocab = logits.shape[1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, device=logprobs.device).unsqueeze(1)
    chosen = logprobs.gather(1, ids)
    ranks = (logprobs >= chosen).sum(dim=-1).tolist()
    counts = [vocab if k == -1 else min(k, vocab) for k in num_top]
    widest = max(counts)
    top_tensors = logprobs.topk(widest, dim=-1) if widest else (logprobs[:, :0], logprobs[:, :0].long())
    top_values, top_ids = top_tensors[0].tolist(), top_tensors[1].tolist()
    result = []
    for row, (token, value, rank, count) in enumerate(zip(token_ids, chosen.squeeze(1).tolist(), ranks, counts)):
        entry = {token: Logprob(value, rank)}
        for place, (top_id, top_value) in enumerate(zip(top_ids[row][:count], top_values[row][:count])):
            entry.setdefault(top_id, Logprob(top_value, place + 1))
        result.append(entry)
    return result
