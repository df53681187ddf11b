"""Fixtures shared by the core tests and the integrations' tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_engine():
    """The embedded SmolLM2-135M-Instruct with SRA, loaded once per test session."""
    from sra_rag import SRAEngine

    return SRAEngine.shared()
