"""A LangChain RAG app: the bundled sample documents in a persistent ChromaDB store, every retrieved
document stuffed into one prompt for ``ChatSRA``, and a streamed answer that cites its numbered
sources.

Run it (needs ``pip install -e integrations/langchain-sra``; ``make install`` does this):

    python examples/langchain_reader.py "How much is the hotel limit in Valdenmoor?"
    python examples/langchain_reader.py "When does the ferry to Skelda leave?" --store ./my_store --no-sra
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_sra import ChatSRA
from langchain_sra.chains import ChunkRetriever, create_stuffed_rag_chain

from sra_rag import SRAConfig
from sra_rag.rag.ingest import ingest
from sra_rag.rag.samples import samples_path
from sra_rag.rag.store import ChromaStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="How much is the hotel limit in Valdenmoor?")
    parser.add_argument("--store", type=Path, default=Path("sra_rag_store"), help="ChromaDB folder")
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    store = ChromaStore.open(args.store)
    print(ingest(store, samples_path(), progress=False).summary())

    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    chain = create_stuffed_rag_chain(
        ChunkRetriever(store=store, top_k=args.top_k),
        ChatSRA(
            max_new_tokens=args.max_new_tokens
        ),  # the default model (Qwen2.5-Coder-0.5B; $SRA_RAG_MODEL names another)
        sra=sra,
    )
    sources: list[str] = []
    for chunk in chain.stream({"input": args.question}):
        print(chunk.get("answer", ""), end="", flush=True)
        sources = chunk.get("sources", sources)
    print("\n\nSources:")
    for number, source in enumerate(sources, start=1):
        print(f"[{number}] {source}")


if __name__ == "__main__":
    main()
