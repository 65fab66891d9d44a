"""A multi-turn conversation: turns that append to one KV context.

Every turn is a request whose prompt is the whole conversation so far (earlier prompts and answers)
plus the new message, with the conversation's `seq_id` as its KV sequence id and `keep_kv=True`. When a
turn finishes its KV stays behind (on the device until memory is needed, then swapped to the host
or dropped), so the next turn computes only its new tokens, and with `kv_reuse` a context that is
swapped out again copies only the blocks added since its host copy was made.

The handle talks to anything with the engine's `add_request`, `abort` and `release_context`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class Conversation:
    def __init__(self, engine: Any, seq_id: Hashable, client_id: Hashable = None, priority: int = 0) -> None:
        """seq_id: the conversation's KV sequence id, shared by all its turns (and its client id
        unless client_id is given)."""
        self.engine = engine
        self.seq_id = seq_id
        self.client_id = seq_id if client_id is None else client_id
        self.priority = priority
        self.turns: list = []  # the RequestOutput of every turn, in order
        self.closed = False

    @property
    def token_ids(self) -> list[int]:
        """The context so far: the last turn's prompt (all earlier turns) and its answer."""
        if not self.turns:
            return []
        last = self.turns[-1]
        return list(last.prompt_token_ids) + list(last.token_ids)

    @property
    def busy(self) -> bool:
        return bool(self.turns) and not self.turns[-1].finished

    def submit(
        self,
        new_token_ids: list[int],
        params=None,
        prompt: str | None = None,
        priority: int | None = None,
        request_id: str | None = None,
    ):
        """Queues the next turn (new_token_ids appended to the context); returns its RequestOutput."""
        if self.closed:
            raise ValueError(f"conversation {self.seq_id!r} is closed")
        if self.busy:
            raise ValueError(
                f"conversation {self.seq_id!r} is still answering turn {len(self.turns)}; "
                "step the engine until it finishes"
            )
        if not new_token_ids:
            raise ValueError("a turn needs at least one new token")
        output = self.engine.add_request(
            self.token_ids + list(new_token_ids),
            params,
            priority=self.priority if priority is None else priority,
            client_id=self.client_id,
            prompt=prompt,
            seq_id=self.seq_id,
            keep_kv=True,
            request_id=request_id,
        )
        self.turns.append(output)
        return output

    def close(self) -> None:
        """Ends the conversation: aborts an unfinished turn and frees the KV kept between turns."""
        if self.closed:
            return
        if self.busy:
            self.engine.abort(self.turns[-1].request_id)
        self.engine.release_context(self.seq_id)
        self.closed = True
