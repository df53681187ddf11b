"""The bundled sample documents: fictional facts (a barometer maker and its harbour town), so an
answer can only come from the retrieved context, never from the model's training data."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

LONG_DOCUMENT = "report_gannet_point_mast.md"
SAMPLE_QUESTIONS: tuple[str, ...] = (
    "How many days of paid leave does a full-time Quillfeather employee get each year?",
    "Which radio band does the Windvane W2 use, and why was it chosen?",
)


def samples_path() -> Path:
    """The folder of bundled sample documents (``.md`` and ``.txt``)."""
    return Path(str(files("sra_rag") / "data" / "samples"))


def long_document_path() -> Path:
    """The bundled long document (about 3,000 tokens) used to demonstrate one-pass summaries."""
    return samples_path() / LONG_DOCUMENT
