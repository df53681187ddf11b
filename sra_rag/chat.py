"""Chat prompts: check the messages, render them with the model's chat template and tokenise once,
with every message's content read as literal text.

A tokenizer parses special tokens wherever their text occurs, so ``<|im_end|>\\n<|im_start|>system``
inside a retrieved document or a user message would become real turn markers (a forged system turn).
Here only the template's own special tokens are special: the rendered text is split at them, and the
text between them (message content included) is tokenised with ``split_special_tokens=True``. That is
what the tokenizer does itself around special tokens, so a prompt without such text gets exactly the
ids of ``apply_chat_template(..., tokenize=True)``; there is one tokenisation and no second BOS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from sra_rag.layout import Span

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""The chat roles a message may have."""

_SENTINEL = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as the model reads it: ``text`` (template applied), its token ``input_ids``,
    ``offsets`` (the characters of each token; empty when the tokenizer cannot give them) and
    ``question``: the character span of the last user message's content (None for a raw string)."""

    text: str
    input_ids: list[int]
    offsets: list[Span]
    question: Span | None = None


def validate_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Check a chat message list and return it as plain ``{"role", "content"}`` dicts."""
    if not messages:
        raise ValueError("The message list is empty; pass at least one {'role': 'user', 'content': ...} message.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TypeError(f"message {index} must be a mapping with a string 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {index} has role {message['role']!r}; use one of {list(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise TypeError(f"message {index} has non-string content {message.get('content')!r}")
    if not any(str(message["content"]).strip() for message in messages):
        raise ValueError("Every message is empty; there is nothing to answer.")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool) -> TokenizedPrompt:
    """A raw string prompt, tokenised as it is (its special tokens are the caller's)."""
    input_ids, offsets = _encode(tokenizer, text, add_special_tokens=add_special_tokens)
    return TokenizedPrompt(text, input_ids, offsets)


def tokenize_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> TokenizedPrompt:
    """Render ``messages`` (already validated) with the chat template and the generation prompt,
    and tokenise them once with every message's content literal (see the module doc)."""
    text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    contents = _content_spans(tokenizer, messages, text)
    special = _special_pattern(tokenizer)
    injected = next((found for m in messages if special and (found := special.search(m["content"]))), None)
    question = _last_user_content(messages, text, contents)
    if injected is None or special is None:
        return TokenizedPrompt(text, *_encode(tokenizer, text, add_special_tokens=False), question)
    if contents is None:
        raise ValueError(
            f"A message contains the special token {injected[0]!r}, and this model's chat template rewrites "
            "message content, so it cannot be kept literal; remove special tokens from the messages."
        )
    input_ids: list[int] = []
    offsets: list[Span] = []
    cursor = 0
    for match in special.finditer(text):
        if any(start < match.end() and match.start() < stop for start, stop in contents):
            continue  # text inside a message: literal, tokenised with the piece around it
        piece_ids, piece_offsets = _encode_literal(tokenizer, text[cursor : match.start()], cursor)
        input_ids += piece_ids
        offsets += piece_offsets
        input_ids.append(int(tokenizer.convert_tokens_to_ids(match[0])))
        offsets.append((match.start(), match.end()))
        cursor = match.end()
    piece_ids, piece_offsets = _encode_literal(tokenizer, text[cursor:], cursor)
    return TokenizedPrompt(text, input_ids + piece_ids, offsets + piece_offsets, question)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[Span]]:
    if not tokenizer.is_fast:  # slow tokenizers have no offset mapping; layout markers then cannot be placed
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]), []
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]


def _encode_literal(tokenizer: PreTrainedTokenizerBase, piece: str, shift: int) -> tuple[list[int], list[Span]]:
    """Token ids of ``piece`` with special-token text read as plain text; offsets moved by ``shift``."""
    if not piece:
        return [], []
    if not tokenizer.is_fast:
        return list(tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]), []
    encoding = tokenizer(piece, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [(start + shift, end + shift) for start, end in encoding["offset_mapping"]]


def _special_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern[str] | None:
    """A regex of the tokenizer's special tokens, longest first (as the tokenizer matches them)."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special and token.content}
    if not tokens:
        return None
    return re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)))


def _content_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], text: str) -> list[Span] | None:
    """Where each message's content lies in the rendered ``text``: the template is rendered again
    with a placeholder per content, and the placeholders are accepted only if putting the contents
    back gives ``text`` exactly (templates that rewrite content, e.g. trim it, are tried stripped).
    None when the template changes content in another way."""
    placeholders = [{**message, "content": f"\ue000{index}\ue001"} for index, message in enumerate(messages)]
    try:
        skeleton = str(tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True))
    except Exception:  # a template that inspects content (e.g. tool markup) may not render placeholders
        return None
    for transform in (str, str.strip):
        spans: list[Span] = []
        rebuilt: list[str] = []
        cursor = 0
        length = 0
        for match in _SENTINEL.finditer(skeleton):
            before = skeleton[cursor : match.start()]
            content = transform(messages[int(match[1])]["content"])
            rebuilt += [before, content]
            length += len(before)
            spans.append((length, length + len(content)))
            length += len(content)
            cursor = match.end()
        rebuilt.append(skeleton[cursor:])
        if "".join(rebuilt) == text and len(spans) == len(messages):
            return spans
    return None


def _last_user_content(messages: list[dict[str, str]], text: str, contents: list[Span] | None) -> Span | None:
    """The character span of the last user message's content (its text stripped of outer whitespace)."""
    index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if index is None:
        return None
    content = messages[index]["content"]
    stripped = content.strip()
    if not stripped:
        return None
    if contents is not None:
        start, _ = contents[index]
        lead = text[start:].find(stripped)
        if lead >= 0:
            return start + lead, start + lead + len(stripped)
    start = text.rfind(stripped)
    return None if start < 0 else (start, start + len(stripped))
