"""ChatSRA in a real LangChain pipeline: ``retriever | prompt | ChatSRA | parser`` over an in-memory
vector store with MiniLM embeddings."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_sra import ChatSRA

from sra_rag import SRAEngine

pytestmark = pytest.mark.slow

DOCUMENTS = [
    Document(page_content="The ferry to Skelda leaves Pier 3 every day at 08:30.", id="ferry"),
    Document(page_content="Full-time staff get 27 days of paid leave per year.", id="leave"),
    Document(page_content="The Valdenmoor hotel limit is 140 euros per night.", id="hotel"),
    Document(page_content="The lighthouse on Skelda was built in 1871.", id="lighthouse"),
]
QUESTION = "When does the ferry to Skelda leave?"
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer from the context only.\n\nContext:\n{context}"), ("human", "{question}")]
)


def test_retriever_prompt_chat_parser_chain(minilm_embeddings, embedded_engine: SRAEngine) -> None:  # type: ignore[no-untyped-def]
    store = InMemoryVectorStore.from_documents(DOCUMENTS, minilm_embeddings)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert retriever.invoke(QUESTION)[0].id == "ferry"

    def join(documents: list[Document]) -> str:
        return "\n".join(document.page_content for document in documents)

    chat = ChatSRA(max_tokens=16)
    chain = {"context": retriever | join, "question": RunnablePassthrough()} | PROMPT | chat | StrOutputParser()
    answer = chain.invoke(QUESTION)

    # The same prompt, rendered by hand, sent to the engine directly gives the same answer.
    context = join(retriever.invoke(QUESTION))
    messages = [
        {"role": "system", "content": f"Answer from the context only.\n\nContext:\n{context}"},
        {"role": "user", "content": QUESTION},
    ]
    assert answer and answer == embedded_engine.generate(messages, max_new_tokens=16)
    pieces = list(chain.stream(QUESTION))
    assert len(pieces) > 2 and "".join(pieces) == answer
