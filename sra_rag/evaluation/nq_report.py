"""Tables of the NQ-Open suite: accuracy per setting and gold position, paired change against stock
attention, seconds per answer, and the gold passage's Recall@1/@3 under three re-rankers.

``python -m sra_rag.evaluation.nq_report docs/eval/nq-open/qwen-dev.jsonl --split dev`` prints the
markdown (``--dataset hotpotqa --split test``: the multi-hop suite, whose two supporting paragraphs
count as gold: a re-ranker's rank is that of the better-ranked one). Only examples that every setting
answered are compared (a run cut short leaves the same questions for all). Re-rankers over the same 10
passages: the calibrated readout of the stock answering prefill (the records' ``source_attention`` of
the baseline setting), all-MiniLM-L6-v2 cosine similarity (question against title and text), and BM25
(``rank-bm25``'s Okapi BM25 with its default parameters, fitted on the example's 10 passages, lower-
cased word tokens). Ties count against the gold passage.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from sra_rag.evaluation.documents import sign_test
from sra_rag.evaluation.nq import DATASETS, GOLD_INDICES, Example, load
from sra_rag.evaluation.nq_run import read_records
from sra_rag.evaluation.report import wilson_interval
from sra_rag.readout.calibration import rank_of_gold

BASELINE = "off"
_WORD = re.compile(r"\w+")


def best_gold_rank(scores: Sequence[float], example: Example) -> int:
    """The rank (:func:`rank_of_gold`) of the example's best-ranked gold passage."""
    return min(rank_of_gold(scores, index) for index, passage in enumerate(example.passages) if passage.is_gold)


def recall_at(ranks: Iterable[int], k: int) -> tuple[int, int]:
    """(hits, total): how many ranks are below ``k``."""
    ranks = list(ranks)
    return sum(rank < k for rank in ranks), len(ranks)


def minilm_scores(examples: Sequence[Example]) -> list[list[float]]:
    """Cosine similarity of each question to each of its passages (title and text), as the suite was built."""
    from sra_rag.rag.embeddings import embed

    questions = embed([example.question for example in examples])
    scores = []
    for example, question in zip(examples, questions, strict=True):
        passages = embed([f"{passage.title}\n{passage.text}" for passage in example.passages])
        scores.append([float(value) for value in passages @ question])
    return scores


def bm25_scores(examples: Sequence[Example]) -> list[list[float]]:
    """Okapi BM25 of each question against its own 10 passages (title and text)."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError as error:
        raise ImportError("BM25 re-ranking needs rank-bm25. Install it with: pip install rank-bm25") from error

    def tokens(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    scores = []
    for example in examples:
        bm25 = BM25Okapi([tokens(f"{passage.title} {passage.text}") for passage in example.passages])
        scores.append([float(value) for value in bm25.get_scores(tokens(example.question))])
    return scores


def _percent(hits: int, total: int) -> str:
    if total == 0:
        return "-"
    low, high = wilson_interval(hits, total)
    return f"{hits}/{total} ({100 * hits / total:.0f}%; {100 * low:.0f}-{100 * high:.0f})"


def _p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def complete_records(records: Iterable[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    """The settings (in first-seen order) and, per setting, the records by example id, keeping only
    examples that every setting answered."""
    by_setting: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        by_setting[record["setting"]][record["id"]] = record
    settings = list(by_setting)
    common = set.intersection(*(set(rows) for rows in by_setting.values())) if by_setting else set()
    return settings, {setting: {key: by_setting[setting][key] for key in common} for setting in settings}


def accuracy_table(
    settings: Sequence[str], rows: dict[str, dict[str, dict[str, Any]]], positions: Sequence[int] = GOLD_INDICES
) -> list[str]:
    """Markdown: per setting, right answers per gold position (``positions``) and overall (Wilson
    95%), gained / lost against the baseline with the sign test, and mean seconds per answer."""
    baseline = BASELINE if BASELINE in rows else settings[0]
    header = (
        "| setting | "
        + " | ".join(f"gold at {index + 1}" for index in positions)
        + " | all | gained / lost vs stock | sign test p | s / answer | prompt tokens |"
    )
    lines = [header, "|---|" + "---:|" * (len(positions) + 5)]
    for setting in settings:
        records = rows[setting]
        cells = []
        for index in positions:
            chosen = [record for record in records.values() if record["gold_index"] == index]
            cells.append(_percent(sum(record["correct"] for record in chosen), len(chosen)))
        right = sum(record["correct"] for record in records.values())
        if setting == baseline:
            paired = "(baseline)"
            p = "-"
        else:
            gained = sum(rec["correct"] and not rows[baseline][key]["correct"] for key, rec in records.items())
            lost = sum(not rec["correct"] and rows[baseline][key]["correct"] for key, rec in records.items())
            paired, p = f"+{gained} / -{lost}", _p_value(sign_test(gained, lost))
        seconds = np.mean([record["seconds"] for record in records.values()]) if records else float("nan")
        tokens = np.mean([record["prompt_tokens"] for record in records.values()]) if records else float("nan")
        lines.append(
            f"| `{setting}` | "
            + " | ".join(cells)
            + f" | {_percent(right, len(records))} | {paired} | {p} | {seconds:.1f} | {tokens:.0f} |"
        )
    return lines


def recall_table(
    examples: Sequence[Example], rerankers: dict[str, Callable[[Sequence[Example]], list[list[float]]]]
) -> list[str]:
    """Markdown: Recall@1 and Recall@3 of the gold passage for each re-ranker over ``examples``."""
    lines = ["| re-ranker | prompts | Recall@1 | Recall@3 |", "|---|---:|---:|---:|"]
    for name, scorer in rerankers.items():
        ranks = [best_gold_rank(scores, example) for example, scores in zip(examples, scorer(examples), strict=True)]
        lines.append(f"| {name} | {len(ranks)} | {_percent(*recall_at(ranks, 1))} | {_percent(*recall_at(ranks, 3))} |")
    return lines


def readout_scorer(rows: dict[str, dict[str, Any]]) -> Callable[[Sequence[Example]], list[list[float]]]:
    """The calibrated readout stored in ``rows`` (records by example id) as a re-ranker."""

    def score(examples: Sequence[Example]) -> list[list[float]]:
        return [list(rows[example.id]["source_attention"]) for example in examples]

    return score


def report(
    records: Sequence[dict[str, Any]], split: str, title: str, whole_split: bool = True, dataset: str = "nq-open"
) -> str:
    """The markdown section for one runs file: accuracy, then re-ranking on the answered examples
    and (``whole_split``) for the re-rankers that need no model, on the whole split."""
    settings, rows = complete_records(records)
    every = load(split, dataset)
    positions = DATASETS[dataset].gold_indices
    examples = [example for example in every if example.id in rows.get(settings[0], {})] if settings else []
    questions = len({example.question_id for example in examples})
    size = f"{len(examples)} prompts ({questions} questions x {len(positions)} gold positions)."
    lines = [f"### {title}", "", size]
    lines += ["", *accuracy_table(settings, rows, positions), ""]
    rerankers: dict[str, Callable[[Sequence[Example]], list[list[float]]]] = {}
    baseline = BASELINE if BASELINE in rows else settings[0]
    if examples and all(rows[baseline][example.id].get("source_attention") for example in examples):
        rerankers[f"readout (calibrated, `{baseline}` prefill)"] = readout_scorer(rows[baseline])
    rerankers["MiniLM cosine"] = minilm_scores
    rerankers["BM25"] = bm25_scores
    lines += ["Re-ranking the same prompts:", "", *recall_table(examples, rerankers)]
    if whole_split:
        lines += ["", f"Without a model, the whole {split} split:", ""]
        lines += recall_table(every, {"MiniLM cosine": minilm_scores, "BM25": bm25_scores})
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", help="a runs file of sra_rag.evaluation.nq_run")
    parser.add_argument("--dataset", default="nq-open", choices=list(DATASETS))
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--title", default=None)
    parser.add_argument("--no-whole-split", action="store_true", help="skip MiniLM and BM25 on the whole split")
    args = parser.parse_args(argv)
    records = read_records(args.records)
    title = args.title or f"{records[0]['model'] if records else 'no records'}, {args.split}"
    print(report(records, args.split, title, whole_split=not args.no_whole_split, dataset=args.dataset), end="")


if __name__ == "__main__":
    main()
