"""Seeded synthetic long-context suites: nothing to download, answers the model cannot know by heart.

Every suite is a function ``(count_tokens, lengths, depths, per_cell, seed) -> list[Example]``.
``count_tokens(text) -> int`` sizes the context (``engine.count_tokens`` in real runs, any cheap
counter in tests); ``lengths`` are target context sizes in tokens (the document part of the prompt;
the chat template and question add a few dozen); ``depths`` are where the gold item sits, as a
fraction of the context (0 = first, 1 = last). The same arguments always give the same examples,
and each (length, depth) cell has its own random stream: adding a length or a depth to a grid leaves
the prompts of the other cells unchanged, so runs over different grids can be compared cell by cell.

- ``passkey``: a 5-digit pass key hidden in repeated filler (needle in a haystack).
- ``kv``: key-value retrieval over random UUID pairs, gold pair at a given position
  (lost-in-the-middle style).
- ``qa``: multi-document QA over fictional biographies; the gold document's position is swept.
- ``summary``: summarise a report with planted facts at spread depths; score = recall of the facts.
- ``reader``: the same biographies as retrieved documents, answered through
  :class:`~sra_rag.rag.reader.Reader` with its own prompt; its sizes are numbers of retrieved
  documents, not tokens.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sra_rag.rag.stuffing import Chunk

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Answer:
    """One scored item of an example: ``text`` must appear in the output (case-insensitive,
    whitespace-normalised); ``position`` is its depth in the context, in [0, 1]."""

    text: str
    position: float


@dataclass(frozen=True)
class Example:
    """One prompt of a suite.

    ``messages``: the chat prompt; ``question``: text that occurs in the last message and starts the
    question-aware SRA tail (``tail_from``); ``answers``: the scored items; ``length``: the target
    context size in tokens (a label: the exact prompt size is measured by the runner);
    ``depth``: the gold item's depth label (None for suites with items at several depths).

    ``choices``: for suites whose context holds many candidate answers (every town of a QA
    prompt), all of them, the gold one included. Then an answer counts only when it is the *first*
    choice the output names: a reply that lists several candidates, or recites a wrong document
    before the right one, is wrong, while a lead-in ("The answer to this question is:") or a
    sentence around the answer is not penalised. ``ignore``: text removed from the output before
    scoring (the question's subject, which replies restate and whose words may match a choice).

    ``chunks``: for the ``reader`` suite, the retrieved documents, best-ranked first; the example
    then runs through :class:`~sra_rag.rag.reader.Reader`, which builds the prompt (``messages`` is
    empty) from ``question``, the user's question. ``cite``: the source the reply should cite.
    """

    suite: str
    id: str
    messages: list[dict[str, str]]
    question: str
    answers: tuple[Answer, ...]
    length: int
    depth: float | None
    max_new_tokens: int
    stop: tuple[str, ...] = field(default=())
    choices: tuple[str, ...] = field(default=())
    ignore: tuple[str, ...] = field(default=())
    chunks: tuple[Chunk, ...] = field(default=())
    cite: str | None = None

    def score(self, output: str) -> list[bool]:
        """One verdict per answer: does its text appear in ``output`` (with ``choices``: is it the
        first choice ``output`` names, as a whole word)?"""
        normalised = self._without_ignored(output)
        if not self.choices:
            return [_normalise(answer.text) in normalised for answer in self.answers]
        named = _first_named(normalised, self.choices)
        return [named == _normalise(answer.text) for answer in self.answers]

    def named_choice(self, output: str) -> int | None:
        """The index in ``choices`` of the first choice ``output`` names as a whole word (the texts
        of ``ignore`` left out, as :meth:`score` does), or None."""
        named = _first_named(self._without_ignored(output), self.choices) if self.choices else None
        return None if named is None else [_normalise(choice) for choice in self.choices].index(named)

    def _without_ignored(self, output: str) -> str:
        normalised = _normalise(output)
        for text in self.ignore:
            normalised = normalised.replace(_normalise(text), " ")
        return normalised


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _first_named(normalised: str, choices: Sequence[str]) -> str | None:
    """The choice (normalised) that occurs first in ``normalised`` as a whole word, or None."""
    alternatives = sorted({_normalise(choice) for choice in choices}, key=len, reverse=True)
    match = re.search(r"\b(?:" + "|".join(map(re.escape, alternatives)) + r")\b", normalised)
    return match.group(0) if match else None


def _check_grid(lengths: Sequence[int], depths: Sequence[float], per_cell: int) -> None:
    if not lengths or any(not isinstance(n, int) or n < 64 for n in lengths):
        raise ValueError(f"lengths must be integers >= 64 (tokens), got {list(lengths)}")
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be fractions in [0, 1], got {list(depths)}")
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}")


def _fill(units: Callable[[], str], budget: int, count_tokens: TokenCounter) -> list[str]:
    """Draw units until their summed token counts reach ``budget`` (each unit counted alone, so
    the cost is linear in the context size)."""
    pieces: list[str] = []
    total = 0
    while total < budget:
        piece = units()
        pieces.append(piece)
        total += count_tokens(piece) + 1
    return pieces


def _cell_rng(suite: str, seed: int, length: int, depth: float | None = None) -> random.Random:
    """The random stream of one (suite, seed, length, depth) cell."""
    return random.Random(f"{suite}-{seed}-{length}-{'all' if depth is None else format(depth, 'g')}")


def _insert(pieces: list[str], item: str, depth: float) -> list[str]:
    index = round(depth * len(pieces))
    return [*pieces[:index], item, *pieces[index:]]


# -- passkey ---------------------------------------------------------------------------------------

PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorise it. I will quiz you about it."
)
PASSKEY_QUESTION = "What is the pass key? Answer with the number only."


def passkey(
    count_tokens: TokenCounter, lengths: Sequence[int], depths: Sequence[float], per_cell: int = 1, seed: int = 0
) -> list[Example]:
    """Needle in a haystack: ``per_cell`` prompts per (length, depth), each with its own 5-digit key."""
    _check_grid(lengths, depths, per_cell)
    filler_tokens = count_tokens(PASSKEY_FILLER) + 1
    examples = []
    for length in lengths:
        for depth in depths:
            rng = _cell_rng("passkey", seed, length, depth)
            for rep in range(per_cell):
                key = str(rng.randint(10000, 99999))
                needle = f"The pass key is {key}. Remember it. {key} is the pass key."
                repeats = max(1, (length - count_tokens(needle)) // filler_tokens)
                pieces = _insert([PASSKEY_FILLER] * repeats, needle, depth)
                content = f"{PASSKEY_INSTRUCTION}\n\n{' '.join(pieces)}\n\n{PASSKEY_QUESTION}"
                examples.append(
                    Example(
                        suite="passkey",
                        id=f"passkey-{length}-{depth:g}-{rep}",
                        messages=[{"role": "user", "content": content}],
                        question=PASSKEY_QUESTION,
                        answers=(Answer(key, depth),),
                        length=length,
                        depth=depth,
                        max_new_tokens=16,
                        stop=("\n",),
                    )
                )
    return examples


# -- key-value retrieval ---------------------------------------------------------------------------

KV_INSTRUCTION = (
    "Extract the value corresponding to the specified key in the JSON object below. Keys and values are random UUIDs."
)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def kv(
    count_tokens: TokenCounter, lengths: Sequence[int], depths: Sequence[float], per_cell: int = 1, seed: int = 0
) -> list[Example]:
    """Key-value retrieval over random UUID pairs. The answer counts as found when the value's first
    group (8 hex digits) is in the output: chance cannot produce it. Small models often restate the
    key ("The value associated with the key ... is ...") before the value, so the answer line may run
    to 80 tokens (about two UUIDs and the sentence around them)."""
    _check_grid(lengths, depths, per_cell)
    sizing = random.Random(f"kv-{seed}-sizing")
    pair_tokens = count_tokens(f'"{_uuid(sizing)}": "{_uuid(sizing)}", ') + 1
    examples = []
    for length in lengths:
        num_pairs = max(2, length // pair_tokens)
        for depth in depths:
            rng = _cell_rng("kv", seed, length, depth)
            for rep in range(per_cell):
                pairs = [(_uuid(rng), _uuid(rng)) for _ in range(num_pairs)]
                gold = round(depth * (num_pairs - 1))
                key, value = pairs[gold]
                body = ",\n".join(f'  "{k}": "{v}"' for k, v in pairs)
                question = f'Key: "{key}"\nThe value associated with this key is:'
                content = f"{KV_INSTRUCTION}\n\n{{\n{body}\n}}\n\n{question}"
                examples.append(
                    Example(
                        suite="kv",
                        id=f"kv-{length}-{depth:g}-{rep}",
                        messages=[{"role": "user", "content": content}],
                        question=question,
                        answers=(Answer(value.split("-")[0], gold / (num_pairs - 1)),),
                        length=length,
                        depth=depth,
                        max_new_tokens=80,
                        stop=("\n",),
                    )
                )
    return examples


# -- multi-document QA over fictional biographies --------------------------------------------------

_SYLLABLES = ["ka", "lo", "mi", "ver", "dra", "sel", "tor", "bi", "nu", "rha", "quel", "zan", "fo", "gri", "well"]
_PROFESSIONS = [
    "glassblower",
    "cartographer",
    "beekeeper",
    "clockmaker",
    "ferry captain",
    "botanist",
    "bookbinder",
    "stonemason",
    "violin maker",
    "lighthouse keeper",
    "astronomer",
    "weaver",
]
_DEEDS = [
    "founded a small school for apprentices",
    "wrote a long memoir that was never published",
    "travelled across the northern mountains on foot",
    "won a regional prize for craftsmanship",
    "restored an old mill by the river",
    "taught evening classes for many years",
    "kept detailed diaries about the weather",
    "collected rare maps and letters",
]


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def _biography(rng: random.Random, person: str, town: str) -> str:
    year = rng.randint(1801, 1899)
    return (
        f"{person} was born in {year} in the town of {town}. {person} worked as a {rng.choice(_PROFESSIONS)} "
        f"and {rng.choice(_DEEDS)}. Later in life, {person} {rng.choice(_DEEDS)} and was remembered fondly by "
        f"neighbours."
    )


def qa(
    count_tokens: TokenCounter, lengths: Sequence[int], depths: Sequence[float], per_cell: int = 1, seed: int = 0
) -> list[Example]:
    """Multi-document QA: numbered biographies of invented people; the question asks for one
    person's birth town (an invented name), and the gold document sits at the given depth. The reply
    is right when the first town it names is the gold one (see :class:`Example`): models often open
    with a lead-in line or a sentence that restates the person's name, so the reply may run to 40
    tokens and is not cut at the first line break."""
    _check_grid(lengths, depths, per_cell)
    examples = []
    for length in lengths:
        for depth in depths:
            rng = _cell_rng("qa", seed, length, depth)
            for rep in range(per_cell):
                people: dict[str, str] = {}
                docs: list[str] = []
                total = 0
                while total < length:
                    person = f"{_name(rng, 2)} {_name(rng, 3)}"
                    town = _name(rng, 3)
                    if person in people or town in people.values():
                        continue
                    people[person] = town
                    docs.append(_biography(rng, person, town))
                    total += count_tokens(docs[-1]) + 8
                gold = round(depth * (len(docs) - 1))
                person = list(people)[gold]
                numbered = "\n\n".join(f"Document [{i + 1}]\n{doc}" for i, doc in enumerate(docs))
                question = f"Question: In which town was {person} born? Answer with the town's name only."
                content = (
                    "Write an accurate answer to the question using only the documents below.\n\n"
                    f"{numbered}\n\n{question}"
                )
                examples.append(
                    Example(
                        suite="qa",
                        id=f"qa-{length}-{depth:g}-{rep}",
                        messages=[{"role": "user", "content": content}],
                        question=question,
                        answers=(Answer(people[person], gold / max(1, len(docs) - 1)),),
                        length=length,
                        depth=depth,
                        max_new_tokens=40,
                        choices=tuple(people.values()),
                        ignore=(person,),
                    )
                )
    return examples


# -- the reader's own prompt over retrieved biographies ---------------------------------------------

MAX_DOCUMENTS = 100
# Realistic file names that say nothing about their content, so the model must read the text to
# find the gold document (one style per prompt).
_SOURCE_STYLES: tuple[Callable[[random.Random], str], ...] = (
    lambda rng: f"registry/record-{rng.randint(100000, 999999)}.txt",
    lambda rng: f"archive/people/{rng.randint(1801, 1899)}-{rng.randint(1000, 9999)}.md",
    lambda rng: f"parish-records/entry_{rng.randint(1000, 99999):05d}.txt",
)


def reader(
    count_tokens: TokenCounter, documents: Sequence[int], depths: Sequence[float], per_cell: int = 1, seed: int = 0
) -> list[Example]:
    """The reader as users run it: ``documents`` retrieved biographies (one source each, with a
    realistic file name), the gold one at retrieval rank ``round(depth * (documents - 1))``, and a
    plain question about one person's birth town. The prompt is the reader's own (built at run
    time by :class:`~sra_rag.rag.reader.Reader`), so ``messages`` is empty and ``length`` is the
    number of documents. Scored like ``qa`` (the first town named must be the gold one); ``cite``
    names the gold source, whose citation number the runner checks. ``count_tokens`` is not used:
    the size is set by the number of documents."""
    del count_tokens
    if not documents or any(
        not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_DOCUMENTS for n in documents
    ):
        raise ValueError(
            f"the reader suite's sizes are numbers of retrieved documents from 1 to {MAX_DOCUMENTS}, "
            f"got {list(documents)}"
        )
    _check_grid([64], depths, per_cell)
    examples = []
    for count in documents:
        for depth in depths:
            rng = _cell_rng("reader", seed, count, depth)
            for rep in range(per_cell):
                style = rng.choice(_SOURCE_STYLES)
                people: dict[str, str] = {}
                chunks: list[Chunk] = []
                while len(chunks) < count:
                    person = f"{_name(rng, 2)} {_name(rng, 3)}"
                    town = _name(rng, 3)
                    source = style(rng)
                    if person in people or town in people.values() or source in {c.source for c in chunks}:
                        continue
                    people[person] = town
                    chunks.append(Chunk(_biography(rng, person, town), source, 0, id=f"{source}#0"))
                gold = round(depth * (count - 1))
                person = list(people)[gold]
                examples.append(
                    Example(
                        suite="reader",
                        id=f"reader-{count}-{depth:g}-{rep}",
                        messages=[],
                        question=f"In which town was {person} born?",
                        answers=(Answer(people[person], gold / max(1, count - 1)),),
                        length=count,
                        depth=depth,
                        max_new_tokens=READER_MAX_NEW_TOKENS,
                        choices=tuple(people.values()),
                        ignore=(person,),
                        chunks=tuple(chunks),
                        cite=chunks[gold].source,
                    )
                )
    return examples


# A sentence with the town and a citation, after a possible lead-in; a reply that lists the sources
# instead of answering runs to this limit.
READER_MAX_NEW_TOKENS = 64


# -- summarisation with planted facts --------------------------------------------------------------

_SUBJECTS = ["The committee", "The council", "The survey team", "The harbour office", "The library board"]
_VERBS = ["discussed", "reviewed", "postponed a decision on", "asked for more details about", "briefly noted"]
_TOPICS = [
    "the state of the footpaths",
    "the timetable of the summer market",
    "repairs to the old bandstand",
    "the cleaning of the public fountains",
    "the rota for the reading room",
    "complaints about parking near the square",
    "the painting of the school fence",
]
SUMMARY_INSTRUCTION = "Summarise the report above in a short paragraph, keeping every important fact and number."


def summary(
    count_tokens: TokenCounter,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    per_cell: int = 1,
    seed: int = 0,
) -> list[Example]:
    """A dull meeting report with one planted fact per depth (an invented place and a 4-digit
    number); ``per_cell`` reports per length. Each fact counts as recalled when its number appears."""
    _check_grid(lengths, depths, per_cell)
    examples = []
    for length in lengths:
        rng = _cell_rng("summary", seed, length)

        def filler(rng: random.Random = rng) -> str:
            return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_TOPICS)}."

        for rep in range(per_cell):
            pieces = _fill(filler, length, count_tokens)
            answers = []
            # Insert from the deepest fact first so earlier insertions do not shift later depths.
            for depth in sorted(depths, reverse=True):
                number = str(rng.randint(1000, 9999))
                place = _name(rng, 3)
                fact = f"Important: the new bridge at {place} will cost {number} crowns, the largest sum this year."
                pieces = _insert(pieces, fact, depth)
                answers.append(Answer(number, depth))
            content = f"Report of the town meeting.\n\n{' '.join(pieces)}\n\n{SUMMARY_INSTRUCTION}"
            examples.append(
                Example(
                    suite="summary",
                    id=f"summary-{length}-{rep}",
                    messages=[{"role": "user", "content": content}],
                    question=SUMMARY_INSTRUCTION,
                    answers=tuple(sorted(answers, key=lambda a: a.position)),
                    length=length,
                    depth=None,
                    max_new_tokens=96,
                )
            )
    return examples


SUITES: dict[str, Callable[..., list[Example]]] = {
    "passkey": passkey,
    "kv": kv,
    "qa": qa,
    "summary": summary,
    "reader": reader,
}
# Suites sized by the number of retrieved documents rather than by tokens.
SIZED_BY_DOCUMENTS = frozenset({"reader"})
DEFAULT_DOCUMENTS: tuple[int, ...] = (1, 5, 10, 20, 30)


def build(
    suite: str,
    count_tokens: TokenCounter,
    lengths: Sequence[int],
    depths: Sequence[float],
    per_cell: int = 1,
    seed: int = 0,
    documents: Sequence[int] = DEFAULT_DOCUMENTS,
) -> list[Example]:
    """The examples of suite ``suite`` (one of :data:`SUITES`): ``lengths`` (tokens) size the
    suites, except those in :data:`SIZED_BY_DOCUMENTS`, which take ``documents`` (counts)."""
    try:
        generator = SUITES[suite]
    except KeyError:
        raise ValueError(f"unknown suite {suite!r}; choose from {sorted(SUITES)}") from None
    return generator(count_tokens, documents if suite in SIZED_BY_DOCUMENTS else lengths, depths, per_cell, seed)
