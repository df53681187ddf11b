"""Summarize a whole document in one pass with Scaled ReAttention.

Run it (the bundled ~3,000-token report by default, or any .txt/.md file):

    python examples/summarize.py
    python examples/summarize.py path/to/document.md --max-new-tokens 200 --no-sra

The document is read in one prompt when it fits the model's context window (32,768 tokens for the
default Qwen2.5-Coder-0.5B, 8,192 for SmolLM2); a longer one falls back to map-reduce, and the script says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sra_rag import SRAConfig, SRAEngine
from sra_rag.rag.samples import long_document_path
from sra_rag.rag.summarizer import Summarizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=long_document_path(), help="document to summarize")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--no-sra", action="store_true", help="stock attention, for comparison")
    args = parser.parse_args()

    engine = SRAEngine.shared()  # the default model (Qwen2.5-Coder-0.5B; $SRA_RAG_MODEL names another)
    sra = SRAConfig(enabled=False) if args.no_sra else None  # None: the model's default settings
    summarizer = Summarizer(engine, sra=sra, max_new_tokens=args.max_new_tokens)
    summary = summarizer.stream(args.file.read_text(encoding="utf-8"), title=args.file.name)
    for piece in summary:
        print(piece, end="", flush=True)
    mode = f"map-reduce over {summary.parts} parts" if summary.map_reduce else "one pass"
    print(f"\n\n[{mode}: {summary.document_tokens} document tokens in a {summary.prompt_tokens}-token prompt]")


if __name__ == "__main__":
    main()
