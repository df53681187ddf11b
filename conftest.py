"""Fixtures shared by the core tests and the integrations' tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def private_default_store(tmp_path_factory: pytest.TempPathFactory):
    """Commands run without --store must not write to the user's store (~/.cache/sra-rag/store)."""
    previous = os.environ.get("SRA_RAG_STORE")
    os.environ["SRA_RAG_STORE"] = str(tmp_path_factory.mktemp("default-store"))
    yield
    if previous is None:
        del os.environ["SRA_RAG_STORE"]
    else:
        os.environ["SRA_RAG_STORE"] = previous


@pytest.fixture(scope="session")
def embedded_engine():
    """The embedded SmolLM2-135M-Instruct with SRA, loaded once per test session."""
    from sra_rag import SRAEngine

    return SRAEngine.shared()
