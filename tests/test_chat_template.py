"""The tokens a chat turn appends reproduce the template's rendering of the whole conversation."""

import pytest
from transformers import AutoTokenizer

from fastswitch.chat_template import chat_turn_tokens
from fastswitch.model_sources import tiny_random_llama


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(tiny_random_llama(seed=0, root=tmp_path_factory.mktemp("tiny") / "model"))


def render(tokenizer, messages, cue):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=cue, tokenize=False)


@pytest.mark.parametrize("answer_stopped", [True, False])
def test_context_plus_new_tokens_decode_to_the_full_rendering(tokenizer, answer_stopped):
    history = [{"role": "system", "content": "be brief"}]
    first = chat_turn_tokens(tokenizer, history, "hello", None)
    assert tokenizer.decode(first) == render(tokenizer, history + [{"role": "user", "content": "hello"}], True)
    answer = "hi there"
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    stop_text = None
    if answer_stopped:  # the model's stop token already closed the answer inside the context
        answer_ids = answer_ids + [tokenizer.eos_token_id]
        stop_text = tokenizer.decode([tokenizer.eos_token_id])
    history = history + [{"role": "user", "content": "hello"}, {"role": "assistant", "content": answer}]
    new = chat_turn_tokens(tokenizer, history, "and again", stop_text)
    whole = render(tokenizer, history + [{"role": "user", "content": "and again"}], True)
    assert tokenizer.decode(first + answer_ids + new) == whole


def test_history_must_end_with_the_answer(tokenizer):
    history = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}
    ]  # fmt: skip
    with pytest.raises(ValueError, match="'user' message"):
        chat_turn_tokens(tokenizer, history, "d", None)
