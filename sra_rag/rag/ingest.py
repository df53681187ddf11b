"""Ingest folders of text documents into a :class:`~sra_rag.rag.store.ChromaStore`.

Every chunk's id is derived from the file's absolute path, the chunk's index and a hash of its text,
so ingestion is incremental and restartable. For each file:

1. The file is read once as bytes: its SHA-256, and whether it can be ingested at all (readable, no
   NUL bytes, UTF-8, not blank). A file that cannot is reported in :attr:`IngestReport.skipped`, and
   its chunks from earlier runs are deleted, so text removed from the folder is no longer retrieved.
2. If the store holds exactly this file's chunks already (same hash, chunk budget, source and root,
   every index once), nothing else happens: re-ingesting an unchanged file costs one read.
3. Otherwise the file is read again as a stream and split; chunks whose ids are not stored are
   embedded and added in batches, then the file's stale chunks are deleted, then every chunk's
   metadata (``file_sha256``, ``num_chunks``, ...) is brought up to date.

An interrupted run leaves each file either complete or with some new chunks added and some stale
ones left; the next run sees the difference in step 2 and completes it. Files under an ingested folder
that were ingested before and are gone now have their chunks deleted (``prune``).

Names that are not valid UTF-8 (Chroma stores text), unreadable folders, symbolic links that loop,
dangle or lead out of the folder (unless ``follow_symlinks``), FIFOs, devices and sockets are
reported and skipped; nothing aborts the run but the store itself failing.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sra_rag.rag.splitting import ChunkTooLargeError, TokenCounter, split_stream
from sra_rag.rag.store import ChromaStore

logger = logging.getLogger(__name__)

DEFAULT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst")
DEFAULT_CHUNK_TOKENS = 200
"""Chunk size in embedding-model tokens: all-MiniLM-L6-v2 embeds at most 254, so a chunk is embedded whole."""
ADD_BATCH = 128
"""Chunks embedded and stored per Chroma request."""
_READ_BLOCK = 1 << 20
_PROVISIONAL = -1
"""``num_chunks`` of chunks added before the file's last chunk is known; replaced in step 3."""


class UnreadableFileError(ValueError):
    """A file that cannot be ingested as text (unreadable, binary, not UTF-8 or blank)."""


@dataclass
class IngestReport:
    """What one ingest run did. ``skipped`` lists ``(path, reason)`` for files and folders left
    out (a path that is not valid UTF-8 is shown with its undecodable bytes escaped, ``\\xe9``).
    ``files_removed`` lists files whose earlier chunks were deleted: gone from the folder, or
    skipped this time. ``chunks_updated`` counts stored chunks whose metadata was refreshed."""

    files_added: list[str] = field(default_factory=list)
    files_updated: list[str] = field(default_factory=list)
    files_unchanged: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_deleted: int = 0
    chunks_updated: int = 0

    @property
    def files_seen(self) -> int:
        return len(self.files_added) + len(self.files_updated) + len(self.files_unchanged) + len(self.skipped)

    def summary(self) -> str:
        return (
            f"{self.files_seen} files: {len(self.files_added)} new, {len(self.files_updated)} changed, "
            f"{len(self.files_unchanged)} unchanged, {len(self.skipped)} skipped, {len(self.files_removed)} removed; "
            f"{self.chunks_added} chunks added, {self.chunks_deleted} deleted"
        )


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as printable text: bytes that are not UTF-8 are shown escaped (``caf\\xe9.txt``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def discover_files(
    path: str | os.PathLike[str], suffixes: Iterable[str] = DEFAULT_SUFFIXES, *, follow_symlinks: bool = False
) -> list[Path]:
    """The text files to ingest: ``path`` itself if it is a file, else every regular file under the
    folder whose suffix is in ``suffixes`` (case-insensitive), hidden files and folders excluded,
    sorted. Symbolic links are followed only where they stay inside the folder, unless
    ``follow_symlinks``."""
    return _discover(Path(path), suffixes, follow_symlinks)[0]


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _discover(
    root: Path, suffixes: Iterable[str], follow_symlinks: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files to ingest, and every file or folder left out with the reason, ``(path, reason)``:
    unreadable folders, symbolic links that loop, dangle or (without ``follow_symlinks``) lead out
    of ``root``, and wanted names that are not regular files (FIFOs, devices, sockets), which would
    block or never end if read."""
    if root.is_file():
        return [root.resolve()], []
    if not root.is_dir():
        raise FileNotFoundError(f"Nothing to ingest at {display_path(root)}: no such file or folder.")
    wanted = {suffix.lower() for suffix in suffixes}
    base = os.path.realpath(root)
    skipped: list[tuple[str, str]] = []

    def note(error: OSError) -> None:
        skipped.append((display_path(error.filename or root), f"folder cannot be read ({error.strerror or error})"))

    def outside(link: Path, real: str) -> bool:
        if follow_symlinks or real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return False
        reason = (
            f"is a symbolic link to {display_path(real)}, outside {display_path(base)}; "
            "pass --follow-symlinks (follow_symlinks=True) to ingest what it points to"
        )
        skipped.append((display_path(link), reason))
        return True

    found, visited = set(), set()
    for folder, folders, names in os.walk(root, onerror=note, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink back into a folder already walked
            folders[:] = []
            continue
        visited.add(real)
        kept = []
        for name in sorted(folders):
            linked = Path(folder, name)
            if name.startswith(".") or (linked.is_symlink() and outside(linked, os.path.realpath(linked))):
                continue
            kept.append(name)
        folders[:] = kept
        for name in names:
            file = Path(folder, name)
            if name.startswith(".") or file.suffix.lower() not in wanted:
                continue
            reason = _not_a_file(file)
            if reason is not None:
                skipped.append((display_path(file), reason))
                continue
            target = os.path.realpath(file)
            if file.is_symlink() and outside(file, target):
                continue
            found.add(Path(target))
    return sorted(found), skipped


def _not_a_file(file: Path) -> str | None:
    """Why ``file`` (a name with a wanted suffix) cannot be read as a text file, or None."""
    try:
        mode = os.stat(file).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if error.errno == errno.ENOENT and file.is_symlink():
            return f"is a broken symbolic link (to {display_path(os.readlink(file))})"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kind = next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def chunk_id(path: str, index: int, text: str) -> str:
    """Stable id of a chunk: the same file, position and text always give the same id."""
    path_hash = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    text_hash = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{path_hash}-{index:05d}-{text_hash}"


def embedding_token_counter(model_path: str | os.PathLike[str] | None = None) -> Callable[[str], int]:
    """Count tokens as the embedding model reads them, never truncated (see
    :func:`sra_rag.rag.embeddings.token_counter`)."""
    from sra_rag.rag.embeddings import token_counter

    return token_counter(model_path)


def check_file(path: Path) -> str:
    """The SHA-256 of ``path``'s bytes if it can be ingested as text; else
    :class:`UnreadableFileError` naming the reason (read in blocks: memory stays small)."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    blank = True
    offset = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
                if b"\x00" in block:
                    raise UnreadableFileError("looks binary (contains NUL bytes)")
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as error:
                    raise UnreadableFileError(f"is not UTF-8 text (byte {offset + error.start})") from error
                blank = blank and not text.strip()
                offset += len(block)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as error:
                raise UnreadableFileError(f"is not UTF-8 text (byte {offset + error.start})") from error
    except OSError as error:
        raise UnreadableFileError(f"cannot be read ({error.strerror or error})") from error
    if blank:
        raise UnreadableFileError("is empty")
    return digest.hexdigest()


def read_text(path: Path) -> str:
    """The file's whole text, decoded as UTF-8 (a BOM is dropped). Raises
    :class:`UnreadableFileError` naming the reason for unreadable, binary or undecodable files."""
    check_file(path)
    return "".join(_read_blocks(path, None))


def _read_blocks(path: Path, expected_sha256: str | None) -> Iterator[str]:
    """The file's text in blocks; with ``expected_sha256``, raises :class:`UnreadableFileError` at
    the end if the bytes read are not those checked before (the file changed meanwhile)."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        with path.open("rb") as handle:
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
                yield decoder.decode(block)
            yield decoder.decode(b"", final=True)
    except OSError as error:
        raise UnreadableFileError(f"cannot be read ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise UnreadableFileError("changed while it was being ingested (it is no longer UTF-8); run again") from error
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise UnreadableFileError("changed while it was being ingested; run ingest again")


def ingest(
    store: ChromaStore,
    path: str | os.PathLike[str],
    *,
    suffixes: Iterable[str] = DEFAULT_SUFFIXES,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    count_tokens: TokenCounter | None = None,
    prune: bool = True,
    progress: bool = True,
    follow_symlinks: bool = False,
) -> IngestReport:
    """Ingest a file or a folder of text files into ``store``; see the module docstring for ids,
    updates and restarts.

    ``chunk_tokens``: the largest chunk, in tokens of ``count_tokens`` (default: the embedding
    model's tokens, counted without truncation; at most what the model embeds, 254). ``prune``: also
    delete chunks of files that were ingested from this folder before but no longer exist.
    ``progress``: a progress bar on stderr that advances chunk by chunk (in bytes of text, with the
    number of chunks stored). ``follow_symlinks``: also read what symbolic links under the folder
    point to outside it (by default such links are skipped and named in the report, so ingesting a
    folder never reads outside it).
    """
    from tqdm.auto import tqdm

    if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if count_tokens is None:
        from sra_rag.rag.embeddings import EMBEDDING_NAME, max_tokens

        if chunk_tokens > max_tokens():
            raise ValueError(
                f"chunk_tokens={chunk_tokens} is more than {EMBEDDING_NAME} embeds ({max_tokens()} tokens): the rest "
                f"of each chunk would be left out of its embedding. Use at most {max_tokens()}."
            )
        count_tokens = embedding_token_counter()
    given = Path(path)
    root = given.resolve()
    root_key = str(root if root.is_dir() else root.parent)
    if not _is_utf8(root_key):
        raise ValueError(
            f"The folder {display_path(root_key)} has a name that is not valid UTF-8, which the store cannot "
            "record; rename it."
        )
    files, unlisted = _discover(given, suffixes, follow_symlinks)
    report = IngestReport(skipped=list(unlisted))
    total = sum(_size(file) for file in files)
    with tqdm(total=total, desc="Ingesting", unit="B", unit_scale=True, disable=not progress) as bar:
        for file in files:
            key = str(file)
            if not _is_utf8(key):
                _skip(report, key, "has a name that is not valid UTF-8, which the store cannot record; rename it")
                continue
            done = bar.n
            try:
                _ingest_file(store, file, root_key, chunk_tokens, count_tokens, report, bar)
            except (UnreadableFileError, ChunkTooLargeError) as error:
                _skip(report, key, str(error))
                _forget(store, key, report)
            bar.update(max(0, done + _size(file) - bar.n))
    if prune and given.is_dir():
        _prune(store, root_key, {str(file) for file in files}, report)
    logger.info("Ingested %s into %s: %s", display_path(path), store.location, report.summary())
    return report


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def _skip(report: IngestReport, path: str, reason: str) -> None:
    logger.info("Skipping %s: %s", display_path(path), reason)
    report.skipped.append((display_path(path), reason))


def _ingest_file(
    store: ChromaStore,
    file: Path,
    root: str,
    chunk_tokens: int,
    count_tokens: TokenCounter,
    report: IngestReport,
    bar: Any,
) -> None:
    key = str(file)
    digest = check_file(file)
    parent = Path(root).parent
    source = os.path.relpath(file, parent) if file.is_relative_to(parent) else key
    expected = {
        "source": Path(source).as_posix(),
        "path": key,
        "root": root,
        "file_sha256": digest,
        "chunk_tokens": chunk_tokens,
    }
    stored = dict(store.records({"path": key}))
    if _is_complete(stored, expected):
        report.files_unchanged.append(key)
        return

    kept: dict[str, int] = {}  # stored chunk -> its index in the file now
    provisional: dict[str, int] = {}  # added before the chunk count was known
    pending: list[tuple[str, int, str]] = []

    def flush(num_chunks: int) -> None:
        store.add(
            [record for record, _, _ in pending],
            [text for _, _, text in pending],
            [{**expected, "chunk_index": index, "num_chunks": num_chunks} for _, index, _ in pending],
        )
        if num_chunks == _PROVISIONAL:
            provisional.update((record, index) for record, index, _ in pending)
        report.chunks_added += len(pending)
        bar.set_postfix_str(f"{report.chunks_added:,} chunks stored", refresh=False)
        pending.clear()

    count = 0
    for index, text in enumerate(split_stream(_read_blocks(file, digest), chunk_tokens, count_tokens)):
        count = index + 1
        record = chunk_id(key, index, text)
        if record in stored:
            kept[record] = index
        else:
            # The last batch waits for the end of the file, so a short file is stored complete at once.
            if len(pending) == ADD_BATCH:
                flush(_PROVISIONAL)
            pending.append((record, index, text))
        bar.update(len(text.encode("utf-8", "surrogatepass")))
    if pending:
        flush(count)

    stale = [record for record in stored if record not in kept]
    for start in range(0, len(stale), ADD_BATCH):
        store.delete(stale[start : start + ADD_BATCH])
    report.chunks_deleted += len(stale)

    def final(index: int) -> dict[str, Any]:
        return {**expected, "chunk_index": index, "num_chunks": count}

    outdated = [(record, index) for record, index in kept.items() if stored[record] != final(index)]
    outdated += list(provisional.items())
    for start in range(0, len(outdated), ADD_BATCH):
        batch = outdated[start : start + ADD_BATCH]
        store.update_metadata([record for record, _ in batch], [final(index) for _, index in batch])
    report.chunks_updated += len(outdated)
    (report.files_updated if stored else report.files_added).append(key)


def _is_complete(stored: dict[str, dict[str, Any]], expected: dict[str, Any]) -> bool:
    """Whether ``stored`` is exactly one complete, current set of chunks of the file."""
    if not stored:
        return False
    indexes = set()
    for metadata in stored.values():
        if any(metadata.get(name) != value for name, value in expected.items()):
            return False
        if metadata.get("num_chunks") != len(stored):
            return False
        indexes.add(metadata.get("chunk_index"))
    return indexes == set(range(len(stored)))


def _forget(store: ChromaStore, path: str, report: IngestReport) -> None:
    """Delete every stored chunk of ``path`` (a file that is skipped now)."""
    records = [record for record, _ in store.records({"path": path})]
    for start in range(0, len(records), ADD_BATCH):
        store.delete(records[start : start + ADD_BATCH])
    if records:
        report.files_removed.append(path)
        report.chunks_deleted += len(records)


def _prune(store: ChromaStore, root: str, present: set[str], report: IngestReport) -> None:
    gone: dict[str, list[str]] = {}
    for record, metadata in store.records({"root": root}):
        path = str(metadata.get("path"))
        if path not in present:
            gone.setdefault(path, []).append(record)
    for path, records in sorted(gone.items()):
        for start in range(0, len(records), ADD_BATCH):
            store.delete(records[start : start + ADD_BATCH])
        report.files_removed.append(path)
        report.chunks_deleted += len(records)
