"""Property-based tests of the command line's inputs: random commands, paths (missing, files, empty
folders, damaged stores, names that are not UTF-8), numbers (negative, huge, nan, inf, not numbers)
and names. Every run ends with a result (exit 0), one clear ``Error:`` line (exit 1) or a usage error
(exit 2); never a traceback. The reader model is not loaded: reaching it ends the command with the
stub's own error, and the store embeds with a hash instead of all-MiniLM-L6-v2."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sra_rag.cli import build_app
from sra_rag.rag.store import MiniLMEmbeddingFunction

NOT_LOADED = "the reader model is not loaded in this test"


def hash_embedding(self: Any, input: list[str]) -> list[np.ndarray]:
    return [
        np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8).astype(np.float32) + 1
        for text in input
    ]


def no_model(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError(NOT_LOADED)


@contextmanager
def workspace() -> Iterator[dict[str, str]]:
    """Paths of every kind the commands may meet, in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        docs = root / "docs"
        docs.mkdir()
        (docs / "ferry.txt").write_text("The ferry to Skelda leaves Pier 3 at 08:30.\n\nIt returns at 16:00.")
        (docs / "blob.md").write_text("q" * 3000)
        (docs / "binary.txt").write_bytes(b"\x00\x01\x02")
        with open(os.fsencode(docs) + b"/caf\xe9.txt", "w") as handle:
            handle.write("A name that is not UTF-8.")
        (root / "empty").mkdir()
        (root / "file.txt").write_text("Just one file.")
        damaged = root / "damaged"
        damaged.mkdir()
        (damaged / "chroma.sqlite3").write_bytes(b"not a database" * 50)
        yield {
            "docs": str(docs),
            "empty": str(root / "empty"),
            "file": str(root / "file.txt"),
            "latin1": os.fsdecode(os.fsencode(docs) + b"/caf\xe9.txt"),
            "binary": str(docs / "binary.txt"),
            "missing": str(root / "missing"),
            "store": str(root / "store"),
            "damaged": str(damaged),
        }


integers = st.one_of(
    st.integers(-3, 300).map(str), st.sampled_from(["0", "10000000000000", "nan", "inf", "1.5", "", "ten"])
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["-1", "0", "1e309", "", "two"])
)
names = st.one_of(st.sampled_from(["paper", "recommended", "demo", "off", "error", "drop"]), st.text(max_size=8))


def options(draw: Any, table: dict[str, Any]) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=4))
    arguments: list[str] = []
    for option in chosen:
        value = table[option]
        arguments += [option] if value is None else [option, draw(value)]
    return arguments


@st.composite
def commands(draw: Any, paths: dict[str, str]) -> list[str]:
    place = st.sampled_from(sorted(paths)).map(paths.__getitem__)
    store = {"--store": st.one_of(st.just(paths["store"]), place)}
    sra = {"--preset": names, "--beta-outer": floats, "--alpha-inner": floats, "--tail-length": integers}
    command = draw(st.sampled_from(["ingest", "ask", "summarize"]))
    if command == "ingest":
        table = {**store, "--chunk-tokens": integers, "--collection": names, "--no-progress": None}
        return [
            "ingest",
            draw(st.one_of(st.sampled_from([paths["docs"], paths["file"]]), place)),
            *options(draw, table),
        ]
    if command == "ask":
        table = {**store, **sra, "--top-k": integers, "--max-new-tokens": integers, "--overflow": names}
        return ["ask", draw(st.text(max_size=20)), *options(draw, table)]
    table = {**sra, "--max-new-tokens": integers, "--map-tokens": integers, "--model": names}
    return ["summarize", draw(place), *options(draw, table)]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_command_line_ends_in_a_result_or_one_clear_error(data: Any) -> None:
    runner = CliRunner()
    with (
        workspace() as paths,
        mock.patch.dict(os.environ, {"SRA_RAG_STORE": paths["store"], "SRA_RAG_CACHE": paths["missing"]}),
        mock.patch("sra_rag.cli.rag._engine", no_model),
        mock.patch.object(MiniLMEmbeddingFunction, "__call__", hash_embedding),
    ):
        arguments = data.draw(commands(paths))
        result = runner.invoke(build_app(), arguments)
    event(f"{arguments[0]} exit {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), (arguments, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert arguments[0] == "ingest" and "chunks added" in result.stderr
    elif result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, (arguments, result.stderr)
        assert len(errors[0]) > len("Error: ") + 10
    else:
        assert result.exit_code == 2 and "Usage:" in result.output, (arguments, result.exit_code, result.output)
