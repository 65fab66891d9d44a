"""Stop strings: the earliest one wins, min_tokens holds them off, the text is cut before or after it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.stop_strings import StopStringMatcher, find_stop


def test_find_stop_takes_the_earliest_start_of_those_ending_past_the_searched_part():
    assert find_stop("say hello world", ["world", "hello", "o w"]) == (4, "hello")
    assert find_stop("say hello world", ["world", "hello"], searched=9) == (10, "world")  # "hello" ends at 9
    assert find_stop("say hello world", ["hello"], searched=8) == (4, "hello")  # its last character is new
    assert find_stop("say hello world", ["world"], searched=15) is None
    assert find_stop("abc", []) is None


def chars(ids):
    return "".join(chr(i) for i in ids)


def feed(matcher, text):
    ids = []
    for ch in text:
        ids.append(ord(ch))
        if matcher.found(ids):
            return len(ids)
    return None


def test_matcher_stops_on_the_token_that_completes_the_stop_string():
    matcher = StopStringMatcher(chars, ["END", "halt"])
    assert feed(matcher, "go on ENDLESS") == 9
    assert matcher.final_text == "go on " and matcher.match == (6, "END")
    kept = StopStringMatcher(chars, ["END"], include_stop_str_in_output=True)
    feed(kept, "go on ENDLESS")
    assert kept.final_text == "go on END"


def test_min_tokens_holds_off_stop_strings_seen_before_it():
    matcher = StopStringMatcher(chars, ["ab"], min_tokens=4)
    assert feed(matcher, "abxxxab") == 7  # the early "ab" is passed over, the next one stops
    assert matcher.final_text == "abxxx"


def test_a_matcher_needs_a_stop_string_and_a_match_for_its_text():
    with pytest.raises(ValueError, match="at least one stop string"):
        StopStringMatcher(chars, [])
    with pytest.raises(ValueError, match="no stop string has been found"):
        _ = StopStringMatcher(chars, ["x"]).final_text


@given(
    text=st.text(alphabet="abc", max_size=40),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
    min_tokens=st.integers(0, 10),
)
def test_the_incremental_search_stops_where_searching_everything_would(text, stops, min_tokens):
    """Oracle: at each token, a stop string counts when it ends after min_tokens tokens' text, as
    vLLM's rule has it; the first token where one does is where the matcher stops, at the same index."""
    matcher = StopStringMatcher(chars, stops, min_tokens=min_tokens)
    expected = None
    for n in range(1, len(text) + 1):
        if n >= min_tokens:
            earliest_end = max(min_tokens - 1, 0)  # text before the min_tokens-th token does not count...
            hits = [(i, s) for s in stops for i in range(n) if text.startswith(s, i) and i + len(s) > earliest_end]
            hits = [(i, s) for i, s in hits if i + len(s) <= n]
            if hits:
                expected = (n, min(hits))
                break
    got = feed(matcher, text)
    assert (got, matcher.match) == (expected if expected else (None, None))
