"""The structure of a prompt as data: where its question and each of its documents are.

A request marks its parts with text (:class:`TextLayout`: substrings of the rendered prompt); the
engine resolves them once, with the tokenizer's offset mapping, into token spans
(:class:`PromptLayout`) that travel to the attention function beside the SRA settings
(``model(..., sra_layout=layout)``), the way ``sra_config`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]
"""A half-open range ``[start, stop)`` of token (or character) positions."""


@dataclass(frozen=True)
class TextLayout:
    """Text markers of a prompt's parts, each a substring of the prompt as the model reads it
    (the rendered chat, template included).

    ``question``: the question; its last occurrence counts, and SRA's question tail
    (``SRAConfig(tail="question")``) runs from its first token to the end of the prompt.
    ``documents``: the retrieved documents (or source blocks), in prompt order; each is looked up
    after the previous one.
    """

    question: str | None = None
    documents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.question is not None and (not isinstance(self.question, str) or not self.question):
            raise ValueError(f"TextLayout.question must be a non-empty string or None, got {self.question!r}")
        if isinstance(self.documents, str) or not isinstance(self.documents, Sequence):
            raise TypeError("TextLayout.documents must be a sequence of strings (one per document)")
        documents = tuple(self.documents)
        if any(not isinstance(document, str) or not document for document in documents):
            raise ValueError("every TextLayout document must be a non-empty string")
        object.__setattr__(self, "documents", documents)


@dataclass(frozen=True)
class PromptLayout:
    """Token spans of a prompt's parts in the sequence's own coordinates: positions ``0..length-1``
    over its real (unpadded) tokens.

    ``question``: the question's span (None: the prompt has none, e.g. a raw string);
    ``documents``: one span per document, in prompt order.
    """

    length: int
    question: Span | None = None
    documents: tuple[Span, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"PromptLayout.length must be a positive integer, got {self.length!r}")
        for name, span in [("question", self.question), *(("document", span) for span in self.documents)]:
            if span is None:
                continue
            start, stop = span
            if not 0 <= start < stop <= self.length:
                raise ValueError(f"PromptLayout {name} span {span} is not inside [0, {self.length})")

    @property
    def question_start(self) -> int | None:
        """The question's first token, or None."""
        return None if self.question is None else self.question[0]


def token_span(offsets: Sequence[Span], start: int, stop: int) -> Span:
    """The tokens covering characters ``[start, stop)``: every token whose characters overlap them.

    ``offsets``: ``(char_start, char_end)`` per token, as a fast tokenizer's offset mapping gives them.
    """
    first = next((i for i, (begin, end) in enumerate(offsets) if end > start and end > begin), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < stop), None)
    if first is None or last is None or last < first:
        raise ValueError(f"no token covers characters {start}..{stop} of the prompt")
    return first, last + 1


def resolve(
    text: str, offsets: Sequence[Span], markers: TextLayout | None, default_question: Span | None = None
) -> PromptLayout:
    """Locate ``markers`` in the rendered prompt ``text`` (tokenised with ``offsets``) and return
    their token spans. ``default_question``: the question's character span when the markers name
    none (the last user message of a chat). Raises ValueError naming a marker that does not occur."""
    markers = markers or TextLayout()
    question = None
    if markers.question is not None:
        start = text.rfind(markers.question)
        if start < 0:
            raise ValueError(f"The question marker {_short(markers.question)} does not occur in the prompt.")
        question = token_span(offsets, start, start + len(markers.question))
    elif default_question is not None:
        question = token_span(offsets, *default_question)
    documents = []
    cursor = 0
    for index, document in enumerate(markers.documents):
        start = text.find(document, cursor)
        if start < 0:
            where = "after the previous document" if text.find(document) >= 0 else "in the prompt"
            raise ValueError(f"Document marker {index} {_short(document)} does not occur {where}.")
        cursor = start + len(document)
        documents.append(token_span(offsets, start, cursor))
    return PromptLayout(len(offsets), question, tuple(documents))


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
