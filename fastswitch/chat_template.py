"""The tokens a chat's next user message appends to a conversation's kept KV context.

A conversation's context holds exactly its earlier prompts and the answers as generated. Re-encoding
the whole rendered chat would not reproduce those tokens (a template may trim an answer, or close it
with a marker the model already produced as its stop token), so the next turn's tokens are what the
template renders after the last answer: its closing marker unless the stop token already closed it,
separators, the new message and the assistant's cue.
"""

from __future__ import annotations


def chat_turn_tokens(tokenizer, history: list[dict], message: str, stop_text: str | None) -> list[int]:
    """history: the messages so far, ending with the assistant's last answer as generated (or holding
    no answer yet: the first turn, whose whole rendering is new); stop_text: the text of the stop token
    that ended that answer and already sits in the context, or None."""
    new_turn = {"role": "user", "content": message}
    full = tokenizer.apply_chat_template(history + [new_turn], add_generation_prompt=True, tokenize=False)
    if not any(m["role"] == "assistant" for m in history):
        return list(tokenizer(full, add_special_tokens=False)["input_ids"])
    if history[-1]["role"] != "assistant":
        raise ValueError(f"the history must end with the assistant's answer, not a {history[-1]['role']!r} message")
    before = tokenizer.apply_chat_template(history, add_generation_prompt=False, tokenize=False)
    answer = history[-1]["content"].strip()  # templates may trim whitespace around a message
    end = before.rfind(answer) + len(answer)
    if not full.startswith(before[:end]):
        raise ValueError("this chat template does not render a conversation as a prefix of its continuation")
    continuation = full[end:]
    if stop_text and continuation.startswith(stop_text):
        continuation = continuation[len(stop_text) :]
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
