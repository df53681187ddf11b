"""Multi-hop QA on real questions: HotpotQA (distractor setting) shaped like the NQ-Open suite.

HotpotQA (Yang et al. 2018, hotpotqa.github.io, CC BY-SA 4.0) asks questions that need two Wikipedia
paragraphs ("bridge": find an entity in one, the answer in the other; "comparison": compare two), and
its distractor setting gives each question 10 paragraphs: the two supporting ones and 8 distractors
retrieved by bigram TF-IDF. :func:`build` turns the release's dev file into
:class:`~sra_rag.evaluation.nq.Example` records the NQ tooling reads (``nq_run --dataset hotpotqa``):
the two supporting paragraphs, in the release's order, placed together at positions 0-1, 4-5 or 8-9
of 10 (``gold_index`` is the first of the pair), the distractors in the release's order around them,
as "Lost in the Middle" moves its gold passage. Questions whose answer is "yes" or "no" are left
out: a substring match cannot score them. The suite is one split, ``test``: no setting is chosen on
it, so it checks on held-out multi-hop questions the default chosen on NQ-Open's dev split.

``python -m sra_rag.evaluation.hotpot --release hotpot_dev_distractor_v1.json`` rebuilds the shipped
file; a truncated copy of the release (a prefix of its JSON array) gives its complete records.
``sra_rag/data/eval/hotpotqa/README.md`` says where the file came from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from sra_rag.evaluation.nq import DATASETS, NUM_DOCUMENTS, Example, Passage, write

GOLD_INDICES: tuple[int, ...] = DATASETS["hotpotqa"].gold_indices  # the first of the two supporting paragraphs
DATA_FOLDER = DATASETS["hotpotqa"].folder
UNSCORABLE = frozenset({"yes", "no"})


def read_release(path: str | Path) -> list[dict[str, Any]]:
    """The complete records of a HotpotQA JSON file (a JSON array), in file order; a file cut short
    gives the records before the cut."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.find("[")
    if start < 0:
        raise ValueError(f"{path}: not a HotpotQA release file (no JSON array)")
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    position = start + 1
    while position < len(text):
        while position < len(text) and text[position] in ", \n\r\t":
            position += 1
        if position >= len(text) or text[position] == "]":
            break
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break  # the cut
        records.append(record)
    return records


def to_examples(record: dict[str, Any], question_id: int, gold_indices: Sequence[int] = GOLD_INDICES) -> list[Example]:
    """One example per gold position, or none when the record cannot be scored (a yes/no answer) or
    is not the distractor setting's two supporting paragraphs among 10."""
    answer = str(record["answer"]).strip()
    gold_titles = {title for title, _ in record["supporting_facts"]}
    paragraphs = [
        Passage(title, "".join(sentences).strip(), title in gold_titles) for title, sentences in record["context"]
    ]
    gold = [passage for passage in paragraphs if passage.is_gold]
    others = [passage for passage in paragraphs if not passage.is_gold]
    if answer.lower() in UNSCORABLE or len(paragraphs) != NUM_DOCUMENTS or len(gold) != 2:
        return []
    examples = []
    for index in gold_indices:
        if not 0 <= index <= len(others):
            raise ValueError(f"gold index must be in [0, {len(others)}], got {index}")
        passages = others[:index] + gold + others[index:]
        examples.append(Example(question_id, record["question"], (answer,), index, tuple(passages)))
    return examples


def build(release: str | Path, out: str | Path | None = None) -> list[Example]:
    """The ``test`` split from the release file, written to ``<out>/test.jsonl.gz`` (default: the
    package's data folder). ``question_id`` is the record's position in the release."""
    records = read_release(release)
    examples = [example for number, record in enumerate(records) for example in to_examples(record, number)]
    folder = Path(out) if out is not None else Path(str(files("sra_rag"))) / DATA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "test.jsonl.gz", examples)
    return examples


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="HotpotQA's hotpot_dev_distractor_v1.json (or a prefix of it)")
    parser.add_argument("--out", default=None, help="output folder (default: the package's data/eval/hotpotqa)")
    args = parser.parse_args(argv)
    examples = build(args.release, args.out)
    print(f"test: {len(examples)} examples, {len({example.question_id for example in examples})} questions")


if __name__ == "__main__":
    main()
