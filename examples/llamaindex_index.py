"""A LlamaIndex-native RAG app: the bundled sample documents in a LlamaIndex ``VectorStoreIndex``
embedded by ``MiniLMEmbedding`` (the bundled all-MiniLM-L6-v2, offline), every retrieved node stuffed
into one prompt for ``SRALLM``, and a streamed answer that cites its numbered sources.

Run it (needs ``pip install -e integrations/llama-index-llms-sra``; ``make install`` does this):

    python examples/llamaindex_index.py "When does the ferry to Skelda leave?"
    python examples/llamaindex_index.py "Who founded Marrowick?" --top-k 8 --no-sra

The index lives in memory and is rebuilt on every run (a few seconds for the samples); for a persistent
store see ``examples/llamaindex_reader.py``.
"""

from __future__ import annotations

import argparse

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.llms.sra import SRALLM, MiniLMEmbedding
from llama_index.llms.sra.query_engine import SRAQueryEngine

from sra_rag import SRAConfig
from sra_rag.rag.samples import samples_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="When does the ferry to Skelda leave?")
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    documents = SimpleDirectoryReader(str(samples_path())).load_data()
    index = VectorStoreIndex.from_documents(documents, embed_model=MiniLMEmbedding())
    print(f"Indexed {len(documents)} documents.")

    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    query_engine = SRAQueryEngine(
        retriever=index.as_retriever(similarity_top_k=args.top_k),
        llm=SRALLM(
            max_new_tokens=args.max_new_tokens
        ),  # the default model (Qwen2.5-Coder-0.5B; $SRA_RAG_MODEL names another)
        sra=sra,
        streaming=True,
    )
    response = query_engine.query(args.question)
    response.print_response_stream()
    print("\n\nSources:")
    for number, source in enumerate(response.metadata["sources"], start=1):
        print(f"[{number}] {source}")


if __name__ == "__main__":
    main()
