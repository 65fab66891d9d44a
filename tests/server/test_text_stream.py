"""TextStream: streamed pieces add up to the decoded answer; stop strings and split characters are held back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastswitch.server.text_stream import TextStream
from fastswitch.stop_strings import find_stop

STOP_ID = 999


def decode_bytes(ids: list[int]) -> str:
    """A byte-level 'tokenizer': one token per byte, so a character may span tokens."""
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(text=texts, split_points=st.lists(st.integers(0, 200), max_size=8), stop_token=st.booleans())
def test_pieces_add_up_to_the_answer_and_never_hold_a_partial_character(text, split_points, stop_token):
    ids = list(text.encode("utf-8")) + ([STOP_ID] if stop_token else [])
    cuts = sorted({min(p, len(ids)) for p in split_points} | {0, len(ids)})
    stream = TextStream(decode_bytes)
    pieces = []
    for start, end in zip(cuts, cuts[1:]):
        final = end == len(ids)
        pieces.append(stream.push(ids[start:end], ("stop" if stop_token else "length") if final else None))
        if not final:
            assert "\ufffd" not in stream.sent  # only valid UTF-8 is ever sent
    if len(cuts) == 1:
        pieces.append(stream.push([], "length"))
    assert "".join(pieces) == text


@given(before=texts, stop=st.text(alphabet="xyz", min_size=1, max_size=3), after=texts, step=st.integers(1, 5))
def test_text_from_the_stop_string_on_is_never_sent(before, stop, after, step):
    ids = list((before + stop + after).encode("utf-8"))
    stream = TextStream(decode_bytes, [stop])
    sent = ""
    for start in range(0, len(ids), step):
        sent += stream.push(ids[start : start + step], None)
        if stream.stopped:
            break
    expected = before + stop + after
    assert stream.stopped
    assert sent == expected[: expected.index(stop)]


@given(text=texts, split_points=st.lists(st.integers(0, 200), max_size=8))
def test_windowed_decoding_gives_what_decoding_the_whole_output_gives(tiny_model, text, split_points):
    tokenizer = _tokenizer(tiny_model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    cuts = sorted({min(p, len(ids)) for p in split_points} | {0, len(ids)})
    stream = TextStream(decode)
    pieces = [stream.push(ids[start:end], "length" if end == len(ids) else None) for start, end in zip(cuts, cuts[1:])]
    pieces.append(stream.push([], "length"))
    assert "".join(pieces) == decode(ids) == text


def test_each_update_decodes_a_window_not_the_whole_output():
    decoded = []

    def counting_decode(ids: list[int]) -> str:
        decoded.append(len(ids))
        return decode_bytes(ids)

    stream = TextStream(counting_decode)
    ids = list(("long answer " * 200).encode())
    for token in ids:
        stream.push([token], None)
    stream.push([], "length")
    assert stream.sent == "long answer " * 200
    assert sum(decoded) <= 4 * len(ids)  # a full re-decode per token would be len(ids)**2 / 2


_TOKENIZERS = {}


def _tokenizer(folder):
    from transformers import AutoTokenizer

    if folder not in _TOKENIZERS:
        _TOKENIZERS[folder] = AutoTokenizer.from_pretrained(folder)
    return _TOKENIZERS[folder]


def test_each_update_searches_only_text_a_stop_string_could_overlap(monkeypatch):
    import fastswitch.stop_strings as stop_strings

    scanned = []

    def counting_find_stop(text, stop_strings, searched=0):
        scanned.append(sum(len(text) - max(0, searched - len(stop) + 1) for stop in stop_strings))
        return find_stop(text, stop_strings, searched)

    monkeypatch.setattr(stop_strings, "find_stop", counting_find_stop)
    stream = TextStream(decode_bytes, ["never appears", "nor this"])
    ids = list(("long answer " * 200).encode())
    for token in ids:
        stream.push([token], None)
    assert not stream.stopped and stream.sent == ("long answer " * 200)[: -len("never appears") + 1]
    # Each search covers each stop string's length (13 + 8) plus the new character; searching the whole
    # text per token would be 2 * len(ids)**2 / 2.
    assert sum(scanned) <= (13 + 8 + 1) * 2 * len(ids)
