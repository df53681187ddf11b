"""Does the answer's loop guard keep copied facts exact? The copy suite.

``python -m sra_rag.evaluation.copies --model smollm2-135m --seed 7 --out docs/eval/copies/smol``
asks for one fact among 1 to 30 one-line records (door codes with repeated digits, years, times,
purchase-order numbers, multi-token names of invented people), through
:class:`~sra_rag.rag.reader.Reader` as a user runs it, under three decoding policies on the same
prompts: ``plain`` (greedy, nothing else), ``default`` (the model's answer defaults,
``engine.defaults.sampling``: greedy with the loop guard) and ``penalty`` (greedy with the former
default, a repetition penalty of 1.2 on the answer's own tokens). An answer copies the fact when the
value appears in it exactly. The report counts, per policy and value kind, the copies made, and the
copies plain decoding makes that the policy loses; a reply that runs to the token limit counts as a
loop.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sra_rag.evaluation.report import wilson_interval
from sra_rag.evaluation.runner import RankedRetriever
from sra_rag.rag.reader import Reader
from sra_rag.rag.stuffing import Chunk

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

DOCUMENTS = (1, 5, 10, 30)
POLICIES: dict[str, Callable[[SRAEngine], dict[str, Any]]] = {
    "plain": lambda engine: {"repetition_penalty": 1.0, "loop_guard": 0},
    "default": lambda engine: dict(engine.defaults.sampling),
    "penalty": lambda engine: {"repetition_penalty": 1.2, "penalize_prompt": False, "loop_guard": 0},
}
PLACES = (
    "east vault",
    "north archive",
    "harbour office",
    "glass workshop",
    "clock tower",
    "seed store",
    "map room",
    "boat shed",
    "print room",
    "salt cellar",
    "west gate",
    "lamp house",
)
THINGS = ("tide gauge", "fog bell", "crane", "weather vane", "boiler", "press", "loom", "kiln")
TOWNS = ("Skelda", "Marrowick", "Orrin Bay", "Lathmere", "Quillon", "Tarnby", "Vessenholm", "Brackwater")
SYLLABLES = ("ka", "lo", "mi", "dre", "vor", "sen", "tha", "bri", "quo", "zel", "fen", "ru", "osh", "ine")


@dataclass(frozen=True)
class Fact:
    """One record: its line of text, the question that asks for it and the value to copy."""

    kind: str
    text: str
    question: str
    value: str


def _repeated_digits(rng: random.Random) -> str:
    a, b = rng.sample("0123456789", 2)
    return rng.choice([a + b + b + a, a + a + b + a, a + b + a + b, b + a + a + a])


def _name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def fact(rng: random.Random, kind: str, subject: str) -> Fact:
    """A record of ``kind`` about ``subject`` (a place, thing or town, by kind)."""
    if kind == "code":
        value = _repeated_digits(rng)
        return Fact(
            kind, f"The door code of the {subject} is {value}.", f"What is the door code of the {subject}?", value
        )
    if kind == "year":
        value = str(rng.randint(1801, 1999))
        return Fact(
            kind, f"The {subject} was installed in {value}.", f"In which year was the {subject} installed?", value
        )
    if kind == "time":
        value = f"{rng.randint(5, 22):02d}:{rng.choice(['05', '15', '30', '45', '50'])}"
        return Fact(
            kind, f"The ferry from {subject} returns at {value}.", f"When does the ferry from {subject} return?", value
        )
    if kind == "order":
        value = f"{_repeated_digits(rng)}-{rng.randint(0, 9999):04d}"
        return Fact(
            kind,
            f"The purchase order for the {subject} is {value}.",
            f"What is the purchase order for the {subject}?",
            value,
        )
    value = _name(rng)
    return Fact(kind, f"The {subject} is kept by {value}.", f"Who keeps the {subject}?", value)


KINDS = ("code", "year", "time", "order", "name")
SUBJECTS = {"code": PLACES, "year": THINGS, "time": TOWNS, "order": THINGS, "name": PLACES}


@dataclass(frozen=True)
class Example:
    id: str
    documents: int
    gold: int  # 0-based position of the asked record
    fact: Fact
    records: tuple[str, ...]


def examples(seed: int, per_cell: int, documents: Sequence[int] = DOCUMENTS) -> list[Example]:
    """``per_cell`` prompts per (number of records, value kind), the asked record at a random place;
    the other records are facts of every kind about other subjects."""
    rng = random.Random(f"copies-{seed}")
    built = []
    for count in documents:
        for kind in KINDS:
            for index in range(per_cell):
                subject = rng.choice(SUBJECTS[kind])
                asked = fact(rng, kind, subject)
                others: list[str] = []
                while len(others) < count - 1:
                    other_kind = rng.choice(KINDS)
                    other_subject = rng.choice(SUBJECTS[other_kind])
                    if other_subject != subject:
                        others.append(fact(rng, other_kind, other_subject).text)
                gold = rng.randrange(count)
                records = tuple(others[:gold] + [asked.text] + others[gold:])
                built.append(Example(f"{count}-{kind}-{index}", count, gold, asked, records))
    return built


@dataclass(frozen=True)
class Outcome:
    id: str
    policy: str
    kind: str
    documents: int
    copied: bool
    looped: bool
    reply: str
    seconds: float


def run(
    engine: SRAEngine, prompts: Sequence[Example], policies: Sequence[str], max_new_tokens: int = 64
) -> list[Outcome]:
    outcomes = []
    for example in prompts:
        chunks = [Chunk(text, f"record-{number}.txt") for number, text in enumerate(example.records, start=1)]
        for policy in policies:
            reader = Reader(
                engine,
                RankedRetriever(chunks),
                top_k=len(chunks),
                max_new_tokens=max_new_tokens,
                sampling=POLICIES[policy](engine),
                cite=None,
            )
            start = time.perf_counter()
            answer = reader.ask(example.fact.question)
            outcomes.append(
                Outcome(
                    example.id,
                    policy,
                    example.fact.kind,
                    example.documents,
                    example.fact.value in answer.text,
                    answer.finish_reason == "length",
                    answer.text,
                    time.perf_counter() - start,
                )
            )
    return outcomes


def report(outcomes: Sequence[Outcome], title: str) -> str:
    by = {(o.id, o.policy): o for o in outcomes}
    policies = list(dict.fromkeys(o.policy for o in outcomes))
    ids = list(dict.fromkeys(o.id for o in outcomes))
    lines = [
        f"# {title}",
        "",
        "| policy | copied exactly | 95% CI | plain's copies lost | loops (token limit) |",
        "|---|---:|---|---:|---:|",
    ]
    for policy in policies:
        rows = [by[(i, policy)] for i in ids if (i, policy) in by]
        hits = sum(o.copied for o in rows)
        low, high = wilson_interval(hits, len(rows))
        lost = (
            sum(1 for i in ids if by[(i, "plain")].copied and not by[(i, policy)].copied) if "plain" in policies else 0
        )
        loops = sum(o.looped for o in rows)
        lines.append(f"| {policy} | {hits}/{len(rows)} | {100 * low:.0f}-{100 * high:.0f}% | {lost} | {loops} |")
    lines += ["", "| value kind | " + " | ".join(policies) + " |", "|---|" + "---:|" * len(policies)]
    for kind in KINDS:
        cells = []
        for policy in policies:
            rows = [o for o in outcomes if o.policy == policy and o.kind == kind]
            cells.append(f"{sum(o.copied for o in rows)}/{len(rows)}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from sra_rag.engine import SRAEngine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--per-cell", type=int, default=4)
    parser.add_argument("--documents", type=int, nargs="+", default=list(DOCUMENTS))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    engine = SRAEngine.from_pretrained(args.model)
    prompts = examples(args.seed, args.per_cell, args.documents)
    outcomes = run(engine, prompts, args.policies)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "records.jsonl").open("w") as handle:
        for outcome in outcomes:
            handle.write(json.dumps(asdict(outcome)) + "\n")
    text = report(outcomes, f"Copy suite: {engine.name}, seed {args.seed}, {len(prompts)} prompts")
    (args.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
