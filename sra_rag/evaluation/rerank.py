"""The readout as a re-ranker on NQ-Open: which passage the question reads, against MiniLM and BM25.

``python -m sra_rag.evaluation.rerank --model qwen2.5-coder-0.5b --split dev --questions 20 --out dev.jsonl``
reads each example's prompt (the reader's prompt over its 10 passages, as
:mod:`~sra_rag.evaluation.nq_run` builds it) with stock attention, read-only up to the end of the
readout band (:meth:`SRAEngine.read`), and scores each passage three ways:

- ``profile``: the shipped readout (:class:`~sra_rag.readout.calibration.ReadoutProfile`: the band's
  log mass per passage minus the position bias measured once for the model);
- ``content-free``: per-prompt calibration as in In-Context Re-ranking (Chen et al., ICLR 2025): the
  same prompt read again with the question replaced by a content-free one (``"N/A"``), and each
  passage's score minus its score there. The position bias cancels (same positions and lengths), so
  this equals the band's log mass ratio between the two reads;
- ``raw``: the band's log mass alone, no calibration.

MiniLM cosine and BM25 (:mod:`~sra_rag.evaluation.nq_report`) rank the same candidates. One JSON line
per example holds every score, so tables can be rebuilt without the model; a re-run with the same
``--out`` skips what is there.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sra_rag.config import SRAConfig
from sra_rag.evaluation.nq import Example, load
from sra_rag.evaluation.nq_report import bm25_scores, minilm_scores, recall_table
from sra_rag.evaluation.nq_run import MAX_NEW_TOKENS, PassageRetriever, read_records
from sra_rag.rag.stuffing import stuff_prompt

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine
    from sra_rag.readout.recorder import DocumentAttention

CONTENT_FREE = "N/A"
"""The content-free question of the per-prompt calibration (In-Context Re-ranking's choice)."""
READOUTS: tuple[str, ...] = ("profile", "content-free", "raw")


def read(engine: SRAEngine, example: Example, question: str) -> DocumentAttention:
    """The readout of the reader's prompt for ``example`` with ``question`` asked, stock attention."""
    chunks = PassageRetriever(example).chunks
    stuffed = stuff_prompt(engine, question, chunks, max_new_tokens=MAX_NEW_TOKENS)
    attention = engine.read(stuffed.messages, layout=stuffed.layout, sra=SRAConfig(enabled=False)).document_attention
    if attention is None:
        raise RuntimeError("the engine returned no readout for a prompt with passages and a question")
    return attention


def raw_scores(engine: SRAEngine, attention: DocumentAttention) -> list[float]:
    """The band's mean log mass per passage (the profile's length normalisation), no bias removed:
    the profile's own scoring with its calibration switched off."""
    uncalibrated = engine.readout_profile.model_copy(update={"calibrated": False})
    return list(uncalibrated.score(attention.readout).scores)


def score_example(engine: SRAEngine, example: Example) -> dict[str, Any]:
    """Every readout's scores for one example (passage order), and the seconds the two reads took."""
    started = time.perf_counter()
    asked = read(engine, example, example.question)
    empty = read(engine, example, CONTENT_FREE)
    return {
        "id": example.id,
        "question_id": example.question_id,
        "gold_index": example.gold_index,
        "model": engine.name,
        "profile": list(asked.scores),
        "content-free": [a - b for a, b in zip(asked.scores, empty.scores, strict=True)],
        "raw": raw_scores(engine, asked),
        "seconds": round(time.perf_counter() - started, 3),
    }


def run(engine: SRAEngine, examples: Sequence[Example], out: Path, progress: Callable[[str], None] = print) -> None:
    """Score ``examples``, appending a JSON line per example to ``out`` (skipping those there)."""
    done = {record["id"] for record in read_records(out) if record["model"] == engine.name}
    out.parent.mkdir(parents=True, exist_ok=True)
    for example in examples:
        if example.id in done:
            continue
        record = score_example(engine, example)
        with out.open("a") as file:
            file.write(json.dumps(record) + "\n")
        progress(f"{example.id}: {record['seconds']:.1f}s")


def table(records: Sequence[dict[str, Any]], split: str) -> str:
    """Markdown: Recall@1/@3 of each readout and of MiniLM and BM25 over the scored examples."""
    by_id = {record["id"]: record for record in records}
    examples = [example for example in load(split) if example.id in by_id]

    def stored(name: str) -> Callable[[Sequence[Example]], list[list[float]]]:
        return lambda chosen: [by_id[example.id][name] for example in chosen]

    rerankers = {f"readout, {name}": stored(name) for name in READOUTS}
    rerankers |= {"MiniLM cosine": minilm_scores, "BM25": bm25_scores}
    return "\n".join(recall_table(examples, rerankers)) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions of the split")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file; appended to, resumable")
    parser.add_argument("--report", action="store_true", help="only print the table of --out")
    args = parser.parse_args(argv)
    examples = load(args.split)
    if args.questions is not None:
        keep = sorted({example.question_id for example in examples})[: args.questions]
        examples = [example for example in examples if example.question_id in set(keep)]
    if not args.report:
        from sra_rag.engine import SRAEngine

        run(SRAEngine.from_pretrained(args.model), examples, args.out)
    wanted = {example.id for example in examples}
    print(table([record for record in read_records(args.out) if record["id"] in wanted], args.split), end="")


if __name__ == "__main__":
    main()
