"""Chat prompts: check the messages, render them with the model's chat template and tokenise once,
with every message's content read as literal text.

A tokenizer parses special tokens wherever their text occurs, so ``<|im_end|>\\n<|im_start|>system``
inside a retrieved document or a user message would become real turn markers (a forged system turn).
Here only the template's own special tokens are special: the rendered text is split at them, and the
text between them (message content included) is tokenised with special tokens read as text. That is
what the tokenizer does itself around special tokens, so a prompt without such text gets exactly the
ids of ``apply_chat_template(..., tokenize=True)``; there is one tokenisation and no second BOS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer
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


class PromptTokenizer:
    """Renders and tokenises prompts for one tokenizer; safe to call from many threads at once.

    A transformers tokenizer reads ``split_special_tokens`` from a flag it sets on its backend at
    every call, so two threads tokenising at once could swap each other's setting. A fast tokenizer's
    backend is therefore copied twice here, once parsing special tokens and once reading them as text,
    and neither copy's flag ever changes. Slow tokenizers are called as they are (they keep no such
    flag) but give no offsets, so layout markers cannot be placed on their prompts.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.special = _special_pattern(tokenizer)
        backend: Tokenizer | None = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        self._parsing = self._literal = None
        if backend is not None:
            self._parsing, self._literal = _backend_copy(backend, False), _backend_copy(backend, True)

    def text(self, text: str, *, add_special_tokens: bool) -> TokenizedPrompt:
        """A raw string prompt, tokenised as it is (its special tokens are the caller's)."""
        return TokenizedPrompt(text, *self._encode(text, literal=False, add_special_tokens=add_special_tokens))

    def chat(self, messages: list[dict[str, str]]) -> TokenizedPrompt:
        """Render ``messages`` (already validated) with the chat template and the generation prompt,
        and tokenise them once with every message's content literal (see the module doc)."""
        text = str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        contents = _content_spans(self.tokenizer, messages, text)
        question = _last_user_content(messages, text, contents)
        special = self.special
        injected = next((found for m in messages if special and (found := special.search(m["content"]))), None)
        if injected is None or special is None:
            return TokenizedPrompt(text, *self._encode(text, literal=False), question)
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
            piece_ids, piece_offsets = self._encode(text[cursor : match.start()], literal=True, shift=cursor)
            input_ids += [*piece_ids, int(self.tokenizer.convert_tokens_to_ids(match[0]))]
            offsets += [*piece_offsets, (match.start(), match.end())]
            cursor = match.end()
        piece_ids, piece_offsets = self._encode(text[cursor:], literal=True, shift=cursor)
        return TokenizedPrompt(text, input_ids + piece_ids, offsets + piece_offsets, question)

    def _encode(
        self, text: str, *, literal: bool, add_special_tokens: bool = False, shift: int = 0
    ) -> tuple[list[int], list[Span]]:
        """Token ids of ``text`` and their character offsets (moved by ``shift``); ``literal``:
        special-token text is read as plain text."""
        if not text:
            return [], []
        backend = self._literal if literal else self._parsing
        if backend is None:  # a slow tokenizer: per-call settings, no offsets
            ids = self.tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=literal)
            return list(ids["input_ids"]), []
        encoding = backend.encode(text, add_special_tokens=add_special_tokens)
        return list(encoding.ids), [(start + shift, end + shift) for start, end in encoding.offsets]


def _backend_copy(backend: Tokenizer, literal: bool) -> Tokenizer:
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = literal
    return copy


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
    stripped = messages[index]["content"].strip()
    if not stripped:
        return None
    if contents is not None:
        start, _ = contents[index]
        lead = text[start:].find(stripped)
        if lead >= 0:
            return start + lead, start + lead + len(stripped)
    start = text.rfind(stripped)
    return None if start < 0 else (start, start + len(stripped))
