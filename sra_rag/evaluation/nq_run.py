"""Answer the NQ-Open suite (:mod:`sra_rag.evaluation.nq`) through the reader, one setting after another.

``python -m sra_rag.evaluation.nq_run --model qwen2.5-coder-0.5b --split dev --out records.jsonl``
answers every example of the split (``--dataset hotpotqa --split test``: the multi-hop suite of
:mod:`sra_rag.evaluation.hotpot`) with each setting (default: :data:`DEFAULT_SETTINGS`) through the
public reader path: :class:`~sra_rag.rag.reader.Reader` over a retriever that returns the example's 10
passages in order, each its own source named by its Wikipedia title (so nothing merges and
``Document [n]`` is the passage's position), greedy, ``repetition_penalty`` 1.0 by default (the
reader's 1.2 miscopies numbers), ``cite=None`` (an appended ``(Document [n])`` would put a digit in the
scored text). Questions are the outer loop and settings the inner one, so a run cut short still
compares every setting on the same prompts. One JSON line per (example, setting) is appended as soon
as it is answered; a re-run with the same ``--out`` skips what is there. ``--weights int8`` answers
with lower-precision CPU weights (:mod:`sra_rag.generation.weights`; records do not name the format,
so give each format its own ``--out``).

Settings are preset names of :meth:`SRAConfig.preset`, optionally with ``+first``, ``+last`` or
``+ends`` for attention-ordered stuffing (``Reader(order=...)``), e.g. ``recommended+first``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sra_rag.config import WEIGHT_FORMATS, SRAConfig
from sra_rag.evaluation.nq import DATASETS, Example, best_subspan_em, iter_questions, load
from sra_rag.rag.ordering import Placement, check_placement
from sra_rag.rag.reader import Reader
from sra_rag.rag.stuffing import Chunk

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

DEFAULT_SETTINGS: tuple[str, ...] = ("off", "paper", "recommended", "recommended+first", "documents")
MAX_NEW_TOKENS = 48
REPETITION_PENALTY = 1.0


def parse_setting(name: str) -> tuple[SRAConfig, Placement | None]:
    """``"preset"`` or ``"preset+placement"``: the SRA settings and the reader's ``order``."""
    preset, _, placement = name.partition("+")
    return SRAConfig.preset(preset), check_placement(placement) if placement else None


class PassageRetriever:
    """A retriever that returns one example's passages, in the example's order, as chunks: each its
    own source (the article title; titles are distinct within an example), text headed by the title."""

    def __init__(self, example: Example) -> None:
        self.chunks = [
            Chunk(text=passage.full_text, source=passage.title, chunk_index=0, id=f"{example.id}/{position}")
            for position, passage in enumerate(example.passages)
        ]

    def retrieve(self, question: str, top_k: int = 10) -> list[Chunk]:
        return self.chunks[:top_k]


@dataclass
class NQRecord:
    """One answer. ``gold_document``: the gold passage's number in the prompt that was answered
    (1-based; differs from ``gold_index + 1`` only with attention-ordered stuffing);
    ``source_attention``: the calibrated readout of the answering prefill, one score per passage in
    the order of the *original* example (None when the engine gave none); ``seconds``: wall time of
    ``Reader.ask`` (with ordering, the readout prefill too)."""

    id: str
    question_id: int
    gold_index: int
    setting: str
    model: str
    reply: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str | None
    gold_document: int
    repetition_penalty: float
    max_new_tokens: int
    source_attention: list[float] | None = field(default=None)


def answer(
    engine: SRAEngine,
    example: Example,
    setting: str,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    repetition_penalty: float = REPETITION_PENALTY,
) -> NQRecord:
    """Answer ``example`` through :class:`Reader` under ``setting`` and score the reply."""
    sra, order = parse_setting(setting)
    retriever = PassageRetriever(example)
    reader = Reader(
        engine,
        retriever,
        top_k=len(example.passages),
        sra=sra,
        max_new_tokens=max_new_tokens,
        sampling={"repetition_penalty": repetition_penalty},
        order=order or "retrieved",  # a plain preset keeps the passages' order, whatever the model's default
        cite=None,
    )
    start = time.perf_counter()
    result = reader.ask(example.question)
    seconds = time.perf_counter() - start
    gold_title = example.passages[example.gold_index].title
    scores = None
    if result.source_attention is not None:
        by_title = dict(zip(result.sources, result.source_attention, strict=True))
        scores = [round(by_title[passage.title], 5) for passage in example.passages]
    return NQRecord(
        id=example.id,
        question_id=example.question_id,
        gold_index=example.gold_index,
        setting=setting,
        model=engine.name,
        reply=result.text,
        correct=best_subspan_em(result.text, example.answers),
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        seconds=round(seconds, 3),
        finish_reason=result.finish_reason,
        gold_document=result.sources.index(gold_title) + 1,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
        source_attention=scores,
    )


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a runs file (one JSON object a line; a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run(
    engine: SRAEngine,
    examples: Iterable[Example],
    settings: Sequence[str],
    out: str | Path,
    *,
    questions: int | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    repetition_penalty: float = REPETITION_PENALTY,
) -> int:
    """Answer the first ``questions`` questions (all: None) of ``examples`` with every setting and
    append a record per answer to ``out``, skipping (example, setting) pairs already there. Returns
    the number of answers written."""
    for setting in settings:
        parse_setting(setting)  # fail before loading anything
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(record["id"], record["setting"], record["model"]) for record in read_records(out)}
    written = 0
    for number, group in enumerate(iter_questions(examples)):
        if questions is not None and number >= questions:
            break
        for setting in settings:
            for example in group:
                if (example.id, setting, engine.name) in done:
                    continue
                record = answer(
                    engine, example, setting, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
                )
                with out.open("a", encoding="utf-8") as lines:
                    lines.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
                written += 1
                print(
                    f"q{number} {record.id} {setting}: {'right' if record.correct else 'wrong'} "
                    f"{record.seconds:.1f}s {record.prompt_tokens} tok | {record.reply[:80]!r}",
                    flush=True,
                )
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dataset", default="nq-open", choices=list(DATASETS))
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--setting", action="append", dest="settings", help="repeatable; default: all five")
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions of the split")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY)
    parser.add_argument(
        "--weights", default=None, choices=list(WEIGHT_FORMATS), help="CPU weight format (default: the engine's)"
    )
    parser.add_argument("--out", required=True, help="JSON lines file; appended to, resumable")
    args = parser.parse_args(argv)

    from sra_rag.engine import SRAEngine

    examples = load(args.split, args.dataset)  # an unknown split fails before the model loads
    engine = SRAEngine.from_pretrained(args.model, weights=args.weights)
    written = run(
        engine,
        examples,
        args.settings or DEFAULT_SETTINGS,
        args.out,
        questions=args.questions,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
    print(f"wrote {written} answers to {args.out}")
    engine.close()


if __name__ == "__main__":
    main()
