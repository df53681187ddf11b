"""Token-bounded text splitting shared by ingestion (embedding-sized chunks) and the summarizer
(context-window-sized parts).

Sizes are always measured with a caller-supplied token counter, never in characters, so a chunk is
guaranteed to fit the model that will read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

TokenCounter = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_text(text: str, max_tokens: int, count_tokens: TokenCounter) -> list[str]:
    """Split ``text`` into pieces of at most ``max_tokens`` tokens each (as measured by
    ``count_tokens``), preferring paragraph, then sentence, then word boundaries.

    Consecutive paragraphs are packed into one piece while they fit, so pieces keep their context.
    Pieces are stripped; blank text gives an empty list. A single word longer than ``max_tokens``
    is the only thing ever cut mid-word.
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    units = [part.strip() for part in _PARAGRAPH_BREAK.split(text) if part.strip()]
    return _pack(units, "\n\n", max_tokens, count_tokens, level=0)


def _pack(units: list[str], joiner: str, max_tokens: int, count_tokens: TokenCounter, level: int) -> list[str]:
    """Greedily join ``units`` with ``joiner`` into pieces that fit; units too large on their own are
    split at the next finer boundary (sentences, then words, then characters)."""
    pieces: list[str] = []
    current: list[str] = []
    for unit in units:
        if count_tokens(unit) > max_tokens:
            if current:
                pieces.append(joiner.join(current))
                current = []
            pieces.extend(_split_unit(unit, max_tokens, count_tokens, level))
            continue
        candidate = [*current, unit]
        if current and count_tokens(joiner.join(candidate)) > max_tokens:
            pieces.append(joiner.join(current))
            current = [unit]
        else:
            current = candidate
    if current:
        pieces.append(joiner.join(current))
    return pieces


def _split_unit(unit: str, max_tokens: int, count_tokens: TokenCounter, level: int) -> list[str]:
    if level == 0:
        return _pack(_SENTENCE_END.split(unit), " ", max_tokens, count_tokens, level=1)
    if level == 1:
        return _pack(unit.split(), " ", max_tokens, count_tokens, level=2)
    # One "word" longer than the budget (a URL, a hash): cut it by characters.
    pieces: list[str] = []
    start = 0
    while start < len(unit):
        end = len(unit)
        while end - start > 1 and count_tokens(unit[start:end]) > max_tokens:
            end = start + (end - start) // 2
        pieces.append(unit[start:end])
        start = end
    return pieces
