"""create_stuffed_rag_chain: every retrieved document stuffed into one prompt for ChatSRA."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from langchain_sra import ChatSRA
from langchain_sra.chains import ChunkRetriever, create_stuffed_rag_chain, document_to_chunk

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
def chat() -> ChatSRA:
    return ChatSRA(max_new_tokens=5)


def test_invoke_stuffs_all_documents_and_matches_the_engine(chat: ChatSRA) -> None:
    sra = SRAConfig.preset("demo").model_copy(update={"tail": "question"})
    chain = create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS), top_k=3), chat, sra=sra)
    result = chain.invoke({"input": QUESTION})
    assert result["input"] == QUESTION
    assert [document.id for document in result["context"]] == ["f0", "l0", "f1"]  # retrieved rank
    assert result["sources"] == ["ferry.txt", "leave.md", "ferry.txt"] and result["dropped"] == []
    stuffed = stuff_prompt(chat.engine, QUESTION, CHUNKS, max_new_tokens=5)
    assert result["prompt_tokens"] == stuffed.prompt_tokens == chat.engine.count_tokens(stuffed.messages)
    direct = chat.engine.generate(
        stuffed.messages, max_new_tokens=5, sra=sra, layout=stuffed.layout, stop=["\nQuestion:"]
    )
    assert result["answer"] == direct
    # Which sources the question read: one score per source, as the engine computes them.
    expected = chat.engine.complete(stuffed.messages, max_new_tokens=1, sra=sra, layout=stuffed.layout)
    assert expected.document_attention is not None
    assert result["source_attention"] == pytest.approx(expected.document_attention.scores, abs=1e-3)
    assert result["source_attention_calibrated"] is expected.document_attention.calibrated


def test_stream_yields_answer_pieces_after_the_context(chat: ChatSRA) -> None:
    chain = create_stuffed_rag_chain(
        ChunkRetriever(store=ListStore(CHUNKS), top_k=3), chat, sra=SRAConfig(enabled=False)
    )
    chunks = list(chain.stream(QUESTION))
    assert chunks[0]["sources"] == ["ferry.txt", "leave.md", "ferry.txt"] and "answer" not in chunks[0]
    pieces = [chunk["answer"] for chunk in chunks[1:-1]]
    assert pieces and all(set(chunk) == {"answer"} for chunk in chunks[1:-1])
    # The model's last message carries the source attention.
    assert set(chunks[-1]) == {"source_attention", "source_attention_calibrated"}
    assert len(chunks[-1]["source_attention"]) == 3
    assert "".join(pieces) == chain.invoke({"input": QUESTION})["answer"]


def test_documents_of_one_source_are_grouped_only_when_asked_and_titles_reach_the_prompt(chat: ChatSRA) -> None:
    retriever = ChunkRetriever(store=ListStore(CHUNKS), top_k=3)
    sra = SRAConfig.preset("off")
    grouped = create_stuffed_rag_chain(retriever, chat, sra=sra, group_by_source=True, cite=None).invoke(QUESTION)
    assert grouped["sources"] == ["ferry.txt", "leave.md"]
    assert [document.id for document in grouped["context"]] == ["f0", "f1", "l0"]
    titled = Document(page_content="The ferry leaves at 08:30.", metadata={"source": "a.md", "title": "Skelda ferry"})
    assert document_to_chunk(titled, 0).title == "Skelda ferry"
    with pytest.raises(TypeError, match="group_by_source"):
        create_stuffed_rag_chain(retriever, chat, group_by_source="yes")  # type: ignore[arg-type]


def test_documents_without_metadata_and_bad_input(chat: ChatSRA) -> None:
    bare = Document(page_content="Some text.")
    assert document_to_chunk(bare, 2) == Chunk("Some text.", "document 3", None, None, "rank-2")
    retriever = RunnableLambda(lambda question: [bare])
    result = create_stuffed_rag_chain(retriever, chat, max_new_tokens=2).invoke(QUESTION)
    assert result["sources"] == ["document 1"] and result["context"] == [bare]
    with pytest.raises(ValueError, match="question"):
        create_stuffed_rag_chain(retriever, chat).invoke({"question": QUESTION})
    with pytest.raises(ValueError, match="overflow"):
        create_stuffed_rag_chain(retriever, chat, overflow="cut")  # type: ignore[arg-type]
    empty = create_stuffed_rag_chain(RunnableLambda(lambda question: []), chat)
    with pytest.raises(ValueError, match="no documents"):
        empty.invoke(QUESTION)


def test_order_puts_the_most_read_source_where_asked(chat: ChatSRA) -> None:
    from sra_rag.rag.ordering import order_by_attention

    sra = SRAConfig.preset("off")
    chain = create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS), top_k=3), chat, sra=sra, order="last")
    result = chain.invoke(QUESTION)
    stuffed = stuff_prompt(chat.engine, QUESTION, CHUNKS, max_new_tokens=5)
    ordered, attention, _ = order_by_attention(chat.engine, stuffed, "last", sra)
    assert result["sources"] == ordered.sources == [stuffed.sources[i] for i in attention.ranking[::-1]]
    assert [document.id for document in result["context"]] == [chunk.id for chunk in ordered.chunks]
    direct = chat.engine.generate(
        ordered.messages, max_new_tokens=5, sra=sra, layout=ordered.layout, stop=["\nQuestion:"]
    )
    assert result["answer"] == direct
    with pytest.raises(ValueError, match="order must be one of"):
        create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS)), chat, order="middle")  # type: ignore[arg-type]


def test_attribute_adds_what_the_answer_read(chat: ChatSRA) -> None:
    sra = SRAConfig.preset("off")
    chain = create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS), top_k=3), chat, sra=sra, attribute=True)
    result = chain.invoke(QUESTION)
    stuffed = stuff_prompt(chat.engine, QUESTION, CHUNKS, max_new_tokens=5)
    assert result["answer"].strip()
    expected = chat.engine.attribute(stuffed.messages, result["answer"], layout=stuffed.layout, sra=sra)
    assert result["answer_attention"] == pytest.approx(list(expected.scores), abs=1e-4)
    streamed = list(chain.stream(QUESTION))
    assert streamed[-1] == {"answer_attention": pytest.approx(result["answer_attention"], abs=1e-4)}
    assert "".join(part.get("answer", "") for part in streamed) == result["answer"]
    assert "answer_attention" not in create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS)), chat).invoke(
        QUESTION
    )
    with pytest.raises(TypeError, match="attribute"):
        create_stuffed_rag_chain(ChunkRetriever(store=ListStore(CHUNKS)), chat, attribute="yes")  # type: ignore[arg-type]


def test_an_answer_that_cites_no_source_gets_the_models_pick() -> None:
    chat = ChatSRA(max_new_tokens=48)  # room for the model to end the answer itself
    sra = SRAConfig.preset("off")
    retriever = ChunkRetriever(store=ListStore(CHUNKS), top_k=3)
    plain = create_stuffed_rag_chain(retriever, chat, sra=sra, cite=None).invoke(QUESTION)
    cited = create_stuffed_rag_chain(retriever, chat, sra=sra).invoke(QUESTION)
    stuffed = stuff_prompt(chat.engine, QUESTION, CHUNKS, max_new_tokens=48)
    citation = cite_answer(chat.engine, stuffed, plain["answer"], sra)
    assert cited["answer"] == plain["answer"] + (citation or "")
    assert cited_numbers(cited["answer"], 3), "the answer names a source, the model's own or appended"
    streamed = list(create_stuffed_rag_chain(retriever, chat, sra=sra).stream(QUESTION))
    assert "".join(part.get("answer", "") for part in streamed) == cited["answer"]
    # Without sra, ordering, citing and attributing use the chat model's own settings.
    own = create_stuffed_rag_chain(retriever, chat, order="first", attribute=True).invoke(QUESTION)
    assert cited_numbers(own["answer"], 3) and len(own["answer_attention"]) == 3
    with pytest.raises(ValueError, match="cite"):
        create_stuffed_rag_chain(retriever, chat, cite="yes")  # type: ignore[arg-type]
