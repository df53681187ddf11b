"""A RAG app with the sra-rag core only: ingest the bundled sample documents into a persistent
ChromaDB store, retrieve for a question, stuff every retrieved chunk into one prompt and stream an
answer that cites its numbered sources.

Run it:

    python examples/chroma_reader.py "Which radio band does the Windvane W2 use?"
    python examples/chroma_reader.py "Who founded Marrowick?" --store ./my_store --top-k 8 --no-sra

Re-running is cheap: ingestion only embeds new or changed files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sra_rag import SRAConfig, SRAEngine
from sra_rag.rag.ingest import ingest
from sra_rag.rag.reader import Reader
from sra_rag.rag.samples import samples_path
from sra_rag.rag.store import ChromaStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="Which radio band does the Windvane W2 use, and why?")
    parser.add_argument("--store", type=Path, default=Path("sra_rag_store"), help="ChromaDB folder")
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    store = ChromaStore.open(args.store)
    print(ingest(store, samples_path(), progress=False).summary())

    engine = SRAEngine.shared()
    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    reader = Reader(engine, store, top_k=args.top_k, sra=sra, max_new_tokens=args.max_new_tokens)
    answer = reader.stream(args.question)
    for piece in answer:
        print(piece, end="", flush=True)
    print("\n\nSources:")
    for number, source in enumerate(answer.sources, start=1):
        print(f"[{number}] {source}")


if __name__ == "__main__":
    main()
