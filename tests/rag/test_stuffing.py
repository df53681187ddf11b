"""Prompt stuffing: deduplication, order, numbered sources, exact fit, overflow policies and the
question-aware SRA tail, measured with the embedded model's tokenizer."""

from __future__ import annotations

import copy
import warnings

import pytest

from sra_rag import ContextWindowExceededError
from sra_rag.rag.stuffing import ANSWER_INSTRUCTION, DEFAULT_SYSTEM_PROMPT, Chunk, ContextOverflowError, stuff_prompt

pytestmark = pytest.mark.slow

QUESTION = "What colour is the lighthouse door?"


def ranked_chunks() -> list[Chunk]:
    """Best first, as a retriever returns them; two sources interleaved, one duplicate."""
    return [
        Chunk("The lighthouse door is painted teal.", "b.md", chunk_index=2, score=0.9, id="b2"),
        Chunk("Alpha town was founded by weavers.", "a.md", chunk_index=0, score=0.8, id="a0"),
        Chunk("The lighthouse stands on Gannet Point.", "b.md", chunk_index=0, score=0.7, id="b0"),
        Chunk("The lighthouse door is painted  teal.", "c.md", chunk_index=5, score=0.6, id="c5"),
        Chunk("The lighthouse stands on Gannet Point.", "b.md", chunk_index=0, score=0.5, id="b0"),
        Chunk("Alpha town has a weekly market.", "a.md", chunk_index=1, score=0.4, id="a1"),
    ]


def with_window(engine, context_window: int):
    """A shallow copy of the engine that believes its context window is ``context_window``."""
    small = copy.copy(engine)
    small.context_window = context_window
    return small


def test_every_chunk_is_a_document_at_its_retrieved_rank(embedded_engine) -> None:
    stuffed = stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16)
    assert [chunk.id for chunk in stuffed.chunks] == ["b2", "a0", "b0", "a1"]  # deduplicated, rank kept
    assert stuffed.sources == ["b.md", "a.md", "b.md", "a.md"] and stuffed.moved == []
    documents = stuffed.messages[0]["content"]
    assert documents.index("Document [1]\nThe lighthouse door is painted teal.") < documents.index(
        "Document [2]\nAlpha"
    )
    assert documents.index("Document [3]\nThe lighthouse stands") < documents.index("Document [4]\nAlpha town has")


def test_titles_go_in_the_document_headers(embedded_engine) -> None:
    chunks = [
        Chunk("Built in 1881 on the point.", "wiki/1", title="Gannet Point Lighthouse"),
        Chunk("A town of weavers.", "wiki/2", title="  Alpha\ntown "),
        Chunk("No title here.", "notes.md"),
    ]
    documents = stuff_prompt(embedded_engine, QUESTION, chunks, max_new_tokens=16).messages[0]["content"]
    assert "Document [1] (Title: Gannet Point Lighthouse)\nBuilt in 1881" in documents
    assert "Document [2] (Title: Alpha town)\nA town of weavers." in documents  # whitespace folded
    assert "Document [3]\nNo title here." in documents and "notes.md" not in documents


def test_deduplicates_orders_and_numbers_sources_when_grouped(embedded_engine) -> None:
    stuffed = stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16, group_by_source=True)
    assert [chunk.id for chunk in stuffed.chunks] == ["b0", "b2", "a0", "a1"]
    assert stuffed.sources == ["b.md", "a.md"]
    # Grouping moved b0 (rank 3) before b2 and a0, so it says which chunks left their rank.
    assert [chunk.id for chunk in stuffed.moved] == ["b0", "b2", "a0"]
    # The documents go in the system message, numbered, each chunk whole; the question alone in the user's turn.
    system, user = stuffed.messages
    assert system["role"] == "system" and system["content"].startswith(DEFAULT_SYSTEM_PROMPT + "\n\nDocuments:\n\n")
    documents = system["content"]
    assert documents.index("Document [1]\n") < documents.index("on Gannet Point") < documents.index("painted teal")
    assert documents.index("painted teal") < documents.index("Document [2]\n") < documents.index("founded by weavers")
    assert "Document [3]" not in documents and "b.md" not in documents  # numbers, not file names
    assert user == {"role": "user", "content": stuffed.tail_from}
    assert stuffed.tail_from == f"Question: {QUESTION}\n{ANSWER_INSTRUCTION}"
    assert stuffed.dropped == []


def test_without_a_system_prompt_everything_is_one_user_message_question_last(embedded_engine) -> None:
    stuffed = stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16, system_prompt="")
    (user,) = stuffed.messages
    assert user["role"] == "user" and user["content"].startswith("Documents:\n\nDocument [1]\n")
    assert user["content"].endswith("\n\n" + stuffed.tail_from) and "founded by weavers" in user["content"]


def test_prompt_tokens_are_exact_and_fit(embedded_engine) -> None:
    stuffed = stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16)
    assert stuffed.prompt_tokens == embedded_engine.count_tokens(stuffed.messages)
    needed = stuffed.prompt_tokens + 16
    exact = stuff_prompt(with_window(embedded_engine, needed), QUESTION, ranked_chunks(), max_new_tokens=16)
    assert exact.prompt_tokens + 16 == needed and len(exact.chunks) == 4
    with pytest.raises(ContextWindowExceededError):
        stuff_prompt(with_window(embedded_engine, needed - 1), QUESTION, ranked_chunks(), max_new_tokens=16)


def test_overflow_error_gives_the_numbers(embedded_engine) -> None:
    full = stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16)
    without_last = stuff_prompt(embedded_engine, QUESTION, ranked_chunks()[:3], max_new_tokens=16)
    window = without_last.prompt_tokens + 16
    with pytest.raises(ContextOverflowError) as caught:
        stuff_prompt(with_window(embedded_engine, window), QUESTION, ranked_chunks(), max_new_tokens=16)
    error = caught.value
    assert (error.prompt_tokens, error.max_new_tokens, error.context_window) == (full.prompt_tokens, 16, window)
    assert (error.num_chunks, error.num_fitting) == (4, 3)
    assert f"{full.prompt_tokens} tokens" in str(error) and "Only the 3 best-ranked of the 4 chunks" in str(error)


def test_drop_policy_keeps_the_best_ranked_and_warns(embedded_engine) -> None:
    without_last = stuff_prompt(embedded_engine, QUESTION, ranked_chunks()[:3], max_new_tokens=16)
    small = with_window(embedded_engine, without_last.prompt_tokens + 16)
    with pytest.warns(UserWarning, match=r"left out the 1 lowest-ranked: a\.md#1"):
        stuffed = stuff_prompt(small, QUESTION, ranked_chunks(), max_new_tokens=16, overflow="drop")
    assert [chunk.id for chunk in stuffed.chunks] == ["b2", "a0", "b0"]
    assert [chunk.id for chunk in stuffed.dropped] == ["a1"]
    assert stuffed.prompt_tokens == small.count_tokens(stuffed.messages) <= small.context_window - 16


def test_nothing_fits_raises_under_either_policy(embedded_engine) -> None:
    tiny = with_window(embedded_engine, 80)
    for policy in ("error", "drop"):
        with warnings.catch_warnings(), pytest.raises(ContextOverflowError) as caught:
            warnings.simplefilter("error")
            stuff_prompt(tiny, QUESTION, ranked_chunks(), max_new_tokens=16, overflow=policy)
        assert caught.value.num_fitting == 0


def test_tail_covers_exactly_the_question_instruction_and_generation_prompt(embedded_engine) -> None:
    # The question also appears inside a chunk: the tail must start at the final occurrence.
    chunks = [Chunk(f"Someone once asked: {QUESTION}", "q.md", 0), *ranked_chunks()]
    stuffed = stuff_prompt(embedded_engine, QUESTION, chunks, max_new_tokens=16)
    prepared = embedded_engine.prepare(stuffed.messages, tail_from=stuffed.tail_from)
    ids = prepared.input_ids[0].tolist()
    tail = embedded_engine.tokenizer.decode(ids[-prepared.tail_length :])
    assert tail.startswith("Question:")
    assert QUESTION in tail and ANSWER_INSTRUCTION in tail
    assert tail.rstrip().endswith("assistant")  # the generation prompt is part of the tail
    before = embedded_engine.tokenizer.decode(ids[: -prepared.tail_length])
    assert before.endswith("user\n") and "Gannet Point" in before  # the tail is the whole user turn


def test_bad_input_is_rejected(embedded_engine) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        stuff_prompt(embedded_engine, "  ", ranked_chunks(), max_new_tokens=16)
    with pytest.raises(ValueError, match="no chunks"):
        stuff_prompt(embedded_engine, QUESTION, [], max_new_tokens=16)
    with pytest.raises(TypeError, match="Chunk"):
        stuff_prompt(embedded_engine, QUESTION, ["plain text"], max_new_tokens=16)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="overflow"):
        stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=16, overflow="truncate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_new_tokens"):
        stuff_prompt(embedded_engine, QUESTION, ranked_chunks(), max_new_tokens=0)
