"""A LangChain-native RAG app: the bundled sample documents, one LangChain ``Document`` per paragraph,
in an ``InMemoryVectorStore`` embedded by ``MiniLMEmbeddings`` (the bundled all-MiniLM-L6-v2,
offline), every retrieved document stuffed into one prompt for ``ChatSRA``, and a streamed answer that
cites its numbered sources.

Run it (needs ``pip install -e integrations/langchain-sra``; ``make install`` does this):

    python examples/langchain_vector_store.py "How much is the hotel limit in Valdenmoor?"
    python examples/langchain_vector_store.py "When does the ferry to Skelda leave?" --top-k 8 --no-sra

The vector store lives in memory and is rebuilt on every run; for a persistent store see
``examples/langchain_reader.py``.
"""

from __future__ import annotations

import argparse

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_sra import ChatSRA, MiniLMEmbeddings
from langchain_sra.chains import create_stuffed_rag_chain

from sra_rag import SRAConfig
from sra_rag.rag.samples import samples_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="How much is the hotel limit in Valdenmoor?")
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    documents = [
        Document(page_content=paragraph.strip(), metadata={"source": f"samples/{file.name}", "chunk_index": index})
        for file in sorted(samples_path().iterdir())
        for index, paragraph in enumerate(file.read_text(encoding="utf-8").split("\n\n"))
        if paragraph.strip()
    ]
    store = InMemoryVectorStore.from_documents(documents, MiniLMEmbeddings())
    print(f"Embedded {len(documents)} paragraphs.")

    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    chain = create_stuffed_rag_chain(
        store.as_retriever(search_kwargs={"k": args.top_k}),
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
