"""Turns a request's growing token list into text pieces for streaming, with OpenAI's `stop` strings.

Decoding token by token is wrong for byte-level vocabularies: one character may span tokens (the
first half decodes to U+FFFD), and a tokenizer may merge spaces differently once more tokens
follow. Decoding the whole output again on each update is right but costs O(length) per token, on
the server's event loop. So, as vLLM does, each update decodes a window: the tokens since the last
complete piece, once with and once without the new ones; the difference is the new text, held
back while it ends in U+FFFD (a character the next token completes). The window restarts after
each piece, so an update costs O(window), not O(output).

Stop strings are matched on the text. Text that could be the start of a stop string is held back
too, so a client never receives part of a stop string it asked never to see.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastswitch.stop_strings import find_stop

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    def __init__(self, decode, stop_strings: Sequence[str] = ()) -> None:
        self._decode = decode  # token ids -> text, special tokens skipped
        self.stop_strings = list(stop_strings)
        self.token_ids: list[int] = []
        self.text = ""  # the output decoded so far (up to token _read)
        self.sent = ""  # text handed out so far
        self.stopped = False  # a stop string was found: the request should end now
        self._prefix = 0  # the window: tokens [_prefix, _read) decoded to the last piece of self.text
        self._read = 0

    @property
    def holdback(self) -> int:
        return max((len(s) for s in self.stop_strings), default=1) - 1

    def push(self, new_token_ids: list[int], finish_reason: str | None, final_text: str | None = None) -> str:
        """Adds tokens; returns the text that may be sent now. At the end (finish_reason set) it returns
        the rest. finish_reason "stop" means the last token is the stop token, which is not text.
        final_text: the engine's answer at the end, which it cut at its stop string (after it with
        include_stop_str_in_output, or later than a match seen here, before min_tokens): it wins."""
        self.token_ids.extend(new_token_ids)
        ids = self.token_ids[:-1] if finish_reason == "stop" and self.token_ids else self.token_ids
        self._decode_new(ids, finish_reason is not None)
        text = self.text
        cut = self._first_stop(text)
        if cut is not None:
            text, self.stopped = text[:cut], True
        if final_text is not None:
            text = final_text
        final = finish_reason is not None or self.stopped
        if not final:
            text = text[: max(len(self.sent), len(text) - self.holdback)]
        # Deltas always extend what was sent; if a re-decode ever rewrote sent text (a tokenizer's
        # clean-up), the client keeps the old version rather than receiving a contradiction.
        delta = text[len(self.sent) :]
        self.sent += delta
        return delta

    def _decode_new(self, ids: list[int], final: bool) -> None:
        """Extends self.text with what ids[_read:] add (everything left when final)."""
        if len(ids) <= self._read and not final:
            return
        if len(ids) < self._read:  # the final update took back a token already decoded: start over
            self.text, self._prefix, self._read = self._decode(ids), 0, len(ids)
            return
        before = self._decode(ids[self._prefix : self._read])
        after = self._decode(ids[self._prefix :])
        if final or (len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR)):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)

    def _first_stop(self, text: str) -> int | None:
        found = find_stop(text, self.stop_strings)
        return None if found is None else found[0]

