"""A LlamaIndex RAG app: the bundled sample documents in a persistent ChromaDB store, every retrieved
node stuffed into one prompt for ``SRALLM``, and a streamed answer that cites its numbered sources.

Run it (needs ``pip install -e integrations/llama-index-llms-sra``; ``make install`` does this):

    python examples/llamaindex_reader.py "Who approves leave during the Storm Fortnight?"
    python examples/llamaindex_reader.py "When was the lighthouse built?" --store ./my_store --top-k 8 --no-sra
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.llms.sra import SRALLM
from llama_index.llms.sra.query_engine import ChunkRetriever, SRAQueryEngine

from sra_rag import SRAConfig
from sra_rag.rag.ingest import ingest
from sra_rag.rag.samples import samples_path
from sra_rag.rag.store import ChromaStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Who approves leave during the Storm Fortnight?")
    parser.add_argument("--store", type=Path, default=Path("sra_rag_store"), help="ChromaDB folder")
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    store = ChromaStore.open(args.store)
    print(ingest(store, samples_path(), progress=False).summary())

    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    query_engine = SRAQueryEngine(
        retriever=ChunkRetriever(store, top_k=args.top_k),
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
