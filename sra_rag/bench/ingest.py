"""How fast ingestion runs: ``python -m sra_rag.bench.ingest`` (``make bench-ingest``).

Each case writes one generated file (seeded), ingests it into a fresh store with the real
all-MiniLM-L6-v2 embeddings, in a fresh process (so that its peak memory is its own), and reports
chunks per second, MB per minute, the peak resident memory, the largest chunk in embedding tokens
(counted without truncation) and how long re-ingesting the unchanged file takes. The cases:

- ``prose``: the bundled sample documents repeated, with numbered sections, to the size asked;
- ``plain``: letters without any whitespace (a base64 dump, a minified file), the splitter's worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = ("prose", "plain")


def write_case(case: str, megabytes: float, path: Path, seed: int = 0) -> int:
    """Write the ``case`` text of about ``megabytes`` MB to ``path``; return its size in bytes."""
    size = int(megabytes * 1_000_000)
    if case == "plain":
        generator = random.Random(seed)
        path.write_text("".join(generator.choices(string.ascii_letters + string.digits, k=size)))
    else:
        from sra_rag.rag.samples import samples_path

        documents = [file.read_text(encoding="utf-8") for file in sorted(samples_path().iterdir())]
        with path.open("w", encoding="utf-8") as out:
            written, section = 0, 0
            while written < size:
                text = f"## Section {section}\n\n{documents[section % len(documents)]}\n\n"
                out.write(text)
                written += len(text.encode())
                section += 1
    return path.stat().st_size


def run_case(case: str, megabytes: float, chunk_tokens: int) -> dict[str, Any]:
    """One case in this process: ingest, re-ingest, and the figures of :func:`main`'s table."""
    from sra_rag.rag.embeddings import token_counter
    from sra_rag.rag.ingest import ingest
    from sra_rag.rag.store import ChromaStore

    with tempfile.TemporaryDirectory(prefix="sra-rag-bench-") as temporary:
        folder = Path(temporary, "docs")
        folder.mkdir()
        size = write_case(case, megabytes, folder / f"{case}.txt")
        store = ChromaStore.open(Path(temporary, "store"))
        store.add(["warm-up"], ["Load the embedding model before timing."], [{"path": "warm-up"}])
        store.delete(["warm-up"])
        start = time.perf_counter()
        report = ingest(store, folder, chunk_tokens=chunk_tokens, progress=True)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest(store, folder, chunk_tokens=chunk_tokens, progress=False)
        reingest = time.perf_counter() - start
        count = token_counter()
        documents = store.collection.get(include=["documents"])["documents"] or []
        largest = max((count(text) for text in documents), default=0)
    assert again.chunks_added == 0 and report.chunks_added == len(documents)
    return {
        "case": case,
        "megabytes": size / 1_000_000,
        "chunks": report.chunks_added,
        "seconds": seconds,
        "chunks_per_second": report.chunks_added / seconds,
        "megabytes_per_minute": size / 1_000_000 / seconds * 60,
        "largest_chunk_tokens": largest,
        "reingest_seconds": reingest,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| text | size (MB) | chunks | time (s) | chunks/s | MB/min | largest chunk (tokens) | peak RSS (MB) "
        "| re-ingest (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        lines.append(
            f"| {row['case']} | {row['megabytes']:.1f} | {row['chunks']:,} | {row['seconds']:.0f} | "
            f"{row['chunks_per_second']:.1f} | {row['megabytes_per_minute']:.2f} | {row['largest_chunk_tokens']} | "
            f"{row['peak_rss_mb']:.0f} | {row['reingest_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prose-mb", type=float, default=20.0, help="Size of the prose file (0: skip).")
    parser.add_argument("--plain-mb", type=float, default=2.0, help="Size of the file without whitespace (0: skip).")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--out", type=Path, help="Also write the table and the machine's description here.")
    parser.add_argument("--run-case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_case:
        megabytes = args.prose_mb if args.run_case == "prose" else args.plain_mb
        print(json.dumps(run_case(args.run_case, megabytes, args.chunk_tokens)))
        return
    results = []
    for case, megabytes in (("prose", args.prose_mb), ("plain", args.plain_mb)):
        if megabytes <= 0:
            continue
        command = [sys.executable, "-m", "sra_rag.bench.ingest", "--run-case", case, "--chunk-tokens"]
        command += [str(args.chunk_tokens), f"--{case}-mb", str(megabytes)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)  # progress on stderr
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; all-MiniLM-L6-v2 on the CPU, chunks of {args.chunk_tokens} tokens"
    )
    report = f"{table(results)}\n\n{machine}\n"
    print("\n" + report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
