"""Ingestion into a ChromaDB folder store: stable ids, idempotent re-ingest, changed and removed
files, interrupted runs, unreadable files. A hashing embedding function stands in for MiniLM (the
ingest logic does not depend on the vectors); one test checks retrieval with the real model."""

from __future__ import annotations

import hashlib
import os
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
    original = Path.open

    def open_file(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_file)
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


# -- hardening: large and unusual text, names, removed text, metadata ---------------------------------


def test_text_without_whitespace_is_split_within_the_embedding_budget(tmp_path: Path) -> None:
    # The embedding tokenizer counts a word of 400,000 letters as one [UNK]; it used to be stored as one chunk.
    from sra_rag.rag.ingest import embedding_token_counter

    folder = tmp_path / "docs"
    folder.mkdir()
    letters = "".join(chr(ord("a") + (index * 7919) % 26) for index in range(400_000))
    (folder / "blob.txt").write_text(letters)
    store = open_store(tmp_path / "store")
    ingest(store, folder, progress=False)  # the default counter: the embedding model's tokenizer
    records = store.collection.get(include=["documents", "metadatas"])
    pieces = sorted(
        zip(records["metadatas"], records["documents"], strict=True), key=lambda item: item[0]["chunk_index"]
    )
    count = embedding_token_counter()
    assert len(pieces) >= 400_000 // 200
    assert max(count(text) for _, text in pieces) <= 200
    assert "".join(text for _, text in pieces) == letters
    assert {meta["num_chunks"] for meta, _ in pieces} == {len(pieces)}


def test_the_embedding_token_count_is_never_truncated() -> None:
    from sra_rag.rag.ingest import embedding_token_counter

    count = embedding_token_counter()
    assert count("a" * 400_000) >= 400_000 // 4  # not 1: the [UNK] covers 400,000 characters
    assert count("word " * 1000) == 1000  # not 128: the packaged tokenizer.json truncates at 128
    assert count("😀" * 300) >= 300
    assert count("The ferry leaves at noon.") == 6


def test_chunk_budget_above_what_the_embedding_model_reads_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 254"):
        ingest(open_store(tmp_path / "store"), make_docs(tmp_path / "docs"), chunk_tokens=300, progress=False)


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    with open(os.fsencode(folder) + b"/caf\xe9.txt", "w") as handle:
        handle.write("Latin-1 name, UTF-8 text.")
    (folder / "zeta.txt").write_text("Zeta sorts after it.")
    store = open_store(tmp_path / "store")
    report = run(store, folder)
    assert [(Path(path).name, reason.split(",")[0]) for path, reason in report.skipped] == [
        ("caf\\xe9.txt", "has a name that is not valid UTF-8")
    ]
    assert str((folder / "zeta.txt").resolve()) in report.files_added and len(report.files_added) == 4
    assert "Zeta sorts after it." in [text for text, _ in all_records(store).values()]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("delete", None),
        ("empty", "is empty"),
        ("binary", "looks binary (contains NUL bytes)"),
        ("latin1", "is not UTF-8 text (byte 5)"),
        ("unreadable", "cannot be read (Permission denied)"),
    ],
)
def test_text_removed_from_the_folder_is_no_longer_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, reason: str | None
) -> None:
    folder = make_docs(tmp_path / "docs")
    store = open_store(tmp_path / "store")
    run(store, folder)
    beta = folder / "beta.txt"
    if change == "delete":
        beta.unlink()
    elif change == "empty":
        beta.write_text(" \n")
    elif change == "binary":
        beta.write_bytes(b"Beta \x00\x01 seven eight.")
    elif change == "latin1":
        beta.write_bytes("Beta \xe9t\xe9 eight.".encode("latin-1"))
    else:
        original = Path.open

        def open_file(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.name == "beta.txt":
                raise PermissionError(13, "Permission denied")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", open_file)
    report = run(store, folder)
    key = str(beta.resolve())
    assert report.files_removed == [key] and report.chunks_deleted == 1
    assert [path for path, _ in report.skipped] == ([] if reason is None else [key])
    if reason is not None:
        assert report.skipped[0][1] == reason
    assert not store.collection.get(where={"path": key})["ids"]
    assert "Beta seven eight." not in [text for text, _ in all_records(store).values()]


def test_kept_chunks_of_a_changed_file_get_its_new_metadata(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    store = open_store(tmp_path / "store")
    run(store, folder)
    alpha = folder / "alpha.md"
    alpha.write_text("# Alpha\n\nAlpha one two three.\n\nAlpha four five six.\n\nAlpha seven.\n")
    report = run(store, folder)
    assert report.chunks_added == 1 and report.chunks_deleted == 0 and report.chunks_updated == 3
    metadatas = store.collection.get(where={"path": str(alpha.resolve())}, include=["metadatas"])["metadatas"]
    digest = hashlib.sha256(alpha.read_bytes()).hexdigest()
    assert sorted(meta["chunk_index"] for meta in metadatas) == [0, 1, 2, 3]
    assert {(meta["file_sha256"], meta["num_chunks"]) for meta in metadatas} == {(digest, 4)}


def test_a_large_file_is_read_as_a_stream_and_stored_in_batches(tmp_path: Path, monkeypatch) -> None:
    # The first chunks are stored long before the whole file has been read (small blocks and segments
    # here, so that a small file shows it).
    import sra_rag.rag.ingest as ingest_module
    import sra_rag.rag.splitting as splitting_module

    monkeypatch.setattr(ingest_module, "_READ_BLOCK", 1 << 14)
    monkeypatch.setattr(splitting_module, "SEGMENT_CHARS", 1 << 15)
    folder = tmp_path / "docs"
    folder.mkdir()
    paragraph = "The harbour master logs every ferry that leaves Pier 3 before noon.\n\n"
    big = folder / "big.txt"
    big.write_text(paragraph * (400_000 // len(paragraph)))
    read: list[int] = []
    original_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        handle = original_open(self, *args, **kwargs)
        if self.name == "big.txt":
            inner = handle.read

            def counted(size: int = -1) -> bytes:
                data = inner(size)
                read.append(len(data))
                return data

            handle.read = counted  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    store = open_store(tmp_path / "store")
    first_add: list[int] = []
    original_add = store.collection.add

    def add(**kwargs: Any) -> None:
        first_add.append(sum(read))
        original_add(**kwargs)

    monkeypatch.setattr(store.collection, "add", add)
    report = ingest(store, folder, chunk_tokens=60, count_tokens=words, progress=False)
    size = big.stat().st_size
    assert report.chunks_added == store.count() > 500
    assert len(first_add) == -(-report.chunks_added // ingest_module.ADD_BATCH)  # batches of ADD_BATCH chunks
    assert max(read) <= 1 << 14  # never the whole file at once
    # One pass checks the file (size bytes), the second streams it: the first batch is stored when a
    # quarter of it or less has been read.
    assert first_add[0] - size <= size // 4


def test_progress_advances_chunk_by_chunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "one.txt").write_text("\n\n".join(f"Paragraph {index} of the only file." for index in range(40)))
    ingest(open_store(tmp_path / "store"), folder, chunk_tokens=6, count_tokens=words, progress=True)
    bar = capsys.readouterr().err
    assert "40 chunks stored" in bar and "file" not in bar.split("Ingesting")[-1]


def test_symlinked_folders_inside_are_followed_once_and_outside_only_when_asked(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)  # a cycle
    (folder / "again").symlink_to(folder / "sub", target_is_directory=True)  # inside: the same files
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.md").write_text("Linked text.")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    names = sorted(file.name for file in discover_files(folder))
    assert names == ["alpha.md", "beta.txt", "gamma.md"]
    names = sorted(file.name for file in discover_files(folder, follow_symlinks=True))
    assert names == ["alpha.md", "beta.txt", "gamma.md", "linked.md"]


def test_ingest_never_reads_outside_its_folder_unless_asked(tmp_path: Path) -> None:
    """A link in docs/ to a file outside it (the system's account list, say) is skipped and named."""
    folder = make_docs(tmp_path / "docs")
    secret = tmp_path / "accounts.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / "accounts.txt").symlink_to(secret)
    (folder / "sub" / "inside.md").symlink_to(folder / "alpha.md")  # inside: read (once, as alpha.md)
    store = open_store(tmp_path / "store")
    report = run(store, folder)
    assert str(secret) not in {meta["path"] for _, meta in all_records(store).values()}
    assert all("root:x" not in text for text, _ in all_records(store).values())
    [(path, reason)] = report.skipped
    assert path == str(folder / "accounts.txt")
    assert f"symbolic link to {secret}, outside {folder}" in reason and "--follow-symlinks" in reason
    followed = ingest(
        open_store(tmp_path / "other"), folder, chunk_tokens=5, count_tokens=words, progress=False, follow_symlinks=True
    )
    assert str(secret) in followed.files_added and not followed.skipped


def test_loops_dangling_links_fifos_and_devices_are_named(tmp_path: Path) -> None:
    folder = make_docs(tmp_path / "docs")
    (folder / "loop.md").symlink_to(folder / "loop.md")
    (folder / "gone.txt").symlink_to(folder / "missing.txt")
    os.mkfifo(folder / "pipe.txt")
    (folder / "null.md").symlink_to("/dev/null")
    report = ingest(
        open_store(tmp_path / "store"), folder, chunk_tokens=5, count_tokens=words, progress=False, follow_symlinks=True
    )  # even when links may be followed
    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert reasons == {
        "loop.md": "is a symbolic link loop",
        "gone.txt": f"is a broken symbolic link (to {folder / 'missing.txt'})",
        "pipe.txt": "is a FIFO (named pipe), not a regular file",
        "null.md": "is a character device, not a regular file",
    }
    assert len(report.files_added) == 3


def test_the_same_file_ingested_from_two_places_does_not_crowd_out_other_chunks(tmp_path: Path) -> None:
    # A re-installed package moves the demo's sample folder: its chunks were stored twice, and the
    # reader's top 6 held 3 texts, each twice.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = make_docs(tmp_path / "one" / "docs")
    second = make_docs(tmp_path / "two" / "docs")
    store = open_store(tmp_path / "store")
    run(store, first)
    run(store, second)
    distinct = {text for text, _ in all_records(store).values()}
    assert store.count() == 2 * len(distinct) > 3
    chunks = store.retrieve("Alpha", top_k=3)
    assert len(chunks) == 3 and len({chunk.text for chunk in chunks}) == 3
    assert [chunk.score for chunk in chunks] == sorted((chunk.score for chunk in chunks), reverse=True)
    every = store.retrieve("Alpha", top_k=100)
    assert sorted(chunk.text for chunk in every) == sorted(distinct)
