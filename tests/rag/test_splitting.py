"""Token-bounded splitting (no model: tokens are whitespace words here)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sra_rag.rag.splitting import ChunkTooLargeError, split_stream, split_text


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


class CountingCounter:
    """Characters as tokens; records how many characters it was asked to count in all."""

    def __init__(self) -> None:
        self.characters = 0

    def __call__(self, text: str) -> int:
        self.characters += len(text)
        return len(text)


@pytest.mark.parametrize(
    "text", ["q" * 200_000, "".join(chr(97 + (i * 31) % 26) for i in range(200_000))], ids=["one-letter", "letters"]
)
def test_splitting_text_without_whitespace_costs_linear_time(text: str) -> None:
    # The previous splitter halved and re-counted the rest of the string for every piece: quadratic.
    counter = CountingCounter()
    pieces = split_text(text, 100, counter)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 100
    assert counter.characters <= 40 * len(text)


def test_splitting_prose_costs_linear_time_and_keeps_every_word() -> None:
    text = "\n\n".join(" ".join(f"w{i}x{j}." if j % 9 == 8 else f"w{i}x{j}" for j in range(60)) for i in range(2000))
    counted = 0

    def count(piece: str) -> int:
        nonlocal counted
        counted += len(piece)
        return words(piece)

    pieces = split_text(text, 50, count)
    assert max(words(piece) for piece in pieces) <= 50
    assert " ".join(pieces).split() == text.split()
    assert counted <= 40 * len(text)


def test_a_character_counted_over_the_budget_is_a_clear_error() -> None:
    with pytest.raises(ChunkTooLargeError, match="more than 2 tokens"):
        split_text("ab\u00e9cd", 2, lambda piece: len(piece.encode()) * 2)


def test_split_stream_gives_the_same_pieces_whatever_the_block_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    import sra_rag.rag.splitting as splitting

    monkeypatch.setattr(splitting, "SEGMENT_CHARS", 256)
    text = "".join(f"Sentence {i} of a long text{'.' if i % 3 else ''}{chr(10) * (i % 4 == 0)} " for i in range(600))
    text += "x" * 3000 + " tail words here"

    def blocks(size: int) -> list[str]:
        return [text[start : start + size] for start in range(0, len(text), size)]

    whole = split_text(text, 12, words)
    streamed = [list(split_stream(blocks(size), 12, words)) for size in (1, 97, 256, 1000, len(text))]
    assert all(pieces == streamed[0] for pieces in streamed)
    assert max(words(piece) for piece in streamed[0]) <= 12
    assert "".join(streamed[0]).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert len(streamed[0]) >= len(whole)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8"), max_size=400)
    | st.lists(st.sampled_from(["word", "\n\n", " ", "\n", ".", "\t", "東京", "x" * 40]), max_size=80).map("".join),
    budget=st.integers(1, 40),
    counter=st.sampled_from([len, words, lambda piece: len(piece.encode())]),
    block=st.integers(1, 97),
)
def test_any_text_splits_within_budget_keeping_every_character(text: str, budget: int, counter, block: int) -> None:
    if any(counter(character) > budget for character in text):
        with pytest.raises(ChunkTooLargeError):
            split_text(text, budget, counter)
        return
    pieces = split_text(text, budget, counter)
    assert all(piece and piece == piece.strip() and counter(piece) <= budget for piece in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())
    blocks = [text[start : start + block] for start in range(0, len(text), block)]
    assert list(split_stream(blocks, budget, counter)) == pieces  # shorter than a segment: one split
