"""The shipped offline all-MiniLM-L6-v2 embedding model, once per session."""

from __future__ import annotations

import pytest
from llama_index.llms.sra import MiniLMEmbedding


@pytest.fixture(scope="session")
def minilm_embedding() -> MiniLMEmbedding:
    return MiniLMEmbedding()
