"""SRALLM in a real LlamaIndex pipeline: a VectorStoreIndex over MiniLM embeddings queried with the
``compact`` and ``tree_summarize`` response modes."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.llms.sra import SRALLM

from sra_rag import SRAEngine

pytestmark = pytest.mark.slow

DOCUMENTS = [
    Document(text="The ferry to Skelda leaves Pier 3 every day at 08:30.", id_="ferry"),
    Document(text="Full-time staff get 27 days of paid leave per year.", id_="leave"),
    Document(text="The Valdenmoor hotel limit is 140 euros per night.", id_="hotel"),
    Document(text="The lighthouse on Skelda was built in 1871.", id_="lighthouse"),
]
QUESTION = "When does the ferry to Skelda leave?"


@pytest.fixture(scope="module")
def index(minilm_embedding) -> VectorStoreIndex:  # type: ignore[no-untyped-def]
    return VectorStoreIndex.from_documents(DOCUMENTS, embed_model=minilm_embedding)


@pytest.mark.parametrize("response_mode", ["compact", "tree_summarize"])
def test_query_engine_answers_from_the_retrieved_nodes(
    index: VectorStoreIndex, embedded_engine: SRAEngine, response_mode: str
) -> None:
    debug = LlamaDebugHandler()
    callbacks = CallbackManager([debug])
    llm = SRALLM(max_new_tokens=16, callback_manager=callbacks)
    # The synthesizer hands its callback manager to the LLM, so it gets the handler too.
    synthesizer = get_response_synthesizer(llm=llm, response_mode=response_mode, callback_manager=callbacks)
    query_engine = RetrieverQueryEngine(index.as_retriever(similarity_top_k=2), synthesizer, callback_manager=callbacks)
    response = query_engine.query(QUESTION)
    assert isinstance(response, Response)
    assert response.source_nodes[0].node.ref_doc_id == "ferry"
    assert str(response.response).strip()
    # One chat call that saw both retrieved nodes; its answer is the response.
    ((start, end),) = debug.get_llm_inputs_outputs()
    prompt = "\n".join(str(message.content) for message in start.payload["messages"])
    assert all(node.node.get_content() in prompt for node in response.source_nodes)
    assert end.payload["response"].message.content.strip() == str(response.response).strip()
    messages = [{"role": message.role.value, "content": message.content} for message in start.payload["messages"]]
    assert end.payload["response"].raw["usage"]["prompt_tokens"] == embedded_engine.count_tokens(messages)


def test_streaming_query_engine_streams_the_same_answer(index: VectorStoreIndex) -> None:
    llm = SRALLM(max_new_tokens=16)
    blocking = index.as_query_engine(llm=llm, response_mode="compact", similarity_top_k=2).query(QUESTION)
    streaming = index.as_query_engine(llm=llm, response_mode="compact", similarity_top_k=2, streaming=True)
    response = streaming.query(QUESTION)
    assert isinstance(response, StreamingResponse)
    pieces = [piece for piece in response.response_gen if piece]
    assert len(pieces) > 2 and "".join(pieces) == str(blocking.response)
