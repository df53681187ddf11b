"""Fixtures shared by the core tests and the integrations' tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU the Triton kernels' tests (tests/kernels/) run under Triton's interpreter on CPU tensors.
# Triton fixes that choice when it is first imported, which torch does by itself once sra_rag is
# imported (tests/conftest.py), so it is made here, before any test module loads. With a GPU the
# kernels compile and the same tests run on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests run on the small, fast SmolLM2-135M wherever a model is left unnamed (the library's
# default is Qwen2.5-Coder-0.5B; tests/test_model_sources.py checks that default itself).
os.environ["SRA_RAG_MODEL"] = "smollm2-135m"


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
    """SmolLM2-135M-Instruct with SRA, loaded once per test session."""
    from sra_rag import SRAEngine

    return SRAEngine.shared("smollm2-135m")
