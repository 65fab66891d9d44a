"""Stop strings (`SamplingParams.stop`): the one rule for where a text ends, for the engine and the server.

A stop string ends a request as soon as it appears in the decoded output, no earlier than
`min_tokens` output tokens (vLLM's rule): the text is cut before it, or after it with
`include_stop_str_in_output`. When several appear, the one that starts first wins. The engine
watches each request with a `StopStringMatcher`; the server's streaming (server/text_stream.py) holds
back text with `find_stop` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastswitch.detokenizer import IncrementalDetokenizer


def find_stop(text: str, stop_strings: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """The first stop string in text at or after start: (its index, the string), or None."""
    found = [(index, stop) for stop in stop_strings if (index := text.find(stop, start)) >= 0]
    return min(found, key=lambda hit: hit[0]) if found else None


class StopStringMatcher:
    """Watches one request's output tokens for its stop strings."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop_strings: Sequence[str], min_tokens: int = 0,
        include_stop_str_in_output: bool = False,
    ) -> None:  # fmt: skip
        if not stop_strings:
            raise ValueError("a StopStringMatcher needs at least one stop string")
        self.detokenizer = IncrementalDetokenizer(decode)
        self.stop_strings = tuple(stop_strings)
        self.min_tokens = min_tokens
        self.include = include_stop_str_in_output
        self.text = ""  # the output decoded at the last call (a window per call: fastswitch/detokenizer.py)
        self.match: tuple[int, str] | None = None  # (index in text, stop string) once found

    def found(self, output_token_ids: list[int]) -> bool:
        """Call after each new output token; True once a stop string has appeared (and stays True)."""
        if self.match is not None:
            return True
        searched = len(self.text)
        self.text = self.detokenizer.update(output_token_ids)
        if len(output_token_ids) < self.min_tokens:
            return False
        # Only text that could hold a stop string overlapping the new characters is searched again.
        start = max(0, searched - max(len(s) for s in self.stop_strings) + 1)
        self.match = find_stop(self.text, self.stop_strings, start)
        return self.match is not None

    @property
    def final_text(self) -> str:
        """The output text cut at the stop string (after it with include_stop_str_in_output)."""
        if self.match is None:
            raise ValueError("no stop string has been found")
        index, stop = self.match
        return self.text[: index + len(stop) if self.include else index]
