"""Stop strings: the earliest one wins, min_tokens holds them off, the text is cut before or after it."""

import pytest

from fastswitch.stop_strings import StopStringMatcher, find_stop


def test_find_stop_takes_the_earliest_start():
    assert find_stop("say hello world", ["world", "hello", "o w"]) == (4, "hello")
    assert find_stop("say hello world", ["world"], start=11) is None
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
