"""Where each sequence's KV lives, and its device blocks.

One `SequenceKV` record per sequence that holds KV: on the device or on the host, the key of its
device blocks, the tokens its host copy holds, and the copy of it in flight, if any. The
`SequenceTable` keeps the records and makes every device allocation of a sequence (a new sequence,
its growth, a fork, the blocks a swap-in lands in); `SwapManager` (swap_manager.py) only moves
sequences between the pools and marks the moves here.

Device blocks are keyed in the device `BlockManager` by a *stay*, (seq_id, epoch): a sequence that
comes back to the device while blocks of its previous stay still await a copy gets a fresh stay,
so the two never mix.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from fastswitch.cache.block_manager import BlockManager
from fastswitch.cache.copy_engine import CopyHandle
from fastswitch.sched.kv_space import KVLocation

Stay = tuple[Hashable, int]  # (seq_id, epoch): the key of one stay's blocks in the device BlockManager


@dataclass
class SequenceKV:
    seq_id: Hashable
    location: Literal["device", "host"]
    stay: Stay | None = None  # its current device blocks; None while on the host
    num_tokens: int = 0  # tokens the host copy holds, set at swap-out
    in_flight: CopyHandle | None = None  # a copy of its KV (swap-out or swap-in) not yet retired


class SequenceTable:
    def __init__(self, device: BlockManager) -> None:
        """device: the device pool's BlockManager, allocated from here only."""
        self.device = device
        self._records: dict[Hashable, SequenceKV] = {}
        self._epoch = 0

    def record(self, seq_id: Hashable) -> SequenceKV:
        entry = self._records.get(seq_id)
        if entry is None:
            raise ValueError(f"unknown sequence {seq_id!r}: it holds no KV")
        return entry

    # ---- reads --------------------------------------------------------------------------------

    def location(self, seq_id: Hashable) -> KVLocation:
        entry = self._records.get(seq_id)
        return "none" if entry is None else entry.location

    def is_ready(self, seq_id: Hashable) -> bool:
        entry = self._records.get(seq_id)
        return entry is not None and entry.in_flight is None

    def num_blocks_of(self, seq_id: Hashable) -> int:
        """Blocks seq_id holds where its KV lives (device and host blocks are of one size)."""
        entry = self.record(seq_id)
        if entry.stay is not None:
            return self.device.num_blocks_of(entry.stay)
        return self.device.blocks_for_tokens(entry.num_tokens)

    def device_blocks_needed(self, seq_id: Hashable, num_tokens: int) -> int:
        entry = self._records.get(seq_id)
        if entry is not None and entry.stay is not None:
            return self.device.blocks_needed(entry.stay, num_tokens)
        return self.device.blocks_for_tokens(num_tokens)

    def block_table(self, seq_id: Hashable) -> list[int]:
        """seq_id's device blocks in logical order."""
        entry = self.record(seq_id)
        if entry.stay is None:
            raise ValueError(f"sequence {seq_id!r} is not on the device (it is on the {entry.location})")
        return self.device.block_table(entry.stay)

    # ---- device allocation ----------------------------------------------------------------------

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """Grows seq_id's device KV to num_tokens tokens (a new sequence starts a stay); returns its blocks."""
        entry = self._records.get(seq_id)
        if entry is None:
            needed = self.device.blocks_for_tokens(num_tokens)
            if needed > self.device.num_free:
                raise ValueError(
                    f"sequence {seq_id!r} needs {needed} blocks for {num_tokens} tokens, "
                    f"only {self.device.num_free} free"
                )
            entry = self._records[seq_id] = SequenceKV(seq_id, "device", stay=self._new_stay(seq_id))
        elif entry.stay is None or entry.in_flight is not None:
            raise ValueError(f"sequence {seq_id!r} is not ready on the device (location={entry.location})")
        self.device.ensure_capacity(entry.stay, num_tokens)
        return self.device.block_table(entry.stay)

    def fork(self, parent: Hashable, child: Hashable, num_tokens: int) -> tuple[list[int], list[int]] | None:
        """Gives child, a new sequence, device blocks for parent's first num_tokens tokens (parent must
        be on the device, ready). Returns (parent's blocks, child's blocks) for the caller to copy
        block for block, or None, changing nothing, when too few device blocks are free."""
        entry = self.record(parent)
        if entry.stay is None or entry.in_flight is not None:
            raise ValueError(
                f"cannot fork {parent!r}: location={entry.location}, copy in flight={entry.in_flight is not None}"
            )
        if child in self._records:
            raise ValueError(f"cannot fork into {child!r}: it already holds KV")
        needed = self.device.blocks_for_tokens(num_tokens)
        held = self.device.num_blocks_of(entry.stay)
        if needed > held:
            raise ValueError(f"{parent!r} holds {held} blocks, fewer than {num_tokens} tokens need")
        if needed > self.device.num_free:
            return None
        stay = self._new_stay(child)
        self.device.ensure_capacity(stay, num_tokens)
        self._records[child] = SequenceKV(child, "device", stay=stay)
        return self.device.block_table(entry.stay)[:needed], self.device.block_table(stay)

    def enter_device(self, entry: SequenceKV) -> list[int]:
        """Starts a new stay of a sequence on the host with device blocks for its host copy's tokens
        (what its swap-in lands in); returns them. Raises, changing nothing, when too few are free."""
        needed = self.device.blocks_for_tokens(entry.num_tokens)
        if needed > self.device.num_free:
            raise ValueError(
                f"swap-in of {entry.seq_id!r} needs {needed} device blocks, only {self.device.num_free} free"
            )
        entry.stay = self._new_stay(entry.seq_id)
        entry.location = "device"
        self.device.ensure_capacity(entry.stay, entry.num_tokens)
        return self.device.block_table(entry.stay)

    def leave_device(self, entry: SequenceKV, num_tokens: int) -> Stay:
        """Marks a sequence on the host with a copy of num_tokens tokens; returns the stay it left,
        whose blocks the caller frees once the copy out of them is done."""
        if entry.stay is None:
            raise ValueError(f"sequence {entry.seq_id!r} is not on the device")
        stay = entry.stay
        entry.location, entry.stay, entry.num_tokens = "host", None, num_tokens
        return stay

    def free_stay(self, stay: Stay) -> None:
        self.device.free(stay)

    def remove(self, seq_id: Hashable) -> SequenceKV | None:
        """Forgets seq_id's record (its blocks are the caller's to free); None when it had none."""
        return self._records.pop(seq_id, None)

    def _new_stay(self, seq_id: Hashable) -> Stay:
        self._epoch += 1
        return (seq_id, self._epoch)
