"""Generation: a request as data (:mod:`~sra_rag.generation.request`), the engine's input side
(:mod:`~sra_rag.generation.inputs`: tokenising, prompt preparation, request checks), chat rendering
(:mod:`~sra_rag.generation.chat`), structured output and tools (:mod:`~sra_rag.generation.structured`,
:mod:`~sra_rag.generation.tools`), the batching policy (:mod:`~sra_rag.generation.scheduler`), the
model runner that makes the forward passes (:mod:`~sra_rag.generation.runner`), the automatic prefix
cache it reuses KV from (:mod:`~sra_rag.generation.prefix_cache`), the CPU weight formats
(:mod:`~sra_rag.generation.weights`), the threads CPU work runs on (:mod:`~sra_rag.generation.compute`),
sampling and the loop guard (:mod:`~sra_rag.generation.sampling`)
and the streams callers read (:mod:`~sra_rag.generation.streaming`).
"""
