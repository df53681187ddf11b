"""SRAQueryEngine: every retrieved node stuffed into one prompt for SRALLM, blocking and streaming."""

from __future__ import annotations

import pytest
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.llms.sra import SRALLM
from llama_index.llms.sra.query_engine import ChunkRetriever, SRAQueryEngine, node_to_chunk

from sra_rag import SRAConfig
from sra_rag.rag.citing import cite_answer, cited_numbers
from sra_rag.rag.stuffing import Chunk, stuff_prompt

pytestmark = pytest.mark.slow

QUESTION = "When does the ferry to Skelda leave?"
CHUNKS = [
    Chunk("The ferry to Skelda leaves Pier 3 at 08:30 and 16:00.", "ferry.txt", 0, 0.9, "f0"),
    Chunk("Full-time staff get 27 days of paid leave.", "leave.md", 0, 0.5, "l0"),
    Chunk("The ferry crossing takes 55 minutes.", "ferry.txt", 1, 0.4, "f1"),
]


class ListStore:
    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks

    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        return self.chunks[:top_k]


@pytest.fixture(scope="module")
def llm() -> SRALLM:
    return SRALLM(max_new_tokens=5)


def test_query_stuffs_all_nodes_and_matches_the_engine(llm: SRALLM) -> None:
    sra = SRAConfig.preset("demo").model_copy(update={"tail": "question"})
    query_engine = SRAQueryEngine(retriever=ChunkRetriever(ListStore(CHUNKS), top_k=3), llm=llm, sra=sra)
    response = query_engine.query(QUESTION)
    assert isinstance(response, Response)
    assert [node.node.node_id for node in response.source_nodes] == ["f0", "l0", "f1"]  # retrieved rank
    assert response.metadata["sources"] == ["ferry.txt", "leave.md", "ferry.txt"] and response.metadata["dropped"] == []
    stuffed = stuff_prompt(llm.engine, QUESTION, CHUNKS, max_new_tokens=5)
    assert response.metadata["prompt_tokens"] == stuffed.prompt_tokens == llm.engine.count_tokens(stuffed.messages)
    direct = llm.engine.generate(
        stuffed.messages, max_new_tokens=5, sra=sra, layout=stuffed.layout, stop=["\nQuestion:"]
    )
    assert response.response == direct
    expected = llm.engine.complete(stuffed.messages, max_new_tokens=1, sra=sra, layout=stuffed.layout)
    assert expected.document_attention is not None
    assert response.metadata["source_attention"] == pytest.approx(expected.document_attention.scores, abs=1e-3)
    assert response.metadata["source_attention_calibrated"] is expected.document_attention.calibrated


def test_streaming_gives_the_same_text(llm: SRALLM) -> None:
    retriever = ChunkRetriever(ListStore(CHUNKS), top_k=3)
    blocking = SRAQueryEngine(retriever=retriever, llm=llm, sra=SRAConfig(enabled=False)).query(QUESTION)
    streaming = SRAQueryEngine(retriever=retriever, llm=llm, sra=SRAConfig(enabled=False), streaming=True)
    response = streaming.query(QUESTION)
    assert isinstance(response, StreamingResponse)
    pieces = list(response.response_gen)
    assert pieces and all(pieces) and "".join(pieces) == blocking.response
    assert response.metadata["sources"] == ["ferry.txt", "leave.md", "ferry.txt"]


async def test_aquery_matches_query(llm: SRALLM) -> None:
    query_engine = SRAQueryEngine(retriever=ChunkRetriever(ListStore(CHUNKS)), llm=llm, sra=SRAConfig(enabled=False))
    response = await query_engine.aquery(QUESTION)
    assert response.response == query_engine.query(QUESTION).response
    assert response.metadata["sources"] == ["ferry.txt", "leave.md", "ferry.txt"]


def test_node_metadata_becomes_citable_chunks_and_empty_retrieval_is_an_error(llm: SRALLM) -> None:
    nodes = ChunkRetriever(ListStore(CHUNKS), top_k=2).retrieve(QUESTION)
    assert [node_to_chunk(node) for node in nodes] == CHUNKS[:2]
    with pytest.raises(ValueError, match="no nodes"):
        SRAQueryEngine(retriever=ChunkRetriever(ListStore([])), llm=llm).query(QUESTION)
    with pytest.raises(TypeError, match="retrieve"):
        ChunkRetriever(object())


def test_nodes_of_one_source_are_grouped_only_when_asked_and_titles_reach_the_prompt(llm: SRALLM) -> None:
    sra = SRAConfig.preset("off")
    retriever = ChunkRetriever(ListStore(CHUNKS), top_k=3)
    grouped = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra, group_by_source=True).query(QUESTION)
    assert grouped.metadata["sources"] == ["ferry.txt", "leave.md"]
    assert [node.node.node_id for node in grouped.source_nodes] == ["f0", "f1", "l0"]
    titled = [Chunk(CHUNKS[0].text, "ferry.txt", 0, 0.9, "f0", title="Skelda ferry")]
    nodes = ChunkRetriever(ListStore(titled)).retrieve(QUESTION)
    assert [node_to_chunk(node) for node in nodes] == titled
    engine = SRAQueryEngine(retriever=ChunkRetriever(ListStore(titled)), llm=llm, sra=sra)
    stuffed, _ = engine._stuff(QUESTION, nodes)
    assert "Document [1] (Title: Skelda ferry)\nThe ferry" in stuffed.messages[0]["content"]


def test_order_puts_the_most_read_source_where_asked(llm: SRALLM) -> None:
    from sra_rag.rag.ordering import order_by_attention

    sra = SRAConfig.preset("off")
    query_engine = SRAQueryEngine(retriever=ChunkRetriever(ListStore(CHUNKS), top_k=3), llm=llm, sra=sra, order="last")
    response = query_engine.query(QUESTION)
    stuffed = stuff_prompt(llm.engine, QUESTION, CHUNKS, max_new_tokens=5)
    ordered, attention, _ = order_by_attention(llm.engine, stuffed, "last", sra)
    assert response.metadata["sources"] == ordered.sources == [stuffed.sources[i] for i in attention.ranking[::-1]]
    assert [node.node.node_id for node in response.source_nodes] == [chunk.id for chunk in ordered.chunks]
    direct = llm.engine.generate(
        ordered.messages, max_new_tokens=5, sra=sra, layout=ordered.layout, stop=["\nQuestion:"]
    )
    assert response.response == direct


def test_attribute_adds_what_the_answer_read(llm: SRALLM) -> None:
    sra = SRAConfig.preset("off")
    retriever = ChunkRetriever(ListStore(CHUNKS), top_k=3)
    response = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra, attribute=True).query(QUESTION)
    stuffed = stuff_prompt(llm.engine, QUESTION, CHUNKS, max_new_tokens=5)
    assert response.response and response.response.strip()
    expected = llm.engine.attribute(stuffed.messages, response.response, layout=stuffed.layout, sra=sra)
    assert response.metadata["answer_attention"] == pytest.approx(list(expected.scores), abs=1e-4)
    plain = SRAQueryEngine(retriever=ChunkRetriever(ListStore(CHUNKS), top_k=3), llm=llm, sra=sra).query(QUESTION)
    assert "answer_attention" not in plain.metadata


def test_an_answer_that_cites_no_source_gets_the_models_pick() -> None:
    llm = SRALLM(max_new_tokens=48)  # room for the model to end the answer itself
    sra = SRAConfig.preset("off")
    retriever = ChunkRetriever(ListStore(CHUNKS), top_k=3)
    plain = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra, cite=None).query(QUESTION)
    cited = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra).query(QUESTION)
    stuffed = stuff_prompt(llm.engine, QUESTION, CHUNKS, max_new_tokens=48)
    citation = cite_answer(llm.engine, stuffed, str(plain.response), sra)
    assert cited.response == str(plain.response) + (citation or "")
    assert cited_numbers(str(cited.response), 3), "the answer names a source, the model's own or appended"
    streamed = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra, streaming=True).query(QUESTION)
    assert isinstance(streamed, StreamingResponse)
    assert "".join(streamed.response_gen) == cited.response
    # Without sra, ordering, citing and attributing use the LLM's own settings.
    own = SRAQueryEngine(retriever=retriever, llm=llm, order="first", attribute=True).query(QUESTION)
    assert cited_numbers(str(own.response), 3) and len(own.metadata["answer_attention"]) == 3
    by_model = SRAQueryEngine(retriever=retriever, llm=llm, sra=sra, cite="model").query(QUESTION)
    assert by_model.response == str(plain.response) + (
        cite_answer(llm.engine, stuffed, str(plain.response), sra, "model") or ""
    )
