"""The inspector on a tiny random model: values in range, files written, the page self-contained."""

import base64
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sra_rag import SRAConfig
from sra_rag.cli import build_app
from sra_rag.evaluation.inspector import inspect_prompt, write_report
from tests.readout.test_recorder import DOCUMENTS
from tests.test_attention import SMALL


@pytest.fixture(scope="module")
def inspection(tiny_engine):
    return inspect_prompt(
        tiny_engine, "What colour is the door?", DOCUMENTS, ["ferry.md", "door.md", "leave.md"], SMALL
    )


def test_inspection_holds_readouts_and_token_classes_per_layer(inspection):
    assert inspection.labels == ["ferry.md", "door.md", "leave.md"]
    assert [p.setting for p in inspection.passes] == ["stock attention", "SRA"]
    for item in inspection.passes:
        mass = np.array(item.attention.readout.mass)
        assert mass.shape == (4, 3) and (mass > 0).all() and (mass.sum(axis=1) < 1).all()
        assert item.classes.shape == (4, 3)
        np.testing.assert_allclose(item.classes.sum(axis=1), 1.0, atol=1e-9)
        assert (item.classes >= 0).all()
    # Stock attention's layer 0 readout is the same with and without SRA (nothing is edited before it).
    np.testing.assert_allclose(
        inspection.passes[0].attention.readout.mass[0], inspection.passes[1].attention.readout.mass[0]
    )
    # raw: log total mass relative to a document of mean log length (the profile's length_exponent 0)
    lengths = np.log(np.array(inspection.passes[0].attention.readout.lengths))
    np.testing.assert_allclose(
        inspection.raw_scores, np.log(np.array(inspection.passes[0].attention.readout.mass)) - lengths.mean()
    )
    np.testing.assert_allclose(inspection.calibrated_scores, inspection.raw_scores)  # the tiny model has no profile


def test_report_writes_pngs_and_one_self_contained_page(inspection, tmp_path):
    page = write_report(inspection, tmp_path / "out")
    pngs = sorted(path.name for path in (tmp_path / "out").glob("*.png"))
    assert pngs == ["documents.png", "token_classes.png"]
    text = page.read_text()
    for name in pngs:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and base64.b64encode(data).decode() in text
    assert "What colour is the door?" in text and "[2] door.md" in text and "uncalibrated" in text
    assert 'src="http' not in text


def test_stock_only_and_bad_input(tiny_engine):
    only = inspect_prompt(tiny_engine, "What colour is the door?", DOCUMENTS[:2], sra=SRAConfig.preset("off"))
    assert [p.setting for p in only.passes] == ["stock attention"] and only.labels == ["document 1", "document 2"]
    with pytest.raises(ValueError, match="at least one document"):
        inspect_prompt(tiny_engine, "q?", [])
    with pytest.raises(ValueError, match="one distinct label"):
        inspect_prompt(tiny_engine, "q?", DOCUMENTS[:2], ["a", "a"])


def test_inspect_writes_the_page(tmp_path: Path, tiny_engine, monkeypatch) -> None:
    from sra_rag import SRAEngine

    monkeypatch.setattr(SRAEngine, "shared", classmethod(lambda cls, model=None, **kwargs: tiny_engine))
    (tmp_path / "door.md").write_text("The lighthouse keeper's house has a green door.")
    (tmp_path / "ferry.md").write_text("The harbour master keeps the ferry log.")
    out = tmp_path / "page"
    result = CliRunner().invoke(
        build_app(),
        ["inspect", "What colour is the door?", str(tmp_path / "ferry.md"), str(tmp_path / "door.md"),
        "--out", str(out), "--preset", "off"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and (out / "documents.png").is_file()
    listed = [line for line in result.stdout.splitlines() if "] " in line]
    assert sorted(line.split("] ")[1] for line in listed) == ["door.md", "ferry.md"]
    bad = CliRunner().invoke(build_app(), ["inspect", "q?", str(tmp_path / "missing.md")])
    assert bad.exit_code != 0 and "not a file" in bad.output
