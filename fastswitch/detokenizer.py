"""The text of a growing token list, decoded a window at a time: the one incremental detokenizer.

Decoding token by token is wrong for byte-level vocabularies: one character may span tokens (the
first half decodes to U+FFFD), and a tokenizer may merge spaces differently once more tokens follow.
Decoding the whole output again on each new token is right but costs O(length) per token, O(length^2)
per request. So, as vLLM does, each update decodes a window: the tokens since the last complete
piece, once with and once without the new ones; the difference is the new text, held back while it
ends in U+FFFD (a character the next token completes). The window restarts after each piece, so an
update costs O(window), not O(output).

The engine's stop-string matcher (fastswitch/stop_strings.py) and the server's streaming
(fastswitch/server/text_stream.py) both read their text from one.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode  # token ids -> text
        self.text = ""  # the text of the ids up to _read
        self._prefix = 0  # the window: ids [_prefix, _read) decoded to the last piece of self.text
        self._read = 0

    def update(self, ids: list[int], final: bool = False) -> str:
        """The text of ids, the whole list so far (each call extends the last one's): self.text extended
        with what ids[_read:] add. final: everything left is decoded, U+FFFD included. A final list
        shorter than the last one (a token taken back) is decoded again from the start."""
        if len(ids) <= self._read and not final:
            return self.text
        if len(ids) < self._read:
            self.text, self._prefix, self._read = self._decode(ids), 0, len(ids)
            return self.text
        before = self._decode(ids[self._prefix : self._read])
        after = self._decode(ids[self._prefix :])
        if final or (len(after) > len(before) and not after.endswith(REPLACEMENT_CHAR)):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)
        return self.text
