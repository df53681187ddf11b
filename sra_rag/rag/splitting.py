"""Token-bounded text splitting shared by ingestion (embedding-sized chunks) and the summarizer
(context-window-sized parts).

Sizes are always measured with a caller-supplied token counter, never in characters, so a chunk is
guaranteed to fit the model that will read it. The splitting itself is ``semchunk``'s: it prefers
paragraph breaks, then line breaks, sentence ends, other whitespace, punctuation and, in text without
any of those, single characters; it finds each cut by binary search over the pieces, so its cost
grows linearly with the text (text without whitespace included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import cast

TokenCounter = Callable[[str], int]

SEGMENT_CHARS = 1 << 18
"""Long text is split in segments of at most this many characters (cut at a paragraph break, else a
line break, else whitespace, where one exists), so memory stays bounded whatever the file size."""
_COUNT_CACHE = 1 << 14


class ChunkTooLargeError(ValueError):
    """A piece of text that cannot be split to fit: one character counts more tokens than the budget."""


def split_text(text: str, max_tokens: int, count_tokens: TokenCounter) -> list[str]:
    """Split ``text`` into pieces of at most ``max_tokens`` tokens each (as measured by
    ``count_tokens``), preferring paragraph, then sentence, then word boundaries; text without any
    boundary is cut between characters.

    Consecutive paragraphs are packed into one piece while they fit, so pieces keep their context.
    Pieces are stripped; blank text gives an empty list. Every piece is counted once more before it
    is returned: none is ever over the budget.
    """
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        return []
    try:
        import semchunk
    except ImportError as error:
        raise ImportError("Splitting text needs semchunk. Install it with: pip install 'sra-rag[rag]'") from error
    # A cache per call (semchunk's own memoisation keeps one per counter for the whole process).
    counter = lru_cache(maxsize=_COUNT_CACHE)(count_tokens)
    try:
        raw = cast(list[str], semchunk.chunk(text, max_tokens, counter, memoize=False))
    except RecursionError:
        raise ChunkTooLargeError(
            f"The text has a character that alone counts more than {max_tokens} tokens; raise the budget."
        ) from None
    pieces = [piece.strip() for piece in raw if piece.strip()]
    for piece in pieces:
        tokens = counter(piece)
        if tokens > max_tokens:
            raise ChunkTooLargeError(
                f"A piece of {len(piece)} characters counts {tokens} tokens, over the budget of {max_tokens}: "
                f"{piece[:40]!r}..."
            )
    return pieces


def split_stream(blocks: Iterable[str], max_tokens: int, count_tokens: TokenCounter) -> Iterator[str]:
    """:func:`split_text` over text that arrives in blocks (a file read piece by piece), holding at
    most about two segments of :data:`SEGMENT_CHARS` characters at a time.

    The text is cut into segments that depend only on the text, never on the block sizes, so the
    same text always gives the same pieces.
    """
    buffer = ""
    for block in blocks:
        buffer += block
        while len(buffer) >= 2 * SEGMENT_CHARS:
            cut = _segment_end(buffer)
            yield from split_text(buffer[:cut], max_tokens, count_tokens)
            buffer = buffer[cut:]
    while len(buffer) > SEGMENT_CHARS:
        cut = _segment_end(buffer)
        yield from split_text(buffer[:cut], max_tokens, count_tokens)
        buffer = buffer[cut:]
    yield from split_text(buffer, max_tokens, count_tokens)


def _segment_end(text: str) -> int:
    """Where the segment that starts ``text`` ends: after the last paragraph break in its first
    :data:`SEGMENT_CHARS` characters, else the last line break, else the last whitespace, else
    exactly there (text without whitespace)."""
    window = text[:SEGMENT_CHARS]
    for separator in ("\n\n", "\n"):
        found = window.rfind(separator, SEGMENT_CHARS // 2)
        if found != -1:
            return found + len(separator)
    for position in range(len(window) - 1, SEGMENT_CHARS // 2, -1):
        if window[position].isspace():
            return position + 1
    return SEGMENT_CHARS
