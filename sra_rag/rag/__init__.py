"""Retrieval-augmented generation with the whole retrieved context in one prompt.

- ``store``: the ChromaDB store (folder or server) with offline all-MiniLM-L6-v2 embeddings
- ``ingest``: folders of text files into the store, incrementally and restartably
- ``stuffing``: every retrieved chunk into one prompt that fits the context window exactly
- ``reader``: retrieve, stuff and stream an answer with numbered sources
- ``summarizer``: one-pass summaries, map-reduce only when a document cannot fit
- ``commands``: the ``demo``, ``ingest``, ``ask`` and ``summarize`` commands of ``sra-rag``

Modules are imported by path (``from sra_rag.rag.reader import Reader``) so that ChromaDB is only
imported by code that uses the store.
"""
