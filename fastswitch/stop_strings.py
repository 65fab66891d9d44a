"""Stop strings (`SamplingParams.stop`): the one rule for where a text ends, for the engine and the server.

A stop string ends a request as soon as it appears in the decoded output, no earlier than
`min_tokens` output tokens (vLLM's rule): the text is cut before it, or after it with
`include_stop_str_in_output`. When several appear, the one that starts first wins. The engine
watches each request with a `StopStringMatcher`; the server's streaming (server/text_stream.py) holds
back text that could begin a stop string. Both search their growing text with a `StopSearch`, which
looks at each call only where a stop string ending in the new characters could start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastswitch.detokenizer import IncrementalDetokenizer


def find_stop(text: str, stop_strings: Sequence[str], searched: int = 0) -> tuple[int, str] | None:
    """The first stop string in text that ends past text[:searched] (a part searched, or passed over,
    before): (its index, the string), or None. Each string is looked for only where it could end
    past that part, so a growing text costs its new characters per search, not its length."""
    found = [
        (index, stop) for stop in stop_strings if (index := text.find(stop, max(0, searched - len(stop) + 1))) >= 0
    ]
    return min(found, key=lambda hit: hit[0]) if found else None


class StopSearch:
    """The first stop string in a growing text (each call's text extends the last one's)."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self.stop_strings = tuple(stop_strings)
        # Characters at the end of a text that could begin a stop string the next characters complete.
        self.overlap = max((len(s) for s in self.stop_strings), default=1) - 1
        self._searched = 0  # text[:_searched] holds no stop string that counts

    def first(self, text: str, restart: bool = False) -> tuple[int, str] | None:
        """(index, stop string) of the first one in text that ends in the characters added since the last
        call, or None; restart: the first anywhere (for a text decoded anew, which may differ)."""
        found = find_stop(text, self.stop_strings, 0 if restart else self._searched)
        if found is None:
            self.pass_over(text)
        return found

    def pass_over(self, text: str) -> None:
        """Takes text as searched, unsearched: a stop string that lies wholly in it does not count."""
        self._searched = len(text)


class StopStringMatcher:
    """Watches one request's output tokens for its stop strings."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop_strings: Sequence[str], min_tokens: int = 0,
        include_stop_str_in_output: bool = False,
    ) -> None:  # fmt: skip
        if not stop_strings:
            raise ValueError("a StopStringMatcher needs at least one stop string")
        self.detokenizer = IncrementalDetokenizer(decode)
        self.search = StopSearch(stop_strings)
        self.min_tokens = min_tokens
        self.include = include_stop_str_in_output
        self.text = ""  # the output decoded at the last call (a window per call: fastswitch/detokenizer.py)
        self.match: tuple[int, str] | None = None  # (index in text, stop string) once found

    def found(self, output_token_ids: list[int]) -> bool:
        """Call after each new output token; True once a stop string has appeared (and stays True)."""
        if self.match is not None:
            return True
        self.text = self.detokenizer.update(output_token_ids)
        if len(output_token_ids) < self.min_tokens:
            self.search.pass_over(self.text)  # too early: these stop strings do not count
            return False
        self.match = self.search.first(self.text)
        return self.match is not None

    @property
    def final_text(self) -> str:
        """The output text cut at the stop string (after it with include_stop_str_in_output)."""
        if self.match is None:
            raise ValueError("no stop string has been found")
        index, stop = self.match
        return self.text[: index + len(stop) if self.include else index]
