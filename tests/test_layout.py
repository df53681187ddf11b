"""Prompt layout as data: text markers resolved to token spans with the tokenizer's offsets."""

from __future__ import annotations

import pytest

from sra_rag.layout import PromptLayout, TextLayout, resolve, token_span
from sra_rag.rag.stuffing import Chunk, stuff_prompt

QUESTION = "Question: what colour is the door?"


def decode(engine, prepared, span) -> str:
    return engine.tokenizer.decode(prepared.input_ids[0, span[0] : span[1]])


def test_markers_become_the_token_spans_of_their_text(tiny_engine) -> None:
    documents = ("The harbour master keeps the ferry log.", "The lighthouse keeper's house has a green door.")
    content = f"{documents[0]}\n\n{documents[1]}\n\n{QUESTION}"
    prepared = tiny_engine.prepare(
        [{"role": "user", "content": content}], layout=TextLayout(question=QUESTION, documents=documents)
    )
    layout = prepared.layout
    assert layout.length == prepared.num_tokens
    assert decode(tiny_engine, prepared, layout.question) == QUESTION
    assert [decode(tiny_engine, prepared, span) for span in layout.documents] == list(documents)
    assert layout.documents[0][1] <= layout.documents[1][0] < layout.question[0]
    assert prepared.tail_length == prepared.num_tokens - layout.question[0]
    tail = tiny_engine.tokenizer.decode(prepared.input_ids[0, -prepared.tail_length :])
    assert tail.startswith(QUESTION) and tail.endswith("<|im_start|>assistant\n")


def test_without_markers_the_question_is_the_last_user_message(tiny_engine) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the ferry log?"},
        {"role": "assistant", "content": "A record."},
        {"role": "user", "content": "  Who keeps it?\n"},
    ]
    prepared = tiny_engine.prepare(messages)
    assert decode(tiny_engine, prepared, prepared.layout.question) == "Who keeps it?"
    assert prepared.layout.documents == ()
    raw = tiny_engine.prepare("<|im_start|>user\nHi<|im_end|>\n", chat_template=False)
    assert raw.layout == PromptLayout(raw.num_tokens) and raw.tail_length is None


def test_the_question_is_its_last_occurrence_and_documents_follow_each_other(tiny_engine) -> None:
    content = f"{QUESTION} was asked before.\n\nDoc A.\n\nDoc A.\n\n{QUESTION}"
    prepared = tiny_engine.prepare(
        [{"role": "user", "content": content}], layout=TextLayout(question=QUESTION, documents=("Doc A.", "Doc A."))
    )
    first, second = prepared.layout.documents
    assert first[1] <= second[0] and second[1] <= prepared.layout.question[0]
    with pytest.raises(ValueError, match="does not occur after the previous document"):
        tiny_engine.prepare(
            [{"role": "user", "content": content}], layout=TextLayout(documents=("Doc A.", "Doc A.", "Doc A."))
        )
    with pytest.raises(ValueError, match="pass the question either as tail_from or as layout.question"):
        tiny_engine.prepare(content, tail_from=QUESTION, layout=TextLayout(question=QUESTION))


def test_stuffed_prompts_give_their_question_and_source_blocks(tiny_engine) -> None:
    chunks = [
        Chunk("Leave is approved by the team lead.", "leave.md", 0),
        Chunk("The ferry leaves at noon.", "ferry.txt", 2),
        Chunk("Requests go through the portal.", "leave.md", 1),
    ]
    stuffed = stuff_prompt(tiny_engine, "Who approves leave?", chunks, max_new_tokens=8)
    assert stuffed.layout.question == stuffed.tail_from
    assert stuffed.layout.documents == (
        "Document [1]\nLeave is approved by the team lead.",
        "Document [2]\nThe ferry leaves at noon.",
        "Document [3]\nRequests go through the portal.",
    )
    grouped = stuff_prompt(tiny_engine, "Who approves leave?", chunks, max_new_tokens=8, group_by_source=True)
    assert grouped.layout.documents == (
        "Document [1]\nLeave is approved by the team lead.\n\nRequests go through the portal.",
        "Document [2]\nThe ferry leaves at noon.",
    )
    for prompt in (stuffed, grouped):
        prepared = tiny_engine.prepare(prompt.messages, layout=prompt.layout)
        spans = [decode(tiny_engine, prepared, span) for span in prepared.layout.documents]
        assert spans == list(prompt.layout.documents)


def test_layout_values_are_checked() -> None:
    with pytest.raises(ValueError, match="question"):
        TextLayout(question="")
    with pytest.raises(TypeError, match="sequence of strings"):
        TextLayout(documents="one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        TextLayout(documents=("a", ""))
    assert TextLayout(documents=["a", "b"]).documents == ("a", "b")
    with pytest.raises(ValueError, match="not inside"):
        PromptLayout(10, question=(5, 12))
    with pytest.raises(ValueError, match="positive"):
        PromptLayout(0)


def test_token_span_covers_partly_overlapping_tokens() -> None:
    offsets = [(0, 3), (3, 7), (7, 8), (8, 12)]
    assert token_span(offsets, 4, 8) == (1, 3)
    assert token_span(offsets, 3, 7) == (1, 2)
    assert resolve("abcdefghijkl", offsets, TextLayout(question="efghi")).question == (1, 4)
    with pytest.raises(ValueError, match="no token covers"):
        token_span(offsets, 12, 13)
