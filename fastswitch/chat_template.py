"""Chats as token ids: the one rendering of a conversation by the checkpoint's chat template, and the
one rule for the tokens a chat's next user message appends to a conversation's kept KV context.

`LLM` (chat, conversations), the server's `ServingEngine` (the chat endpoint, the CLI's chat) and
the examples all render chats here.

A conversation's context holds exactly its earlier prompts and the answers as generated. Re-encoding
the whole rendered chat would not reproduce those tokens (a template may trim an answer, or close it
with a marker the model already produced as its stop token), so the next turn's tokens are what the
template renders after the last answer: its closing marker unless the stop token already closed it
(`answer_stop_text`), separators, the new message and the assistant's cue.
"""

from __future__ import annotations

from fastswitch.outputs import RequestOutput

RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message"}
)


def check_chat_template(tokenizer) -> None:
    """ValueError unless tokenizer (None for a model without one) has a chat template."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat needs a tokenizer with a chat template; this model has none")


def render_chat(
    tokenizer, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False,
    template_kwargs: dict | None = None, check_content: bool = True,
) -> str:  # fmt: skip
    """messages rendered by the tokenizer's chat template, ending with the assistant's cue
    (add_generation_prompt) or inside its last, unfinished message (continue_final_message).
    template_kwargs: extra variables for the template. ValueError when there is no template, or it
    fails, or (check_content) it leaves out a message's text (a role it cannot render; templates that
    rewrite earlier answers, as reasoning models' drop their thinking, are rendered with it off)."""
    check_chat_template(tokenizer)
    clashing = RESERVED_TEMPLATE_KWARGS & set(template_kwargs or {})
    if clashing:
        raise ValueError(f"chat_template_kwargs must not set {sorted(clashing)}")
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
            tokenize=False, **(template_kwargs or {}),
        )  # fmt: skip
    except Exception as exc:  # jinja's TemplateError (raise_exception in a template), or a bad message
        raise ValueError(f"the chat template cannot render these messages: {type(exc).__name__}: {exc}") from exc
    for message in messages if check_content else ():
        if message["content"].strip() and message["content"].strip() not in text:
            raise ValueError(f"this model's chat template does not render a {message['role']!r} message")
    return text


def answer_stop_text(tokenizer, last_turn: RequestOutput | None) -> str | None:
    """The text of the stop token that closed a conversation's last answer and already sits in its
    context; None when there is no answer yet, or it ended otherwise (length, or a stop string, which
    ends the answer on an ordinary token)."""
    if last_turn is None or last_turn.finish_reason != "stop" or not last_turn.token_ids:
        return None
    if isinstance(last_turn.stop_reason, str):
        return None
    return tokenizer.decode(last_turn.token_ids[-1:])


def chat_turn_tokens(tokenizer, history: list[dict], message: str, stop_text: str | None) -> list[int]:
    """history: the messages so far, ending with the assistant's last answer as generated (or holding
    no answer yet: the first turn, whose whole rendering is new); stop_text: the text of the stop token
    that ended that answer and already sits in the context, or None (answer_stop_text)."""
    new_turn = {"role": "user", "content": message}
    full = render_chat(tokenizer, history + [new_turn], check_content=False)
    if not any(m["role"] == "assistant" for m in history):
        return list(tokenizer(full, add_special_tokens=False)["input_ids"])
    if history[-1]["role"] != "assistant":
        raise ValueError(f"the history must end with the assistant's answer, not a {history[-1]['role']!r} message")
    before = render_chat(tokenizer, history, add_generation_prompt=False, check_content=False)
    answer = history[-1]["content"].strip()  # templates may trim whitespace around a message
    end = before.rfind(answer) + len(answer)
    if not full.startswith(before[:end]):
        raise ValueError("this chat template does not render a conversation as a prefix of its continuation")
    continuation = full[end:]
    if stop_text and continuation.startswith(stop_text):
        continuation = continuation[len(stop_text) :]
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
