"""Errors a user meets on the command line and when loading a model: one clear line on stderr, a
non-zero exit code, the path and what to do, never a traceback. Nothing here loads a model: the
errors come before that."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sra_rag.cli import build_app
from sra_rag.models import ModelLoadError, embedded_source, load, resolve_source
from sra_rag.rag.store import ChromaStore, StoreError


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def one_error_line(result) -> str:
    """The command failed cleanly: exit code 1, no traceback, and exactly one line starting with Error."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ferry.txt").write_text("The ferry to Skelda leaves Pier 3 at 08:30.")
    return folder


def damaged_store(tmp_path: Path, how: str) -> Path:
    store = tmp_path / "store"
    ChromaStore.open(store).count()  # a real, empty store first
    database = store / "chroma.sqlite3"
    if how == "garbage":
        database.write_bytes(b"not a database " * 100)
    elif how == "truncated":
        database.write_bytes(database.read_bytes()[:5000])
    else:
        database.write_bytes(b"")
    return store


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_a_damaged_store_is_named_with_what_to_do(tmp_path: Path, docs: Path, how: str) -> None:
    store = damaged_store(tmp_path, how)
    with pytest.raises(StoreError, match=f"The document store at {store} cannot be used"):
        ChromaStore.open(store)
    for command in (["ingest", str(docs), "--no-progress"], ["ask", "When does the ferry leave?"]):
        line = one_error_line(invoke(*command, "--store", str(store)))
        assert f"The document store at {store} cannot be used" in line
        assert "move it away or delete it, then ingest again" in line


def test_a_store_path_that_is_a_file_and_a_bad_server_url(tmp_path: Path, docs: Path) -> None:
    (tmp_path / "file").write_text("x")
    line = one_error_line(invoke("ingest", str(docs), "--store", str(tmp_path / "file")))
    assert "is a file; pass a folder" in line
    line = one_error_line(invoke("ask", "Anything?", "--store", str(tmp_path / "file")))
    assert "is a file; pass a folder" in line  # ask describes it as ingest does
    line = one_error_line(invoke("ask", "Anything?", "--chroma-url", "localhost:8000"))
    assert "must look like http://host:8000" in line


def test_bad_numbers_and_names_are_one_line(tmp_path: Path, docs: Path) -> None:
    missing = str(tmp_path / "nowhere")
    line = one_error_line(invoke("ask", "Anything?", "--store", missing, "--beta-outer", "inf"))
    assert line == "Error: Invalid SRAConfig settings: beta_outer: Input should be a finite number (got inf)"
    line = one_error_line(invoke("ask", "Anything?", "--store", missing, "--alpha-inner", "nan"))
    assert "alpha_inner: Input should be a finite number" in line
    line = one_error_line(invoke("ingest", str(docs), "--store", missing, "--chunk-tokens", "1000"))
    assert "Use at most 254" in line
    line = one_error_line(invoke("ingest", str(docs), "--store", missing, "--collection", "x"))
    assert "Chroma rejected" in line and "name" in line


def test_an_unexpected_error_is_one_line_that_says_how_to_see_more(
    tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sra_rag.cli.rag as commands

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(commands, "_ingest", broken)
    line = one_error_line(invoke("ingest", str(docs), "--store", str(tmp_path / "store")))
    assert line == "Error: ZeroDivisionError: division by zero (unexpected; run with SRA_RAG_DEBUG=1 for the traceback)"
    monkeypatch.setenv("SRA_RAG_DEBUG", "1")
    assert isinstance(invoke("ingest", str(docs), "--store", str(tmp_path / "store")).exception, ZeroDivisionError)


def test_an_interrupted_command_exits_130(tmp_path: Path, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sra_rag.cli.rag as commands

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_ingest", interrupted)
    result = invoke("ingest", str(docs), "--store", str(tmp_path / "store"))
    assert result.exit_code == 130 and "Error: Interrupted. Run the same command again" in result.stderr


# -- model loading ----------------------------------------------------------------------------------


def load_model(path: Path | str) -> None:
    load(resolve_source(str(path)), dtype=torch.float32, attn_implementation="sra")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SRA_RAG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def embedded_gguf() -> Path:
    source = embedded_source()
    return Path(source.path) / str(source.gguf_file)


def test_an_empty_gguf_file_is_named(tmp_path: Path, cache: Path) -> None:
    empty = tmp_path / "model.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=rf"^{empty} is empty \(0 bytes\), not a GGUF model"):
        load_model(empty)


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path, cache: Path) -> None:
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelLoadError, match=rf"^{other} is not a GGUF file"):
        load_model(other)


@pytest.mark.parametrize("keep", [3, 1_000_000])
def test_a_truncated_gguf_file_is_named(tmp_path: Path, cache: Path, keep: int) -> None:
    truncated = tmp_path / "model.gguf"
    with embedded_gguf().open("rb") as source:
        truncated.write_bytes(source.read(keep))
    with pytest.raises(ModelLoadError, match=rf"^{truncated} is truncated") as info:
        load_model(truncated)
    assert "struct" not in str(info.value) and "reshape" not in str(info.value)


@pytest.mark.slow
def test_a_gguf_file_cut_short_in_its_last_tensor_is_named(tmp_path: Path, cache: Path) -> None:
    # Used to end in "cannot reshape array of size 326 into shape (576,)".
    truncated = tmp_path / "model.gguf"
    with embedded_gguf().open("rb") as source, truncated.open("wb") as out:
        shutil.copyfileobj(source, out)
        out.truncate(embedded_gguf().stat().st_size - 1000)
    with pytest.raises(ModelLoadError, match=rf"^{truncated} is truncated or damaged") as info:
        load_model(truncated)
    assert "reshape" not in str(info.value)
    assert not any(cache.glob("gguf/*/config.json"))  # nothing half-converted is cached


def test_a_folder_that_is_not_a_model_is_named(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=rf"^{folder} is not a model folder: it has no config.json"):
        load_model(folder)
    (folder / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=rf"pass the file itself, for example {folder / 'weights.gguf'}"):
        load_model(folder)


def test_model_errors_on_the_command_line_are_one_line(tmp_path: Path, cache: Path, docs: Path) -> None:
    empty = tmp_path / "model.gguf"
    empty.write_bytes(b"")
    line = one_error_line(invoke("summarize", str(docs / "ferry.txt"), "--model", str(empty)))
    assert line == f"Error: {empty} is empty (0 bytes), not a GGUF model. Download or install it again."
    line = one_error_line(invoke("summarize", str(docs / "ferry.txt"), "--model", str(docs)))
    assert f"{docs} is not a model folder" in line
