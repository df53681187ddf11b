"""Benchmarks, apart from the library code: the engine against stock SDPA (:mod:`~sra_rag.bench.engine`,
``make bench``), structured output (:mod:`~sra_rag.bench.structured`), ingest
(:mod:`~sra_rag.bench.ingest`) and the HTTP server (:mod:`~sra_rag.bench.server`)."""
