"""Property-based tests of ingestion: random small trees of files (names that are not UTF-8, hidden
files, other suffixes, several encodings, binary and empty files), random edits and deletions between
runs, and runs interrupted at a random store operation. Whatever happens, every run ends with a
report (bad files skipped by name) or the interruption, and after a last complete run the store
equals a clean ingest of the final tree. A hashing embedding and a word counter keep it fast."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sra_rag.rag.ingest import IngestReport, ingest
from sra_rag.rag.store import ChromaStore

CHUNK_WORDS = 4
NAMES = [
    b"a.txt",
    b"b.md",
    b"sub/c.txt",
    b"sub/deep/d.markdown",
    b"caf\xe9.txt",
    b"r\xe9sum\xe9/e.txt",
    b".hidden.txt",
    b".git/f.md",
    b"g.pdf",
    b"H.TXT",
]
WORDS = ["harbour", "ferry", "leave", "café", "naïve", "東京", "pier", "3", "08:30", "x" * 30]


class HashEmbedding(EmbeddingFunction[Documents]):
    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> Embeddings:
        return [
            np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8).astype(np.float32) + 1
            for text in input
        ]

    @staticmethod
    def name() -> str:
        return "test_property_hash"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashEmbedding:
        return HashEmbedding()


class Interrupted(BaseException):
    """A simulated kill: not an Exception, so nothing may swallow it."""


class InterruptibleStore(ChromaStore):
    """A store whose ``after``-th write (add, delete or metadata update) raises :class:`Interrupted`."""

    after: int | None = None
    writes: int = 0

    def _write(self) -> None:
        self.writes += 1
        if self.after is not None and self.writes >= self.after:
            raise Interrupted

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        super().add(*args, **kwargs)

    def delete(self, ids: Any) -> None:
        self._write()
        super().delete(ids)

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        super().update_metadata(*args, **kwargs)


_client = chromadb.EphemeralClient()
_names = itertools.count()


def fresh_store() -> InterruptibleStore:
    collection = _client.create_collection(f"property-{next(_names)}", embedding_function=HashEmbedding())
    return InterruptibleStore(collection, "memory")


def snapshot(store: ChromaStore) -> dict[str, tuple[str, dict[str, Any]]]:
    records = store.collection.get(include=["documents", "metadatas"])
    return {
        record: (text, dict(meta))
        for record, text, meta in zip(records["ids"], records["documents"], records["metadatas"], strict=True)
    }


def words(text: str) -> int:
    return len(text.split())


def run(store: ChromaStore, folder: Path) -> IngestReport:
    return ingest(store, folder, chunk_tokens=CHUNK_WORDS, count_tokens=words, progress=False)


paragraphs = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9).map(" ".join), min_size=1, max_size=4)
texts = paragraphs.flatmap(lambda parts: st.sampled_from(["\n\n", "\r\n\r\n", "\n"]).map(lambda sep: sep.join(parts)))
contents = st.one_of(
    st.tuples(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]), texts).map(
        lambda pair: pair[1].encode(pair[0], errors="replace")
    ),
    st.sampled_from([b"", b" \n\t\n", b"\x89PNG\r\n\x1a\n\x00\x00", b"\xff\xfe\xfd text"]),
)
trees = st.dictionaries(st.sampled_from(NAMES), contents, max_size=6)
steps = st.lists(st.tuples(trees, st.one_of(st.none(), st.integers(1, 6))), min_size=1, max_size=4)


def write_tree(folder: Path, tree: dict[bytes, bytes]) -> None:
    """Make ``folder`` hold exactly ``tree`` (names are bytes, so names that are not UTF-8 work)."""
    root = os.fsencode(folder)
    if folder.exists():
        shutil.rmtree(root)
    os.makedirs(root)
    for name, content in tree.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)


def expected_skips(tree: dict[bytes, bytes]) -> set[str]:
    """The files of ``tree`` that a run must report as skipped (ingestible suffix, not hidden, and a
    name that is not UTF-8 or content that is binary, not UTF-8 or blank)."""
    skipped = set()
    for name, content in tree.items():
        if name.startswith(b".") or not name.lower().endswith((b".txt", b".md", b".markdown")):
            continue
        try:
            name.decode()
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            skipped.add(name.decode("utf-8", "backslashreplace"))
            continue
        if "\x00" in text or not text.strip():
            skipped.add(name.decode())
    return skipped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_the_store_always_equals_a_clean_ingest_of_the_tree(steps: list[tuple[dict[bytes, bytes], int | None]]) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary, "docs")
        store = fresh_store()
        for tree, interrupt_after in steps:
            write_tree(folder, tree)
            store.after, store.writes = interrupt_after, 0
            try:
                report = run(store, folder)
            except Interrupted:
                event("a run was interrupted")
                continue
            # A complete run reports every bad file by name, and leaves the store as a clean ingest would.
            root = str(folder.resolve())
            assert {os.path.relpath(path, root) for path, _ in report.skipped} == expected_skips(tree)
            clean = fresh_store()
            run(clean, folder)
            assert snapshot(store) == snapshot(clean)
        store.after = None
        run(store, folder)
        clean = fresh_store()
        run(clean, folder)
        assert snapshot(store) == snapshot(clean)
        assert all(meta["num_chunks"] > 0 for _, meta in snapshot(store).values())
