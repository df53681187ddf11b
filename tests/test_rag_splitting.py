"""Token-bounded splitting (no model: tokens are whitespace words here)."""

from __future__ import annotations

import pytest

from sra_rag.rag.splitting import split_text


def words(text: str) -> int:
    return len(text.split())


def test_paragraphs_are_packed_up_to_the_limit() -> None:
    text = "one two three\n\nfour five\n\nsix seven eight nine"
    assert split_text(text, 5, words) == ["one two three\n\nfour five", "six seven eight nine"]


def test_long_paragraph_splits_at_sentences_then_words() -> None:
    text = "A b c. D e f g h i j k. L m."
    pieces = split_text(text, 4, words)
    assert all(words(piece) <= 4 for piece in pieces)
    assert " ".join(pieces).split() == text.split()
    assert pieces[0] == "A b c."


def test_overlong_word_is_cut_by_characters() -> None:
    def chars(text: str) -> int:
        return len(text)

    pieces = split_text("abcdefghij", 4, chars)
    assert "".join(pieces) == "abcdefghij"
    assert all(len(piece) <= 4 for piece in pieces)


def test_blank_text_gives_no_pieces_and_bad_limit_is_rejected() -> None:
    assert split_text(" \n\n \n", 10, words) == []
    with pytest.raises(ValueError, match="max_tokens"):
        split_text("text", 0, words)
