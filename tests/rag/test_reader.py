"""The reader on the embedded model: one stuffed prompt, the question-aware tail, streaming."""

from __future__ import annotations

from typing import Any

import pytest

from sra_rag import SRAConfig
from sra_rag.rag.reader import EmptyRetrievalError, Reader
from sra_rag.rag.stuffing import Chunk

pytestmark = pytest.mark.slow

QUESTION = "Who approves leave during the Storm Fortnight?"
CHUNKS = [
    Chunk("Leave in the Storm Fortnight needs approval from Imelda Farrow.", "leave.md", 1, 0.9, "l1"),
    Chunk("The showroom is on Lantern Street.", "faq.txt", 0, 0.5, "f0"),
    Chunk("Full-time staff get 27 days of paid leave.", "leave.md", 0, 0.4, "l0"),
]


class ListRetriever:
    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.calls: list[tuple[str, int]] = []

    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        self.calls.append((question, top_k))
        return self.chunks[:top_k]


class SpyEngine:
    """Delegates to the real engine and records the keyword arguments of ``stream``."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.stream_kwargs: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream(self, prompt: Any, **kwargs: Any) -> Any:
        self.stream_kwargs = kwargs
        return self._engine.stream(prompt, **kwargs)


def test_answer_streams_over_all_chunks_with_numbered_sources(embedded_engine) -> None:
    retriever = ListRetriever(CHUNKS)
    spy = SpyEngine(embedded_engine)
    sra = SRAConfig.preset("demo")
    reader = Reader(spy, retriever, top_k=3, sra=sra, max_new_tokens=6, sampling={"repetition_penalty": 1.2})
    answer = reader.stream(QUESTION)
    pieces = list(answer)
    assert retriever.calls == [(QUESTION, 3)]
    assert "".join(pieces) == answer.text and answer.completion_tokens >= 1
    assert answer.sources == ["leave.md", "faq.txt", "leave.md"]  # each chunk a document, at its rank
    assert [chunk.id for chunk in answer.stuffed.chunks] == ["l1", "f0", "l0"]
    assert answer.prompt_tokens == embedded_engine.count_tokens(answer.stuffed.messages)
    assert spy.stream_kwargs["layout"] == answer.stuffed.layout
    assert answer.stuffed.layout.question == answer.stuffed.tail_from
    headers = [block.splitlines()[0] for block in answer.stuffed.layout.documents]
    assert headers == ["Document [1]", "Document [2]", "Document [3]"]
    grouped = Reader(embedded_engine, retriever, top_k=3, group_by_source=True).stuff(QUESTION)
    assert grouped.sources == ["leave.md", "faq.txt"] and [chunk.id for chunk in grouped.chunks] == ["l0", "l1", "f0"]
    assert [chunk.id for chunk in grouped.moved] == ["l0", "l1", "f0"]
    with pytest.raises(TypeError, match="group_by_source"):
        Reader(embedded_engine, retriever, group_by_source="yes")  # type: ignore[arg-type]
    assert spy.stream_kwargs["sra"] is sra and spy.stream_kwargs["max_new_tokens"] == 6
    assert spy.stream_kwargs["stop"] == ("\nQuestion:",) and spy.stream_kwargs["repetition_penalty"] == 1.2


def test_ask_matches_stream(embedded_engine) -> None:
    off = SRAConfig(enabled=False)
    streamed = "".join(Reader(embedded_engine, ListRetriever(CHUNKS), sra=off, max_new_tokens=6).stream(QUESTION))
    answer = Reader(embedded_engine, ListRetriever(CHUNKS), sra=off, max_new_tokens=6).ask(QUESTION)
    assert answer.text == streamed  # greedy decoding: the same prompt gives the same text
    assert answer.sources == ["leave.md", "faq.txt", "leave.md"] and answer.dropped == []
    assert answer.finish_reason in {"stop", "length"}


def test_empty_retrieval_and_bad_settings_are_clear_errors(embedded_engine) -> None:
    with pytest.raises(EmptyRetrievalError, match="Ingest documents first"):
        Reader(embedded_engine, ListRetriever([])).stream(QUESTION)
    with pytest.raises(TypeError, match="retrieve"):
        Reader(embedded_engine, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        Reader(embedded_engine, ListRetriever(CHUNKS), top_k=0)
    with pytest.raises(ValueError, match="overflow"):
        Reader(embedded_engine, ListRetriever(CHUNKS), overflow="cut")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="as Reader arguments"):
        Reader(embedded_engine, ListRetriever(CHUNKS), sampling={"stop": ["x"]})
    with pytest.raises(ValueError, match="temperature=nan"):
        Reader(embedded_engine, ListRetriever(CHUNKS), sampling={"temperature": float("nan")}).stream(QUESTION)


def test_a_reader_without_a_retriever_answers_over_the_chunks_it_is_given(embedded_engine) -> None:
    off = SRAConfig(enabled=False)
    given = Reader(embedded_engine, sra=off, max_new_tokens=6).ask(QUESTION, chunks=CHUNKS)
    retrieved = Reader(embedded_engine, ListRetriever(CHUNKS), sra=off, max_new_tokens=6).ask(QUESTION)
    assert given.text == retrieved.text and given.sources == retrieved.sources
    with pytest.raises(ValueError, match="no retriever"):
        Reader(embedded_engine).ask(QUESTION)


def test_the_reader_answers_with_the_models_defaults(embedded_engine) -> None:
    spy = SpyEngine(embedded_engine)
    Reader(spy, max_new_tokens=2).ask(QUESTION, chunks=CHUNKS)
    assert spy.stream_kwargs["sra"] is None  # the engine's own: its defaults' preset
    assert embedded_engine.sra == embedded_engine.defaults.sra
    for name, value in embedded_engine.defaults.sampling.items():
        assert spy.stream_kwargs[name] == value
    assert spy.stream_kwargs["loop_guard"] > 0 and spy.stream_kwargs["repetition_penalty"] == 1.0


def test_answer_says_which_sources_the_question_read(embedded_engine) -> None:
    reader = Reader(embedded_engine, ListRetriever(CHUNKS), max_new_tokens=2)
    answer = reader.ask(QUESTION)
    assert answer.sources == ["leave.md", "faq.txt", "leave.md"]
    stuffed = reader.stuff(QUESTION, CHUNKS)
    expected = embedded_engine.complete(stuffed.messages, max_new_tokens=1, sra=None, layout=stuffed.layout)
    assert expected.document_attention is not None and answer.source_attention is not None
    assert answer.source_attention == pytest.approx(list(expected.document_attention.scores), abs=1e-4)
    assert answer.source_attention_calibrated is expected.document_attention.calibrated


def test_attribute_scores_what_the_answer_read(embedded_engine) -> None:
    reader = Reader(embedded_engine, ListRetriever(CHUNKS), max_new_tokens=12, attribute=True)
    answer = reader.ask(QUESTION)
    assert answer.text.strip() and answer.answer_attention is not None
    assert len(answer.answer_attention) == len(answer.sources) == 3
    stuffed = reader.stuff(QUESTION, CHUNKS)
    expected = embedded_engine.attribute(stuffed.messages, answer.text, layout=stuffed.layout)
    assert answer.answer_attention == pytest.approx(list(expected.scores), abs=1e-4)
    assert answer.answer_attention != pytest.approx(answer.source_attention, abs=1e-3)  # other rows read
    # Off by default; a stream is attributed once it is finished.
    plain = Reader(embedded_engine, ListRetriever(CHUNKS), max_new_tokens=12)
    assert plain.ask(QUESTION).answer_attention is None
    stream = plain.stream(QUESTION)
    with pytest.raises(RuntimeError, match="still being generated"):
        plain.attribute(stream)
    for _ in stream:
        pass
    assert plain.attribute(stream) == pytest.approx(answer.answer_attention, abs=1e-4)
    with pytest.raises(TypeError, match="attribute must be True or False"):
        Reader(embedded_engine, ListRetriever(CHUNKS), attribute="yes")  # type: ignore[arg-type]
