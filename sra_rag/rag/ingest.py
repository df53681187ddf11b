"""Ingest folders of text documents into a :class:`~sra_rag.rag.store.ChromaStore`.

Every chunk's id is derived from the file's absolute path, the chunk's index and a hash of its text,
so ingestion is incremental and restartable:

- re-ingesting an unchanged file computes the same ids, finds them stored and embeds nothing;
- a changed file gets new ids: the new chunks are added first, then the file's old chunks deleted;
- an interrupted run leaves each file either complete, untouched, or with some new chunks added and
  its old ones not yet deleted; running again adds what is missing and deletes what is stale.

Unreadable, binary, non-UTF-8 and empty files are reported in :attr:`IngestReport.skipped` and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sra_rag.rag.splitting import split_text
from sra_rag.rag.store import ChromaStore

logger = logging.getLogger(__name__)

DEFAULT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst")
DEFAULT_CHUNK_TOKENS = 200
"""Chunk size in embedding-model tokens: all-MiniLM-L6-v2 embeds at most 256, so a chunk is embedded whole."""
_ADD_BATCH = 64
_BINARY_PROBE_BYTES = 8192


class UnreadableFileError(ValueError):
    """A file that cannot be ingested as text (unreadable, binary or not UTF-8)."""


@dataclass
class IngestReport:
    """What one ingest run did. ``skipped`` lists ``(path, reason)`` for files left out."""

    files_added: list[str] = field(default_factory=list)
    files_updated: list[str] = field(default_factory=list)
    files_unchanged: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_deleted: int = 0

    @property
    def files_seen(self) -> int:
        return len(self.files_added) + len(self.files_updated) + len(self.files_unchanged) + len(self.skipped)

    def summary(self) -> str:
        return (
            f"{self.files_seen} files: {len(self.files_added)} new, {len(self.files_updated)} changed, "
            f"{len(self.files_unchanged)} unchanged, {len(self.skipped)} skipped, {len(self.files_removed)} removed; "
            f"{self.chunks_added} chunks added, {self.chunks_deleted} deleted"
        )


def discover_files(path: str | os.PathLike[str], suffixes: Iterable[str] = DEFAULT_SUFFIXES) -> list[Path]:
    """The text files to ingest: ``path`` itself if it is a file, else every file under the folder
    whose suffix is in ``suffixes`` (case-insensitive), hidden files and folders excluded, sorted."""
    root = Path(path)
    if root.is_file():
        return [root.resolve()]
    if not root.is_dir():
        raise FileNotFoundError(f"Nothing to ingest at {root}: no such file or folder.")
    wanted = {suffix.lower() for suffix in suffixes}
    return sorted(
        file.resolve()
        for file in root.rglob("*")
        if file.is_file()
        and file.suffix.lower() in wanted
        and not any(part.startswith(".") for part in file.relative_to(root).parts)
    )


def read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (a BOM is dropped). Raises :class:`UnreadableFileError`
    naming the reason for unreadable, binary or undecodable files."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableFileError(f"cannot be read ({error.strerror or error})") from error
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        raise UnreadableFileError("looks binary (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableFileError(f"is not UTF-8 text (byte {error.start})") from error


def chunk_id(path: str, index: int, text: str) -> str:
    """Stable id of a chunk: the same file, position and text always give the same id."""
    path_hash = hashlib.sha256(path.encode()).hexdigest()[:16]
    text_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{path_hash}-{index:05d}-{text_hash}"


def embedding_token_counter(model_path: str | os.PathLike[str] | None = None) -> Callable[[str], int]:
    """Count tokens with the embedding model's tokenizer (only the tokenizer is loaded)."""
    from transformers import AutoTokenizer

    from sra_rag.rag.store import embedding_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(model_path or embedding_model_path()), local_files_only=True)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def ingest(
    store: ChromaStore,
    path: str | os.PathLike[str],
    *,
    suffixes: Iterable[str] = DEFAULT_SUFFIXES,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    count_tokens: Callable[[str], int] | None = None,
    prune: bool = True,
    progress: bool = True,
) -> IngestReport:
    """Ingest a file or a folder of text files into ``store``; see the module docstring for ids,
    updates and restarts.

    ``chunk_tokens``: the largest chunk, in tokens of ``count_tokens`` (default: the embedding
    model's tokenizer). ``prune``: also delete chunks of files that were ingested from this folder
    before but no longer exist. ``progress``: show a tqdm bar on stderr.
    """
    from tqdm.auto import tqdm

    files = discover_files(path, suffixes)
    root = Path(path).resolve()
    root_key = str(root if root.is_dir() else root.parent)
    counter = count_tokens or embedding_token_counter()
    report = IngestReport()
    for file in tqdm(files, desc="Ingesting", unit="file", disable=not progress):
        try:
            text = read_text(file)
        except UnreadableFileError as error:
            _skip(report, file, str(error))
            continue
        pieces = split_text(text, chunk_tokens, counter)
        if not pieces:
            _skip(report, file, "is empty")
            continue
        _ingest_file(store, file, root_key, text, pieces, report)
    if prune and Path(path).is_dir():
        _prune(store, root_key, {str(file) for file in files}, report)
    logger.info("Ingested %s into %s: %s", path, store.location, report.summary())
    return report


def _skip(report: IngestReport, file: Path, reason: str) -> None:
    logger.info("Skipping %s: %s", file, reason)
    report.skipped.append((str(file), reason))


def _ingest_file(store: ChromaStore, file: Path, root: str, text: str, pieces: list[str], report: IngestReport) -> None:
    key = str(file)
    source = os.path.relpath(file, Path(root).parent) if file.is_relative_to(Path(root).parent) else key
    file_sha = hashlib.sha256(text.encode()).hexdigest()
    ids = [chunk_id(key, index, piece) for index, piece in enumerate(pieces)]
    stored = set(store.collection.get(where={"path": key}, include=[])["ids"])
    missing = [index for index, chunk in enumerate(ids) if chunk not in stored]
    stale = sorted(stored - set(ids))
    if not missing and not stale:
        report.files_unchanged.append(key)
        return
    for start in range(0, len(missing), _ADD_BATCH):
        batch = missing[start : start + _ADD_BATCH]
        store.collection.add(
            ids=[ids[index] for index in batch],
            documents=[pieces[index] for index in batch],
            metadatas=[_metadata(source, key, root, index, file_sha, len(pieces)) for index in batch],
        )
    if stale:
        store.collection.delete(ids=stale)
    (report.files_updated if stored else report.files_added).append(key)
    report.chunks_added += len(missing)
    report.chunks_deleted += len(stale)


def _metadata(source: str, path: str, root: str, index: int, file_sha: str, num_chunks: int) -> dict[str, Any]:
    return {
        "source": Path(source).as_posix(),
        "path": path,
        "root": root,
        "chunk_index": index,
        "num_chunks": num_chunks,
        "file_sha256": file_sha,
    }


def _prune(store: ChromaStore, root: str, present: set[str], report: IngestReport) -> None:
    records = store.collection.get(where={"root": root}, include=["metadatas"])
    gone: dict[str, list[str]] = {}
    for record_id, metadata in zip(records["ids"], records["metadatas"] or [], strict=True):
        path = str((metadata or {}).get("path"))
        if path not in present:
            gone.setdefault(path, []).append(record_id)
    for path, ids in sorted(gone.items()):
        store.collection.delete(ids=ids)
        report.files_removed.append(path)
        report.chunks_deleted += len(ids)
