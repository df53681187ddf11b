"""The readout as a re-ranker on NQ-Open: the three readouts of one prompt on the small model, the
content-free calibration's arithmetic, the resumable records and the table."""

from __future__ import annotations

import json

import pytest

from sra_rag.evaluation.nq import load
from sra_rag.evaluation.rerank import CONTENT_FREE, READOUTS, read, read_records, run, score_example, table

pytestmark = pytest.mark.slow


def test_one_example_gets_every_readout_and_the_calibration_subtracts_the_content_free_read(
    embedded_engine, tmp_path
) -> None:
    example = load("dev")[0]
    record = score_example(embedded_engine, example)
    assert all(len(record[name]) == len(example.passages) for name in READOUTS)
    asked = read(embedded_engine, example, example.question)
    empty = read(embedded_engine, example, CONTENT_FREE)
    assert record["profile"] == pytest.approx(list(asked.scores), abs=1e-4)
    expected = [a - b for a, b in zip(asked.scores, empty.scores, strict=True)]
    assert record["content-free"] == pytest.approx(expected, abs=1e-4)
    assert record["raw"] != pytest.approx(record["profile"], abs=1e-3)  # the profile removes a position bias

    out = tmp_path / "records.jsonl"
    out.write_text(json.dumps(record) + "\n")
    lines: list[str] = []
    run(embedded_engine, load("dev")[:2], out, progress=lines.append)
    assert [item["id"] for item in read_records(out)] == [example.id, load("dev")[1].id] and len(lines) == 1
    rendered = table(read_records(out), "dev")
    for name in ("readout, profile", "readout, content-free", "readout, raw", "MiniLM cosine", "BM25"):
        assert f"| {name} | 2 |" in rendered
