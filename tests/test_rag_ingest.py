"""Ingestion into a ChromaDB folder store: stable ids, idempotent re-ingest, changed and removed
files, interrupted runs, unreadable files. A hashing embedding function stands in for MiniLM (the
ingest logic does not depend on the vectors); one test checks retrieval with the real model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from sra_rag.rag.ingest import chunk_id, discover_files, ingest
from sra_rag.rag.store import ChromaStore, StoreNotFoundError


class HashEmbedding(EmbeddingFunction[Documents]):
    """Deterministic 8-dimensional vectors from a text hash; counts calls and can fail on demand."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, input: Documents) -> Embeddings:
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return [
            np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8).astype(np.float32) + 1
            for text in input
        ]

    @staticmethod
    def name() -> str:
        return "test_hash"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashEmbedding:
        return HashEmbedding()


def words(text: str) -> int:
    return len(text.split())


def make_docs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "alpha.md").write_text("# Alpha\n\nAlpha one two three.\n\nAlpha four five six.\n")
    (folder / "beta.txt").write_text("Beta seven eight.\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "gamma.md").write_text("Gamma nine ten eleven twelve.\n\nGamma thirteen.\n")
    (folder / "ignored.pdf").write_bytes(b"%PDF-1.4")
    (folder / ".hidden.md").write_text("never ingested")
    return folder


def open_store(path: Path, function: EmbeddingFunction | None = None) -> ChromaStore:
    return ChromaStore.open(path, embedding_function=function or HashEmbedding())


def run(store: ChromaStore, folder: Path) -> Any:
    return ingest(store, folder, chunk_tokens=5, count_tokens=words, progress=False)


def all_records(store: ChromaStore) -> dict[str, Any]:
    records = store.collection.get(include=["documents", "metadatas"])
    return {
        record: (text, meta)
        for record, text, meta in zip(records["ids"], records["documents"], records["metadatas"], strict=True)
    }


def test_discovery_and_metadata(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    assert [file.name for file in discover_files(folder)] == ["alpha.md", "beta.txt", "gamma.md"]
    store = open_store(tmp_path / "store")
    report = run(store, folder)
    assert len(report.files_added) == 3 and report.chunks_added == store.count() == 6
    by_source = sorted((meta["source"], meta["chunk_index"], text) for text, meta in all_records(store).values())
    assert by_source[0] == ("docs/alpha.md", 0, "# Alpha")
    assert ("docs/sub/gamma.md", 1, "Gamma thirteen.") in by_source
    alpha = str((folder / "alpha.md").resolve())
    assert chunk_id(alpha, 0, "# Alpha") in all_records(store)


def test_reingest_is_idempotent_and_embeds_nothing(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    function = HashEmbedding()
    store = open_store(tmp_path / "store", function)
    run(store, folder)
    before, calls = all_records(store), function.calls
    report = run(store, folder)
    assert report.chunks_added == report.chunks_deleted == 0
    assert len(report.files_unchanged) == 3 and not report.files_added and not report.files_updated
    assert function.calls == calls and all_records(store) == before
    reopened = ChromaStore.open(tmp_path / "store", embedding_function=HashEmbedding(), create=False)
    assert run(reopened, folder).chunks_added == 0 and reopened.count() == 6


def test_changed_file_replaces_its_chunks_and_removed_file_is_pruned(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    store = open_store(tmp_path / "store")
    run(store, folder)
    (folder / "alpha.md").write_text("# Alpha\n\nAlpha rewritten entirely now.\n")
    (folder / "beta.txt").unlink()
    report = run(store, folder)
    assert report.files_updated == [str((folder / "alpha.md").resolve())]
    assert report.files_removed == [str((folder / "beta.txt").resolve())]
    texts = sorted(text for text, _ in all_records(store).values())
    assert texts == ["# Alpha", "Alpha rewritten entirely now.", "Gamma nine ten eleven twelve.", "Gamma thirteen."]
    assert report.chunks_added == 1 and report.chunks_deleted == 3  # "# Alpha" kept its id


def test_interrupted_ingest_completes_when_run_again(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    reference = open_store(tmp_path / "reference")
    run(reference, folder)
    broken = open_store(tmp_path / "store", HashEmbedding(fail_on_call=2))
    with pytest.raises(KeyboardInterrupt):
        run(broken, folder)
    assert 0 < broken.count() < reference.count()
    store = open_store(tmp_path / "store")
    report = run(store, folder)
    assert report.files_unchanged and report.files_added
    assert all_records(store) == all_records(reference)


def test_unreadable_binary_and_empty_files_are_reported_and_skipped(tmp_path: Path, monkeypatch) -> None:
    folder = make_docs(tmp_path / "docs")
    (folder / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "empty.txt").write_text("\n \n")
    (folder / "locked.md").write_text("secret")
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    store = open_store(tmp_path / "store")
    report = run(store, folder)
    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert reasons == {
        "image.md": "looks binary (contains NUL bytes)",
        "latin1.txt": "is not UTF-8 text (byte 3)",
        "empty.txt": "is empty",
        "locked.md": "cannot be read (Permission denied)",
    }
    assert len(report.files_added) == 3 and store.count() == 6


def test_missing_store_and_path_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="Ingest documents first"):
        ChromaStore.open(tmp_path / "nothing", create=False)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ingest(open_store(tmp_path / "store"), tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="not both"):
        ChromaStore.open(tmp_path / "store", url="http://localhost:8000")
    with pytest.raises(ValueError, match="http://host:8000"):
        ChromaStore.open(url="localhost:8000")


@pytest.mark.slow
def test_minilm_store_retrieves_the_relevant_chunk_first(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    (folder / "harbour.md").write_text("The harbour ferry to Skelda leaves at 08:30 from Pier 3.")
    store = ChromaStore.open(tmp_path / "store")
    ingest(store, folder, progress=False)
    chunks = store.retrieve("When does the ferry leave?", top_k=3)
    assert chunks[0].source == "docs/harbour.md" and chunks[0].chunk_index == 0
    assert len(chunks) == 3 and chunks[0].score > chunks[1].score
    assert ChromaStore.open(tmp_path / "store", create=False).retrieve("ferry", top_k=1)[0].id == chunks[0].id
