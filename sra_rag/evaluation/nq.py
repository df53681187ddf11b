"""Multi-document QA on real questions: NQ-Open with 10 Wikipedia passages, one of which answers.

The suite follows "Lost in the Middle" (Liu et al. 2023, github.com/nelson-liu/lost-in-the-middle): each
question comes with its gold Wikipedia passage and 9 distractor passages that contain none of its
answers, the gold passage at position 0, 4 or 9 of 10, and an answer is right when a gold answer is a
substring of it after SQuAD normalisation (:func:`best_subspan_em`, the paper's metric).

The paper's 10-document files are not in its repository snapshot (Git LFS objects), so :func:`build`
rebuilds them from the release's oracle file (``qa_data/nq-open-oracle.jsonl.gz``: question, answers,
gold passage with its title) the paper's way as closely as the oracle allows: the distractors of a
question are the other questions' gold passages, ranked by all-MiniLM-L6-v2 cosine similarity to the
question (the paper ranked Contriever results over all of Wikipedia), keeping only passages whose title
and text contain none of the question's answers and whose title is not already in the example, top 9 by
relevance, in rank order, with the gold passage inserted at the gold index. The split of questions into
dev and test is drawn with a fixed seed before any model is run. ``docs/eval/nq-open/README.md`` and
``sra_rag/data/eval/nq_open/README.md`` say the rest.

``python -m sra_rag.evaluation.nq --oracle nq-open-oracle.jsonl.gz`` rebuilds the shipped files;
:func:`load` reads them (no network).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

NUM_DOCUMENTS = 10
GOLD_INDICES: tuple[int, ...] = (0, 4, 9)
SPLITS: tuple[str, ...] = ("dev", "test")
SEED = 0
DEV_QUESTIONS = 60
TEST_QUESTIONS = 150
DATA_FOLDER = "data/eval/nq_open"


@dataclass(frozen=True)
class Dataset:
    """A shipped multi-document QA suite of :class:`Example` records: its package ``folder``, its
    ``splits`` (one ``<split>.jsonl.gz`` each) and the gold positions each question is asked at."""

    folder: str
    splits: tuple[str, ...]
    gold_indices: tuple[int, ...]


DATASETS: dict[str, Dataset] = {
    "nq-open": Dataset(DATA_FOLDER, SPLITS, GOLD_INDICES),
    # sra_rag.evaluation.hotpot: the two supporting paragraphs at 0-1, 4-5 or 8-9; no dev split
    "hotpotqa": Dataset("data/eval/hotpotqa", ("test",), (0, 4, 8)),
}

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, as the paper's ``metrics.py``: lower-case, strip punctuation, remove the
    articles "a", "an", "the", collapse whitespace."""
    text = "".join(character for character in text.lower() if character not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def best_subspan_em(prediction: str, answers: Iterable[str]) -> bool:
    """The paper's best-subspan exact match: whether any normalised gold answer is a substring of the
    normalised ``prediction`` (an answer that normalises to nothing never matches)."""
    normalized = normalize_answer(prediction)
    return any(gold and gold in normalized for gold in map(normalize_answer, answers))


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """Whether ``text`` (a passage with its title) holds any of ``answers`` under the same rule."""
    return best_subspan_em(text, answers)


@dataclass(frozen=True)
class Passage:
    """One Wikipedia passage: its article ``title``, ``text`` and whether it is the gold one."""

    title: str
    text: str
    is_gold: bool = False

    @property
    def full_text(self) -> str:
        """The passage as the prompt shows it: its title first, in the paper's ``(Title: ...)`` form."""
        return f"(Title: {self.title}) {self.text}"


@dataclass(frozen=True)
class Example:
    """One prompt: a question, its gold answers and 10 passages with the gold one at ``gold_index``.
    ``question_id``: the question's line (from 0) in the oracle file; ``id``: ``"<question_id>@<gold_index>"``."""

    question_id: int
    question: str
    answers: tuple[str, ...]
    gold_index: int
    passages: tuple[Passage, ...]

    @property
    def id(self) -> str:
        return f"{self.question_id}@{self.gold_index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question_id": self.question_id,
            "question": self.question,
            "answers": list(self.answers),
            "gold_index": self.gold_index,
            "passages": [asdict(passage) for passage in self.passages],
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Example:
        return cls(
            question_id=int(row["question_id"]),
            question=row["question"],
            answers=tuple(row["answers"]),
            gold_index=int(row["gold_index"]),
            passages=tuple(Passage(**passage) for passage in row["passages"]),
        )


@dataclass(frozen=True)
class OracleQuestion:
    """One line of the oracle file: the question, its answers and its gold passage."""

    question_id: int
    question: str
    answers: tuple[str, ...]
    gold: Passage


def read_oracle(path: str | Path) -> list[OracleQuestion]:
    """The questions of the paper's ``nq-open-oracle.jsonl.gz`` (gzip or plain JSON lines), in file order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    questions = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            row = json.loads(line)
            golds = [ctx for ctx in row["ctxs"] if ctx.get("isgold")]
            if len(golds) != 1:
                raise ValueError(f"{path}: line {number + 1} has {len(golds)} gold passages, expected 1")
            gold = Passage(title=golds[0]["title"], text=golds[0]["text"], is_gold=True)
            questions.append(OracleQuestion(number, row["question"], tuple(row["answers"]), gold))
    return questions


def split_questions(
    count: int, seed: int = SEED, dev: int = DEV_QUESTIONS, test: int = TEST_QUESTIONS
) -> dict[str, list[int]]:
    """Question ids (0..count-1) of each split: one seeded shuffle, the first ``dev`` for dev and the
    next ``test`` for test, each sorted. Disjoint by construction; the same for the same arguments."""
    if dev < 0 or test < 0 or dev + test > count:
        raise ValueError(f"need 0 <= dev, test and dev + test <= {count}, got dev={dev}, test={test}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return {"dev": sorted(order[:dev]), "test": sorted(order[dev : dev + test])}


def pick_distractors(
    question: OracleQuestion,
    ranked: Iterable[Passage],
    count: int = NUM_DOCUMENTS - 1,
) -> list[Passage]:
    """The first ``count`` of ``ranked`` (candidates, most relevant first) that contain none of the
    question's answers (title or text) and whose title is neither the gold passage's nor one already
    picked, so every source of the prompt is a different article."""
    titles = {question.gold.title}
    texts = {" ".join(question.gold.text.split())}
    picked: list[Passage] = []
    for passage in ranked:
        key = " ".join(passage.text.split())
        if passage.title in titles or key in texts or contains_answer(passage.full_text, question.answers):
            continue
        titles.add(passage.title)
        texts.add(key)
        picked.append(Passage(passage.title, passage.text, is_gold=False))
        if len(picked) == count:
            return picked
    raise ValueError(f"question {question.question_id}: only {len(picked)} distractors without an answer, need {count}")


def place_gold(question: OracleQuestion, distractors: Sequence[Passage], gold_index: int) -> Example:
    """The example with the gold passage inserted at ``gold_index`` among the distractors (in their order)."""
    if not 0 <= gold_index <= len(distractors):
        raise ValueError(f"gold_index must be in [0, {len(distractors)}], got {gold_index}")
    passages = list(distractors)
    passages.insert(gold_index, question.gold)
    return Example(question.question_id, question.question, question.answers, gold_index, tuple(passages))


def build(
    oracle: str | Path,
    out: str | Path | None = None,
    *,
    seed: int = SEED,
    dev: int = DEV_QUESTIONS,
    test: int = TEST_QUESTIONS,
    gold_indices: Sequence[int] = GOLD_INDICES,
) -> dict[str, list[Example]]:
    """Build the dev and test splits from the oracle file and write ``<out>/{dev,test}.jsonl.gz``
    (default: the package's data folder). Embeds every gold passage (title and text) and the chosen
    questions with the bundled all-MiniLM-L6-v2 (a few minutes on a CPU); deterministic."""
    import numpy as np

    from sra_rag.rag.embeddings import embed

    questions = read_oracle(oracle)
    ids = split_questions(len(questions), seed, dev, test)
    chosen = sorted(ids["dev"] + ids["test"])
    pool = [question.gold for question in questions]
    passage_vectors = embed([f"{passage.title}\n{passage.text}" for passage in pool])
    question_vectors = embed([questions[index].question for index in chosen])
    distractors: dict[int, list[Passage]] = {}
    for index, vector in zip(chosen, question_vectors, strict=True):
        similarity = passage_vectors @ vector
        similarity[index] = -np.inf  # the question's own gold passage
        order = np.argsort(-similarity, kind="stable")
        distractors[index] = pick_distractors(questions[index], (pool[int(rank)] for rank in order))
    splits = {
        name: [place_gold(questions[index], distractors[index], gold) for index in ids[name] for gold in gold_indices]
        for name in SPLITS
    }
    folder = Path(out) if out is not None else Path(str(files("sra_rag"))) / DATA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        write(folder / f"{name}.jsonl.gz", examples)
    return splits


def write(path: str | Path, examples: Iterable[Example]) -> None:
    """JSON lines, gzip-compressed with a fixed timestamp so rebuilding gives the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        for example in examples:
            zipped.write((json.dumps(example.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))


def read(path: str | Path) -> list[Example]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [Example.from_json(json.loads(line)) for line in lines]


def load(split: str, dataset: str = "nq-open") -> list[Example]:
    """The shipped examples of ``split`` (NQ-Open: ``"dev"`` or ``"test"``; HotpotQA: ``"test"``) of
    ``dataset`` (a key of :data:`DATASETS`), by question then gold index."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if split not in DATASETS[dataset].splits:
        raise ValueError(f"split must be one of {DATASETS[dataset].splits} for {dataset}, got {split!r}")
    resource = files("sra_rag").joinpath(f"{DATASETS[dataset].folder}/{split}.jsonl.gz")
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [Example.from_json(json.loads(line)) for line in lines]


def iter_questions(examples: Iterable[Example]) -> Iterator[list[Example]]:
    """Examples grouped by question (consecutive in the shipped files), gold indices ascending."""
    group: list[Example] = []
    for example in examples:
        if group and example.question_id != group[0].question_id:
            yield sorted(group, key=lambda item: item.gold_index)
            group = []
        group.append(example)
    if group:
        yield sorted(group, key=lambda item: item.gold_index)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", required=True, help="the paper's qa_data/nq-open-oracle.jsonl.gz")
    parser.add_argument("--out", default=None, help="output folder (default: the package's data/eval/nq_open)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--dev", type=int, default=DEV_QUESTIONS, help="questions in dev")
    parser.add_argument("--test", type=int, default=TEST_QUESTIONS, help="questions in test")
    args = parser.parse_args(argv)
    splits = build(args.oracle, args.out, seed=args.seed, dev=args.dev, test=args.test)
    for name, examples in splits.items():
        print(f"{name}: {len(examples)} examples, {len({example.question_id for example in examples})} questions")


if __name__ == "__main__":
    main()
