"""Priority traces: each conversation's priority level as a function of time, fixed before a run.

The paper precomputes priorities offline, so every system it compares sees the same priorities.
Re-drawn per scheduler iteration (`PriorityUpdater`), they would depend on how many steps a system
takes. A `PriorityTrace` instead fixes, for every conversation (keyed by its sequence id), a level
at each instant of its life:

- the conversation starts at its start time with its first turn's level;
- re-draws come at the instants of a Poisson process of rate `update_freq / iteration_s` per
  second: the paper's per-iteration update frequency (0.04 for Llama-8B, 0.02 for Qwen-32B) read
  against a nominal iteration time, `NOMINAL_ITERATION_S` = 50 ms by default (an assumption: about
  one decode step of Llama-3-8B with a few dozen sequences on an A10, where reading the 16 GB of
  weights at 600 GB/s alone takes ~27 ms). 0.04 gives 0.8 re-draws per second, one every 1.25 s
  on average, per conversation;
- a re-draw moves the level by the pattern, exactly as the per-iteration updater does
  (`priority_patterns.next_level`): `random` draws uniformly, `markov` stays or steps to a neighbour.

Each conversation draws from its own generator, seeded by the trace's seed and its key, so its
levels are a pure function of (seed, key, start, first level, pattern, levels, rate): the same for
every system that replays the workload, whenever and in whatever order they are read. The instants
are drawn lazily, as far as a run reaches, so a slow system that runs longer reads further into the
same trace. `digest()` is the SHA-256 of the trace's canonical content: its parameters and, per
conversation, its start, its first level and its first `DIGEST_POINTS` re-draws.

`TraceReader` applies a trace to the live requests of a scheduler at each step, with the workload's
time zero at `origin` on the engine clock.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections.abc import Hashable, Iterable, Sequence

from fastswitch.sched.priority_patterns import next_level
from fastswitch.sched.request import Request

NOMINAL_ITERATION_S = 0.05  # seconds per scheduler iteration that turns an update frequency into a rate
DIGEST_POINTS = 16  # re-draws per conversation in the digest
PATTERNS = ("random", "markov")


class PriorityTrace:
    def __init__(
        self,
        sequences: Sequence[tuple[Hashable, float, int]],
        seed: int,
        pattern: str,
        num_levels: int,
        update_freq: float,
        iteration_s: float = NOMINAL_ITERATION_S,
        stay_probability: float = 0.5,
    ) -> None:
        """sequences: (key, start time in seconds, first level) of every conversation."""
        if pattern not in PATTERNS:
            raise ValueError(f"priority_pattern={pattern!r} is not one of {PATTERNS}")
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_priority_levels={num_levels!r} must be a positive integer")
        if not 0.0 < update_freq <= 1.0:
            raise ValueError(f"priority_update_freq={update_freq!r} must lie in (0, 1] for a trace")
        if not iteration_s > 0:
            raise ValueError(f"iteration_s={iteration_s!r} must be > 0")
        if not 0.0 <= stay_probability <= 1.0:
            raise ValueError(f"stay_probability={stay_probability!r} must lie in [0, 1]")
        self.seed = int(seed)
        self.pattern = pattern
        self.num_levels = num_levels
        self.update_freq = float(update_freq)
        self.iteration_s = float(iteration_s)
        self.stay_probability = float(stay_probability)
        self.rate = self.update_freq / self.iteration_s  # re-draws per second per conversation
        self._times: dict[Hashable, list[float]] = {}
        self._levels: dict[Hashable, list[int]] = {}
        self._rngs: dict[Hashable, random.Random] = {}
        for key, start, level in sequences:
            if key in self._times:
                raise ValueError(f"conversation key {key!r} appears twice in the trace")
            if isinstance(level, bool) or not isinstance(level, int) or level < 0:
                raise ValueError(f"first level {level!r} of {key!r} must be an integer >= 0")
            rng = random.Random(f"fastswitch-priority-trace:{self.seed}:{key}")
            self._rngs[key] = rng
            self._times[key] = [float(start), float(start) + rng.expovariate(self.rate)]
            self._levels[key] = [level, next_level(rng, pattern, level, num_levels, self.stay_probability)]

    def keys(self) -> list[Hashable]:
        return list(self._times)

    def index_at(self, key: Hashable, t: float) -> int | None:
        """Re-draws of key's level up to time t (0: still its first level); None for an unknown key or
        a time before its start."""
        times = self._times.get(key)
        if times is None or t < times[0]:
            return None
        self._extend(key, lambda: times[-1] <= t)
        return bisect.bisect_right(times, t) - 1

    def level_at(self, key: Hashable, t: float) -> int | None:
        index = self.index_at(key, t)
        return None if index is None else self._levels[key][index]

    def level(self, key: Hashable, index: int) -> int:
        """key's level after its index-th re-draw (drawn already by index_at)."""
        return self._levels[key][index]

    def change_points(self, key: Hashable, count: int) -> list[tuple[float, int]]:
        """(time, level) of key's start and its first count re-draws."""
        self._extend(key, lambda: len(self._times[key]) <= count + 1)
        return list(zip(self._times[key][: count + 1], self._levels[key][: count + 1]))

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical content: parameters and each conversation's first re-draws."""
        content = {
            "pattern": self.pattern, "num_levels": self.num_levels, "update_freq": self.update_freq.hex(),
            "iteration_s": self.iteration_s.hex(), "stay_probability": self.stay_probability.hex(),
            "seed": self.seed,
            "conversations": [
                [str(key), [[t.hex(), level] for t, level in self.change_points(key, DIGEST_POINTS)]]
                for key in sorted(self._times, key=str)
            ],
        }  # fmt: skip
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def _extend(self, key: Hashable, more) -> None:
        times, levels, rng = self._times[key], self._levels[key], self._rngs[key]
        while more():
            times.append(times[-1] + rng.expovariate(self.rate))
            levels.append(next_level(rng, self.pattern, levels[-1], self.num_levels, self.stay_probability))


class TraceReader:
    """Sets each live request's priority from a trace at every step. num_updates counts the readings
    that found a request past a re-draw it had not been given yet."""

    def __init__(self, trace: PriorityTrace, origin: float) -> None:
        self.trace = trace
        self.origin = origin  # the engine clock's reading at the trace's time zero
        self.num_updates = 0
        self._applied: dict[Hashable, int] = {}  # key -> the re-draw index last applied

    def apply(self, requests: Iterable[Request], now: float) -> None:
        t = now - self.origin
        for request in requests:
            index = self.trace.index_at(request.seq_id, t)
            if index is None:
                continue
            last = self._applied.get(request.seq_id, index)
            if last != index:
                self.num_updates += 1
            self._applied[request.seq_id] = index
            request.priority = self.trace.level(request.seq_id, index)
