"""Block allocators of the paged KV cache: block groups (FastSwitch) and one block at a time (vLLM).

Both hand out *runs* `(start, length)` of consecutive block ids. In the block-major KV layout a run is
one contiguous byte range holding every layer's K and V, so a swap moves a run in a single copy call.

- `BlockGroupAllocator` keeps its free space as sorted, coalesced runs and answers a request with as
  few runs as free space allows; a run (a group) later grows in place with `extend`.
- `BlockAllocator` reproduces vLLM 0.3.3: a LIFO free list of single blocks, every run of length 1,
  never growing in place. It exists for the `vllm` ablation preset.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Protocol

Run = tuple[int, int]  # (start, length): the blocks start, start + 1, ..., start + length - 1

PLACEMENTS = ("spread", "start", "best_fit")  # where BlockGroupAllocator puts a new group


class KVBlockAllocator(Protocol):
    """What `BlockManager` needs from an allocator."""

    num_blocks: int

    @property
    def num_free(self) -> int: ...

    def allocate(self, n: int) -> list[Run]: ...

    def extend(self, group: Run, k: int) -> bool: ...

    def room_after(self, group: Run) -> int: ...

    def free(self, groups: Iterable[Run]) -> None: ...

    def free_runs(self) -> list[Run]: ...

    def is_allocated(self, block: int) -> bool: ...


def _check_num_blocks(num_blocks: int) -> None:
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks={num_blocks!r} must be a positive integer")


def _check_request(n: int, num_free: int, num_blocks: int) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"cannot allocate n={n!r} blocks: n must be a non-negative integer")
    if n > num_free:
        raise ValueError(f"cannot allocate n={n} blocks: only num_free={num_free} of {num_blocks} are free")


def _check_owned(runs: list[Run], allocated: bytearray) -> None:
    """Raises unless every run is in range, non-empty, allocated, and no two runs overlap."""
    num_blocks = len(allocated)
    previous_end = -1
    for start, length in sorted(runs):
        if length < 1 or start < 0 or start + length > num_blocks:
            raise ValueError(f"run ({start}, {length}) is not a non-empty run inside 0..{num_blocks - 1}")
        if start < previous_end:
            raise ValueError(f"run ({start}, {length}) overlaps another run of the same call")
        previous_end = start + length
        unallocated = allocated.find(0, start, start + length)  # a C scan: groups run to hundreds of blocks
        if unallocated != -1:
            raise ValueError(f"block {unallocated} of run ({start}, {length}) is not allocated")


class BlockGroupAllocator:
    """Contiguous block groups that grow in place.

    Placement ("spread", the default): a new group goes into the largest free run, and -- when a
    live group ends right before that run -- into the middle of the run's slack rather than at its
    start. The group behind keeps half the room to grow into and the new group gets the other half;
    with many live sequences this spreads the free space evenly behind all of them, so decode growth
    (one block every `block_size` tokens) usually extends a group in place. The alternatives kept for
    comparison: "start" (start of the largest run: takes all the room of the group behind) and
    "best_fit" (start of the smallest run that fits: packs groups back to back, leaving no room).
    tests/cache/test_fragmentation.py measures all three; under a serving-like churn at ~73%
    occupancy "spread" keeps about 2 groups per live sequence where "start" needs about 11 and
    "best_fit" about 18 (one block at a time: about 28). In a nearly full pool (~96%) every free
    run is a block or two and all placements fragment alike (about 16-19 groups against 26).
    """

    def __init__(self, num_blocks: int, placement: str = "spread") -> None:
        _check_num_blocks(num_blocks)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r} is not one of {PLACEMENTS}")
        self.num_blocks = num_blocks
        self.placement = placement
        self._free_starts: list[int] = [0]  # sorted starts of the free runs
        self._free_length: dict[int, int] = {0: num_blocks}  # start -> length of each free run
        # The same runs as sorted (length, start): the largest, or the smallest that fits, is a
        # bisection away, where a scan would cost O(free runs) Python calls per allocation.
        self._by_length: list[tuple[int, int]] = [(num_blocks, 0)]
        self._allocated = bytearray(num_blocks)
        self._num_free = num_blocks

    @property
    def num_free(self) -> int:
        return self._num_free

    def free_runs(self) -> list[Run]:
        return [(start, self._free_length[start]) for start in self._free_starts]

    def is_allocated(self, block: int) -> bool:
        return bool(self._allocated[block])

    def allocate(self, n: int) -> list[Run]:
        """Returns runs holding n blocks in total, as few as free space allows."""
        _check_request(n, self._num_free, self.num_blocks)
        if n == 0:
            return []
        largest = self._by_length[-1][0]
        if largest >= n:
            # Ties go to the lowest start: (length, -1) sorts before every run of that length.
            wanted = n if self.placement == "best_fit" else largest
            run_start = self._by_length[bisect.bisect_left(self._by_length, (wanted, -1))][1]
            return [self._take(self._placement(run_start, n), n)]
        # No run is large enough: the fewest runs are the largest ones. Whole runs first, and the
        # remainder from the smallest run that holds it, returned last because a sequence grows its
        # last group and that one keeps the room after it.
        whole: list[int] = []
        remaining = n
        for length, start in reversed(self._by_length):
            if length >= remaining:
                break
            whole.append(start)
            remaining -= length
        # The smallest run that holds the remainder is never one of the whole (largest) runs.
        last = self._by_length[bisect.bisect_left(self._by_length, (remaining, -1))][1]
        runs = [self._take(start, self._free_length[start]) for start in whole]
        runs.append(self._take(self._placement(last, remaining), remaining))
        return runs

    def room_after(self, group: Run) -> int:
        """Free blocks directly after the group: how far it can grow in place."""
        start, length = group
        return self._free_length.get(start + length, 0)

    def extend(self, group: Run, k: int) -> bool:
        """Grows the group in place by k blocks when the k blocks after it are free.

        True: blocks start + length .. start + length + k - 1 now belong to the caller, and the group
        is (start, length + k). False: nothing changed.
        """
        _check_owned([group], self._allocated)
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"cannot extend by k={k!r} blocks: k must be a non-negative integer")
        if k == 0:
            return True
        if self.room_after(group) < k:
            return False
        self._take(group[0] + group[1], k)
        return True

    def free(self, groups: Iterable[Run]) -> None:
        """Returns runs to the free space. Any run of allocated blocks may be freed, also part of a
        group; freeing a block twice, or one never allocated, raises before anything changes."""
        runs = list(groups)
        _check_owned(runs, self._allocated)
        for start, length in runs:
            self._allocated[start : start + length] = bytes(length)
            self._num_free += length
            self._insert_free(start, length)

    def _placement(self, run_start: int, n: int) -> int:
        # run_start == 0: no group behind this run, so all the slack is room for the new group.
        if self.placement != "spread" or run_start == 0:
            return run_start
        return run_start + (self._free_length[run_start] - n) // 2

    def _take(self, start: int, n: int) -> Run:
        """Marks blocks start .. start + n - 1, which lie in one free run, as allocated."""
        i = bisect.bisect_right(self._free_starts, start) - 1
        run_start = self._free_starts[i]
        run_end = run_start + self._free_length[run_start]
        assert run_start <= start and start + n <= run_end, "placement outside its free run"
        self._remove_run(run_start)
        if start > run_start:
            self._add_run(run_start, start - run_start)
        if start + n < run_end:
            self._add_run(start + n, run_end - start - n)
        self._allocated[start : start + n] = b"\x01" * n
        self._num_free -= n
        return (start, n)

    def _insert_free(self, start: int, length: int) -> None:
        i = bisect.bisect_left(self._free_starts, start)
        if i > 0:
            before = self._free_starts[i - 1]
            if before + self._free_length[before] == start:
                start, length = before, length + self._remove_run(before)
        after = start + length
        if after in self._free_length:
            length += self._remove_run(after)
        self._add_run(start, length)

    def _add_run(self, start: int, length: int) -> None:
        bisect.insort(self._free_starts, start)
        bisect.insort(self._by_length, (length, start))
        self._free_length[start] = length

    def _remove_run(self, start: int) -> int:
        """Forgets the free run at start; returns its length."""
        length = self._free_length.pop(start)
        del self._free_starts[bisect.bisect_left(self._free_starts, start)]
        del self._by_length[bisect.bisect_left(self._by_length, (length, start))]
        return length


class BlockAllocator:
    """vLLM 0.3.3's allocator: single blocks from a LIFO free list; groups never grow in place.

    Every run it hands out has length 1, so a sequence of n blocks is n groups and a swap of it is
    n copies per layer per K/V, as in vLLM.
    """

    def __init__(self, num_blocks: int) -> None:
        _check_num_blocks(num_blocks)
        self.num_blocks = num_blocks
        # Reversed so that a fresh allocator hands out 0, 1, 2, ... like vLLM's pop() from the end.
        self._free_list: list[int] = list(range(num_blocks - 1, -1, -1))
        self._allocated = bytearray(num_blocks)

    @property
    def num_free(self) -> int:
        return len(self._free_list)

    def free_runs(self) -> list[Run]:
        runs: list[Run] = []
        for block in sorted(self._free_list):
            if runs and runs[-1][0] + runs[-1][1] == block:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((block, 1))
        return runs

    def is_allocated(self, block: int) -> bool:
        return bool(self._allocated[block])

    def allocate(self, n: int) -> list[Run]:
        _check_request(n, self.num_free, self.num_blocks)
        runs = []
        for _ in range(n):
            block = self._free_list.pop()
            self._allocated[block] = 1
            runs.append((block, 1))
        return runs

    def room_after(self, group: Run) -> int:
        return 0

    def extend(self, group: Run, k: int) -> bool:
        """Grows only by nothing: a free list knows no neighbours, so growth is a new block."""
        _check_owned([group], self._allocated)
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"cannot extend by k={k!r} blocks: k must be a non-negative integer")
        return k == 0

    def free(self, groups: Iterable[Run]) -> None:
        runs = list(groups)
        _check_owned(runs, self._allocated)
        for start, length in runs:
            for block in range(start, start + length):
                self._allocated[block] = 0
                self._free_list.append(block)
