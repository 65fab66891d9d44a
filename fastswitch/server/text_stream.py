"""Turns a request's growing token list into text pieces for streaming, with OpenAI's `stop` strings.

The text comes from an `IncrementalDetokenizer` (fastswitch/detokenizer.py): each update decodes a
window, not the whole output, and holds back a character the next token completes.

Stop strings are matched on the text. Text that could be the start of a stop string is held back
too, so a client never receives part of a stop string it asked never to see.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastswitch.detokenizer import IncrementalDetokenizer
from fastswitch.stop_strings import StopSearch


class TextStream:
    def __init__(self, decode, stop_strings: Sequence[str] = ()) -> None:
        self.detokenizer = IncrementalDetokenizer(decode)  # decode: token ids -> text, special tokens skipped
        self.search = StopSearch(stop_strings)
        self.token_ids: list[int] = []
        self.sent = ""  # text handed out so far
        self.stopped = False  # a stop string was found: the request should end now

    def push(self, new_token_ids: list[int], finish_reason: str | None, final_text: str | None = None) -> str:
        """Adds tokens; returns the text that may be sent now. At the end (finish_reason set) it returns
        the rest. finish_reason "stop" means the last token is the stop token, which is not text.
        final_text: the engine's answer at the end, which it cut at its stop string (after it with
        include_stop_str_in_output, or later than a match seen here, before min_tokens): it wins."""
        self.token_ids.extend(new_token_ids)
        ids = self.token_ids[:-1] if finish_reason == "stop" and self.token_ids else self.token_ids
        text = self.detokenizer.update(ids, final=finish_reason is not None)
        # At the end the text may be a fresh decode (a token taken back): search all of it.
        found = self.search.first(text, restart=finish_reason is not None)
        if found is not None:
            text, self.stopped = text[: found[0]], True
        if final_text is not None:
            text = final_text
        final = finish_reason is not None or self.stopped
        if not final:
            text = text[: max(len(self.sent), len(text) - self.search.overlap)]
        # Deltas always extend what was sent; if a re-decode ever rewrote sent text (a tokenizer's
        # clean-up), the client keeps the old version rather than receiving a contradiction.
        delta = text[len(self.sent) :]
        self.sent += delta
        return delta
