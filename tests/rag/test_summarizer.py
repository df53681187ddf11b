"""The summarizer: one pass when the document fits, an announced map-reduce when it does not."""

from __future__ import annotations

import copy

import pytest

from sra_rag import ContextWindowExceededError, SRAConfig
from sra_rag.rag.summarizer import MapReduceFallbackWarning, Summarizer

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "The Gannet Point mast is twelve metres high and carries instruments at four heights. It recorded a gust of "
    "171 km/h during the Candlemas Gale and cost 61,400 crowns to build."
)


def test_one_pass_when_the_document_fits(embedded_engine, recwarn) -> None:
    summarizer = Summarizer(embedded_engine, sra=SRAConfig.preset("demo"), max_new_tokens=6)
    result = summarizer.stream(PARAGRAPH, title="mast.md")
    pieces = list(result)
    assert (result.map_reduce, result.parts, result.part_summaries) == (False, 1, [])
    assert "".join(pieces) == result.text
    assert result.document_tokens == embedded_engine.count_tokens(PARAGRAPH)
    assert result.prompt_tokens > result.document_tokens
    assert not [w for w in recwarn if issubclass(w.category, MapReduceFallbackWarning)]


def test_map_reduce_fallback_is_announced_and_flagged(embedded_engine) -> None:
    small = copy.copy(embedded_engine)
    small.context_window = 260
    document = "\n\n".join([PARAGRAPH] * 6)
    assert embedded_engine.count_tokens(document) > small.context_window
    summarizer = Summarizer(small, sra=SRAConfig(enabled=False), max_new_tokens=6, map_tokens=6)
    with pytest.warns(MapReduceFallbackWarning, match=r"does not fit the context window of 260.*map-reduce"):
        summary = summarizer.summarize(document, title="mast.md")
    assert summary.map_reduce and summary.parts >= 2
    assert len(summary.part_summaries) == summary.parts
    assert summary.prompt_tokens + 6 <= 260
    with pytest.raises(ContextWindowExceededError):
        Summarizer(small, max_new_tokens=6, allow_map_reduce=False).stream(document)


def test_bad_input_is_rejected(embedded_engine) -> None:
    with pytest.raises(ValueError, match="empty"):
        Summarizer(embedded_engine).stream("   ")
    with pytest.raises(ValueError, match="map_tokens"):
        Summarizer(embedded_engine, map_tokens=0)
    with pytest.raises(TypeError, match="SRAConfig"):
        Summarizer(embedded_engine, sra={"enabled": False})  # type: ignore[arg-type]
