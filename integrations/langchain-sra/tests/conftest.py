"""The shipped offline all-MiniLM-L6-v2 embedding model, once per session."""

from __future__ import annotations

import pytest
from langchain_sra import MiniLMEmbeddings


@pytest.fixture(scope="session")
def minilm_embeddings() -> MiniLMEmbeddings:
    return MiniLMEmbeddings()
