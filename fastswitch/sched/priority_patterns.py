"""Priority updates during a run: the paper's "random" and "markov" patterns.

The paper (after Yin et al. 2024) re-draws priorities while requests run, at an "update frequency"
of 0.04 (Llama-8B) or 0.02 (Qwen-32B), without defining the patterns exactly (docs/references.md marks
this unconfirmed). This library's reading, documented here and in EngineConfig:

- `priority_update_freq` is the probability, at every scheduler iteration, that priorities are
  re-drawn. 0.04 means a re-draw every 25 iterations on average.
- Read per iteration (`PriorityUpdater`, below), a run that takes more steps sees a different
  sequence of priorities, so two systems are not compared on the same input. A workload replay
  therefore reads the same frequency as a rate in time instead and precomputes each conversation's
  levels from the workload's seed (`PriorityTrace`, sched/priority_trace.py); the per-iteration
  reading remains where no trace is given (an engine driven directly, `LLM`, the server) and as an
  option of the replay (`replay(..., priority_trace=False)`).
- `random`: a re-draw gives every live request a level drawn uniformly from
  `range(num_priority_levels)`.
- `markov`: a re-draw moves every live request's level by a birth-death chain: it stays with
  probability `stay_probability` (0.5), else moves to a neighbouring level (up or down with equal
  probability, reflected at the ends, staying put when there is a single level).

Both draw from one `random.Random(seed)`, so a run is reproducible from `EngineConfig.seed`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from fastswitch.sched.request import Request


class PriorityUpdater:
    def __init__(
        self,
        pattern: str,
        update_freq: float,
        num_levels: int,
        seed: int = 0,
        stay_probability: float = 0.5,
    ) -> None:
        if pattern not in ("random", "markov"):
            raise ValueError(f"priority_pattern={pattern!r} is not one of ('random', 'markov')")
        if not 0.0 <= update_freq <= 1.0:
            raise ValueError(f"priority_update_freq={update_freq!r} must lie in [0, 1]")
        if num_levels < 1:
            raise ValueError(f"num_priority_levels={num_levels!r} must be a positive integer")
        if not 0.0 <= stay_probability <= 1.0:
            raise ValueError(f"stay_probability={stay_probability!r} must lie in [0, 1]")
        self.pattern = pattern
        self.update_freq = update_freq
        self.num_levels = num_levels
        self.stay_probability = stay_probability
        self.rng = random.Random(seed)
        self.num_updates = 0

    def maybe_update(self, requests: Iterable[Request]) -> bool:
        """One iteration's chance of a re-draw; returns True when priorities changed."""
        if self.update_freq == 0.0 or self.rng.random() >= self.update_freq:
            return False
        # Sorted so the draw order (and hence the run) does not depend on dict or queue order.
        for request in sorted(requests, key=lambda r: r.request_id):
            request.priority = self.next_level(request.priority)
        self.num_updates += 1
        return True

    def next_level(self, level: int) -> int:
        return next_level(self.rng, self.pattern, level, self.num_levels, self.stay_probability)


def next_level(rng: random.Random, pattern: str, level: int, num_levels: int, stay_probability: float) -> int:
    """One re-draw of a level by `pattern`, from `rng` (the per-iteration updater and the trace share it)."""
    if pattern == "random":
        return rng.randrange(num_levels)
    if num_levels == 1 or rng.random() < stay_probability:
        return level
    step = rng.choice((-1, 1))
    moved = level + step
    if not 0 <= moved < num_levels:
        moved = level - step  # reflect at the ends
    # A level set from outside the range (a user's priority) is pulled back into it.
    return min(max(moved, 0), num_levels - 1)
