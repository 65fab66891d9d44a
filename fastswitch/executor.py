"""The engine's executor seam: what runs a batch, and the real one over the model.

`Executor` is what the engine needs to run batches: `execute` a batch of `ScheduledChunk`s and return
one sampled token per chunk (None for a prefill piece that does not reach the end of its sequence),
`now()` (the clock every time in the metrics comes from) and `release` (per-request state). An
executor that also follows `ForkingExecutor` (has `fork`) serves SamplingParams(n > 1): the prompt is
prefilled once, its KV blocks copied to the other samples and their first tokens sampled from the
same logits. The engine refuses n > 1 on an executor without it.

- `ModelExecutor`: ModelRunner forward over the paged cache, then Sampler, on the wall clock; it also
  fills the requests' logprob lists. It forks.
- `fastswitch.parallel.TensorParallelExecutor`: the same over a model split into ranks. It forks.
- `fastswitch.sim.executor.VirtualExecutor`: prices a batch with the cost model on a virtual clock
  (optionally running a backing ModelExecutor). It does not fork.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import torch

from fastswitch.models.logprobs import token_logprobs
from fastswitch.models.runner import ModelRunner
from fastswitch.models.sampling import Sampler, TokenHistory
from fastswitch.sched.request import Request, ScheduledChunk


class RequestsFailed(Exception):
    """Raised by an executor when some requests of a batch could not be sampled: `sampled` holds the
    other chunks' tokens (None for the failed ones), `errors` each failed request's message."""

    def __init__(self, sampled: list[int | None], errors: dict[str, str]) -> None:
        super().__init__(f"{len(errors)} requests failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.sampled, self.errors = sampled, errors


class Executor(Protocol):
    """What the engine needs to run batches."""

    def execute(self, chunks: list[ScheduledChunk]) -> list[int | None]:
        """Runs one batch; returns the sampled next token of every chunk with `sample` set, else None.
        May raise RequestsFailed when only some requests failed."""

    def now(self) -> float:
        """The clock of the run (seconds)."""

    def release(self, request_id: str) -> None:
        """Forgets per-request state (sampling generators) of a finished request."""


@runtime_checkable
class ForkingExecutor(Executor, Protocol):
    """An executor that serves SamplingParams(n > 1) (checked with isinstance by the engine)."""

    def fork(self, chunk_index: int, forks: list[Request], src_blocks: list[int], dst_blocks: list[int]) -> list[int]:
        """Copies KV blocks src -> dst (the prompt's, for the forks that got device blocks) and samples
        each fork's first token from the logits the last `execute` gave chunk chunk_index (the parent's
        prefill), with the fork's own params and generator."""


class ModelExecutor:
    """The real executor: ModelRunner forward over the paged cache, then Sampler, on the wall clock."""

    def __init__(self, runner: ModelRunner, sampler: Sampler, seed: int = 0) -> None:
        self.runner = runner
        self.sampler = sampler
        self._default_generator = torch.Generator().manual_seed(seed)  # requests without their own seed
        self._generators: dict[str, torch.Generator] = {}

    def now(self) -> float:
        return time.monotonic()

    def execute(self, chunks: list[ScheduledChunk]) -> list[int | None]:
        logits = self._forward(chunks)
        sampled: list[int | None] = [None] * len(chunks)
        errors: dict[str, str] = {}
        rows: list[int] = []
        generators: list[torch.Generator] = []
        for i, chunk in enumerate(chunks):
            if chunk.sample:
                try:
                    generators.append(self._generator(chunk.request))
                except Exception as exc:  # e.g. a seed torch cannot take: this request alone fails
                    errors[chunk.request.request_id] = _describe(exc)
                    continue
                rows.append(i)
        if rows:
            params = [chunks[i].request.params for i in rows]
            histories = [_history(chunks[i].request) for i in rows]
            saved = {id(g): (g, g.get_state()) for g in generators}
            batch_generators: list[torch.Generator | None] = list(generators)
            tokens: list[int | None]
            try:
                tokens = list(self.sampler.sample(logits[rows], params, batch_generators, histories))
            except Exception:
                # Find the rows that fail, one at a time, from the generators' states before the batch:
                # the rows that succeed draw exactly what the batch would have drawn for them.
                for generator, state in saved.values():
                    generator.set_state(state)
                tokens = []
                for i, p, generator, history in zip(rows, params, generators, histories):
                    try:
                        tokens += self.sampler.sample(logits[i : i + 1], [p], [generator], [history])
                    except Exception as exc:
                        errors[chunks[i].request.request_id] = _describe(exc)
                        tokens.append(None)
            for row, token in zip(rows, tokens):
                sampled[row] = token
            _record_logprobs([chunks[i].request for i in rows], logits[rows], tokens)
        if errors:
            raise RequestsFailed(sampled, errors)
        return sampled

    def release(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def fork(self, chunk_index: int, forks: list[Request], src_blocks: list[int], dst_blocks: list[int]) -> list[int]:
        """ForkingExecutor.fork: SamplingParams.n > 1 over this executor's cache and sampler."""
        self.runner.kv_cache.copy_blocks(src_blocks, dst_blocks)
        logits = self._last_logits[chunk_index].expand(len(forks), -1)
        generators: list[torch.Generator | None] = [self._generator(r) for r in forks]
        tokens = self.sampler.sample(logits, [r.params for r in forks], generators, [_history(r) for r in forks])
        _record_logprobs(forks, logits, list(tokens))
        return tokens

    def _forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """The last-token logits of every chunk; records prompt logprobs for the chunks that want them."""
        wanted = [i for i, c in enumerate(chunks) if _prompt_rows(c)]
        logits, every_token = self.runner.forward_every_token(chunks, wanted)
        for i in wanted:
            request, rows = chunks[i].request, _prompt_rows(chunks[i])
            assert request.prompt_logprobs is not None  # _prompt_rows is empty without them
            positions = [chunks[i].num_cached + row + 1 for row in rows]  # row j predicts the next token
            request.prompt_logprobs += token_logprobs(
                every_token[i][rows], [request.prompt_token_ids[p] for p in positions],
                [request.params.prompt_logprobs] * len(rows),
            )  # fmt: skip
        self._last_logits = logits
        return logits

    def _generator(self, request: Request) -> torch.Generator:
        if request.params.seed is None:
            return self._default_generator
        if request.request_id not in self._generators:
            self._generators[request.request_id] = torch.Generator().manual_seed(request.params.seed)
        return self._generators[request.request_id]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _history(request: Request) -> TokenHistory:
    return TokenHistory(request.prompt_token_ids, request.output_token_ids, request.eos_token_ids)


def _prompt_rows(chunk: ScheduledChunk) -> list[int]:
    """Rows of chunk whose logits give a prompt logprob still missing (prompt_logprobs holds
    positions 0 .. len - 1; a recompute runs the prompt again and finds them all there)."""
    request = chunk.request
    if request.prompt_logprobs is None:
        return []
    first = len(request.prompt_logprobs) - chunk.num_cached - 1
    last = min(len(chunk.token_ids), request.num_prompt_tokens - chunk.num_cached - 1)
    return list(range(max(first, 0), last))


def _record_logprobs(requests: list[Request], logits: torch.Tensor, tokens: list[int | None]) -> None:
    """Appends each sampled token's logprobs (SamplingParams.logprobs) to its request."""
    wanted = [(i, r.logprobs, t) for i, (r, t) in enumerate(zip(requests, tokens))
              if r.logprobs is not None and t is not None]  # fmt: skip
    rows = [i for i, _, _ in wanted]
    entries = token_logprobs(logits[rows], [t for _, _, t in wanted], [requests[i].params.logprobs for i in rows])
    for (_, logprobs, _), entry in zip(wanted, entries):
        logprobs.append(entry)
