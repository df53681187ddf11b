"""Synthetic prompts for the readout: its calibration (``sra-rag calibrate``) and its measurement.

Each prompt is the reader's own prompt (:func:`~sra_rag.rag.stuffing.stuff_prompt`) over numbered
biographies of invented people, with the question last. A *gold* prompt asks about one of them (the
gold document); an *absent* prompt asks about someone no document describes, so the mass each
document receives is position bias only (no labels needed). ``paraphrase`` questions name the
person by what they did ("the person who bound books") instead of by name, so finding the document
is not a string match.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sra_rag.config import SRAConfig
from sra_rag.evaluation.suites import _DEEDS, _PROFESSIONS, _name
from sra_rag.rag.stuffing import Chunk, StuffedPrompt, stuff_prompt
from sra_rag.readout.calibration import ReadoutProfile, fit_profile, rank_of_gold
from sra_rag.readout.recorder import Readout

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

# Profession -> a description that shares no content word with it (for the paraphrased questions).
PARAPHRASES = {
    "glassblower": "shaped molten sand into vessels",
    "cartographer": "drew maps of the coast",
    "beekeeper": "kept hives and sold honey",
    "clockmaker": "built and repaired timepieces",
    "ferry captain": "steered the boat across the river",
    "botanist": "studied and catalogued plants",
    "bookbinder": "sewed and glued volumes together",
    "stonemason": "cut and laid masonry blocks",
}
FILLER = [
    "{p} kept a small garden behind the house and grew beans there every summer.",
    "Letters written by {p} survive in the parish archive, mostly about the weather and the harvest.",
    "{p} was known for a loud laugh and for never missing the autumn fair.",
    "In old age {p} liked to sit by the harbour wall and watch the fishing boats return.",
    "A portrait of {p} hangs in the reading room of the local library.",
    "{p} married late and had two children, who both moved away to the city.",
]


@dataclass(frozen=True)
class ReadoutPrompt:
    """A reader prompt with its gold document (index in prompt order; None: the person is absent)."""

    stuffed: StuffedPrompt
    gold: int | None
    answer: str
    kind: str  # "name", "paraphrase" or "absent"


def _person(rng: random.Random, profession: str) -> tuple[str, str, str]:
    person, town = f"{_name(rng, 2)} {_name(rng, 3)}", _name(rng, 3)
    deeds = rng.sample(_DEEDS, 2)
    text = (
        f"{person} was born in {rng.randint(1801, 1899)} in the town of {town}. {person} worked as a "
        f"{profession} and {deeds[0]}. Later in life, {person} {deeds[1]} and was remembered fondly by neighbours. "
    ) + " ".join(line.format(p=person) for line in rng.sample(FILLER, 4))
    return person, town, text


def build_prompt(
    engine: SRAEngine, rng: random.Random, length: int, kind: str, depth: float | None = None
) -> ReadoutPrompt:
    """A reader prompt of about ``length`` tokens (documents are added while it fits), asking a
    ``kind`` question ("name", "paraphrase" or "absent") with the gold document at relative
    ``depth`` (None: random). In a paraphrase prompt only the gold person has the asked profession."""
    if kind not in ("name", "paraphrase", "absent"):
        raise ValueError(f"kind must be 'name', 'paraphrase' or 'absent', got {kind!r}")
    asked_profession = rng.choice(list(PARAPHRASES))
    others = [profession for profession in _PROFESSIONS if profession != asked_profession]
    per_document = engine.count_tokens(_person(random.Random(0), asked_profession)[2]) + 12
    count = max(2, (length - 120) // per_document)
    gold = None if kind == "absent" else (rng.randrange(count) if depth is None else round(depth * (count - 1)))
    people = [_person(rng, asked_profession if index == gold else rng.choice(others)) for index in range(count)]
    asked = _person(rng, asked_profession) if gold is None else people[gold]
    if kind == "paraphrase":
        question = f"In which town was the person who {PARAPHRASES[asked_profession]} born?"
    else:
        question = f"In which town was {asked[0]} born?"
    chunks = [Chunk(text, f"registry/record-{index + 1}.txt", 0) for index, (_, _, text) in enumerate(people)]
    stuffed = stuff_prompt(engine, question, chunks, max_new_tokens=16, overflow="error")
    order = [chunk.source for chunk in stuffed.chunks]
    position = None if gold is None else order.index(chunks[gold].source)
    return ReadoutPrompt(stuffed, position, asked[1], kind)


def prompts(
    engine: SRAEngine, seed: int, lengths: Sequence[int], count: int, kinds: Sequence[str]
) -> Iterator[ReadoutPrompt]:
    """``count`` prompts per length, their kinds cycling through ``kinds``, gold depths spread evenly."""
    for length in lengths:
        rng = random.Random(f"readout-{seed}-{length}")
        for index in range(count):
            kind = kinds[index % len(kinds)]
            depth = (index // len(kinds)) % 5 / 4
            yield build_prompt(engine, rng, length, kind, None if kind == "absent" else depth)


def read(engine: SRAEngine, prompt: ReadoutPrompt, sra: SRAConfig | None = None) -> Readout:
    """The raw readout of ``prompt`` (one prefill; stock attention unless ``sra`` is given)."""
    request = engine.request(
        prompt.stuffed.messages,
        layout=prompt.stuffed.layout,
        max_new_tokens=1,
        sra=sra or SRAConfig.preset("off"),
    )
    stream = engine.submit(request)
    for _ in stream:
        pass
    if stream.document_attention is None:
        raise RuntimeError("the engine returned no readout for a prompt with documents and a question")
    return stream.document_attention.readout


def calibrate(
    engine: SRAEngine,
    *,
    seed: int = 1000,
    lengths: Sequence[int] = (1024, 2048),
    count: int = 12,
    length_exponent: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> ReadoutProfile:
    """Measure ``engine``'s readout profile: per length, ``count`` prompts, alternately asking about
    an absent person (the position bias, no labels) and about a planted gold person (the layer band),
    scoring documents with ``length_exponent`` (see :class:`~sra_rag.readout.calibration.ReadoutProfile`)."""
    absent: list[Readout] = []
    gold: list[tuple[Readout, int]] = []
    for index, prompt in enumerate(prompts(engine, seed, lengths, count, ("absent", "name"))):
        readout = read(engine, prompt)
        if prompt.gold is None:
            absent.append(readout)
        else:
            gold.append((readout, prompt.gold))
        if progress is not None:
            progress(f"calibration prompt {index + 1}/{len(lengths) * count}: {readout.layout.length} tokens")
    details: dict[str, object] = {
        "seed": seed,
        "lengths": list(lengths),
        "absent_prompts": len(absent),
        "gold_prompts": len(gold),
        "documents": sorted({len(readout.layout.documents) for readout in absent}),
    }
    return fit_profile(engine.name, absent, gold, details, length_exponent)


@dataclass(frozen=True)
class Measurement:
    """One prompt's readout ranks: the gold document's rank (0 = first) raw and calibrated."""

    length: int
    kind: str
    gold: int
    documents: int
    raw_rank: int
    calibrated_rank: int


def measure(
    engine: SRAEngine,
    profile: ReadoutProfile,
    *,
    seed: int,
    length: int,
    count: int,
    kinds: Sequence[str] = ("name", "paraphrase"),
    progress: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Rank of the gold document on ``count`` fresh prompts of ``length`` tokens: raw (the band's
    mean log length-normalised mass) and calibrated (minus the profile's position bias)."""
    raw_profile = profile.model_copy(update={"calibrated": False})
    results = []
    for index, prompt in enumerate(prompts(engine, seed, [length], count, kinds)):
        assert prompt.gold is not None
        readout = read(engine, prompt)
        raw = np.asarray(raw_profile.score(readout).scores)
        calibrated = np.asarray(profile.score(readout).scores)
        results.append(
            Measurement(
                readout.layout.length,
                prompt.kind,
                prompt.gold,
                len(readout.layout.documents),
                rank_of_gold(raw, prompt.gold),
                rank_of_gold(calibrated, prompt.gold),
            )
        )
        if progress is not None:
            last = results[-1]
            progress(
                f"{index + 1}/{count}: gold {last.gold} of {last.documents}, "
                f"rank raw {last.raw_rank}, calibrated {last.calibrated_rank}"
            )
    return results


def recall_table(results: Sequence[Measurement]) -> list[dict[str, object]]:
    """Recall@1 and @3 of the gold document, raw and calibrated, per question kind and overall, with
    95% Wilson intervals of Recall@1."""
    from sra_rag.evaluation.report import wilson_interval

    rows = []
    groups = {kind: [r for r in results if r.kind == kind] for kind in dict.fromkeys(r.kind for r in results)}
    groups["all"] = list(results)
    for kind, items in groups.items():
        row: dict[str, object] = {"questions": kind, "prompts": len(items)}
        for name in ("raw", "calibrated"):
            ranks = [getattr(item, f"{name}_rank") for item in items]
            hits = sum(rank == 0 for rank in ranks)
            row[f"{name}_recall@1"] = hits / len(items)
            row[f"{name}_recall@1_95ci"] = [round(x, 3) for x in wilson_interval(hits, len(items))]
            row[f"{name}_recall@3"] = sum(rank < 3 for rank in ranks) / len(items)
        rows.append(row)
    return rows
