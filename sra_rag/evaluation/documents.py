"""Does document reattention help? Held-out answers and readout ranks on the reader's own prompt.

``python -m sra_rag.evaluation.documents --model qwen2.5-coder-0.5b --length 2048 --count 100 --seed 11
--out docs/eval/documents/qwen-2k`` builds ``count`` prompts of :mod:`sra_rag.evaluation.readout`
(numbered biographies, the gold document at relative depths 0, .25, .5, .75, 1 in turn, name and
paraphrase questions alternating), answers each greedily with every setting (stock attention first),
and writes per prompt: the gold document's readout rank (raw and calibrated, from the stock run) and
whether each setting's answer names the gold town. The report gives accuracy per depth with 95% Wilson
intervals, gained / lost answers against stock with an exact two-sided sign test, Recall@1 / @3 and
each setting's prefill time as a ratio to stock in the same run. Outcomes are saved after every
prompt; ``--resume`` continues an interrupted run (same arguments, same ``--out``) where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sra_rag.config import SRAConfig
from sra_rag.evaluation.readout import ReadoutPrompt, prompts
from sra_rag.evaluation.report import wilson_interval
from sra_rag.rag.ordering import Placement, check_placement, order_by_attention, ordered
from sra_rag.rag.reader import DEFAULT_STOP
from sra_rag.readout.calibration import ReadoutProfile, rank_of_gold

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine
    from sra_rag.readout.recorder import DocumentAttention

BASELINE = "off"
DEFAULT_SETTINGS = ("off", "documents")
NEW_TOKENS = 32


@dataclass
class Outcome:
    """One prompt: where the gold document was, how the stock readout ranked it, and per setting the
    reply, whether it names the gold town and the prefill seconds."""

    index: int
    kind: str
    length: int
    documents: int
    gold: int
    depth: float
    answer: str
    raw_rank: int
    calibrated_rank: int
    replies: dict[str, str] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)
    prefill_seconds: dict[str, float] = field(default_factory=dict)


def setting(name: str) -> tuple[SRAConfig, Placement | None]:
    """A setting by name: a preset (``documents``), ``order-<placement>`` (stock attention with
    attention-ordered stuffing, :mod:`sra_rag.rag.ordering`) or ``<preset>+order-<placement>``."""
    preset, _, order = name.partition("+")
    if preset.startswith("order-") and not order:
        preset, order = "off", preset
    if order and not order.startswith("order-"):
        raise ValueError(f"a setting is PRESET, order-PLACEMENT or PRESET+order-PLACEMENT, got {name!r}")
    return SRAConfig.preset(preset), check_placement(order.removeprefix("order-")) if order else None


def _answer(
    engine: SRAEngine,
    prompt: ReadoutPrompt,
    sra: SRAConfig,
    placement: Placement | None = None,
    readout: tuple[DocumentAttention, float] | None = None,
) -> tuple[str, float, DocumentAttention | None]:
    """The reader's greedy reply (the reader's stop strings and repetition penalty), its prefill
    seconds (both prefills when re-ordered) and its document attention. A re-ordered setting whose
    attention equals the baseline's takes the baseline run's ``readout`` (its document attention and
    prefill seconds) instead of a probe: the probe would be that very prefill again."""
    stuffed, probe_seconds = prompt.stuffed, 0.0
    if placement is not None:
        if readout is None:
            stuffed, _, probe_seconds = order_by_attention(engine, stuffed, placement, sra)
        else:
            stuffed, probe_seconds = ordered(engine, stuffed, readout[0], placement), readout[1]
    stream = engine.stream(
        stuffed.messages,
        layout=stuffed.layout,
        max_new_tokens=NEW_TOKENS,
        sra=sra,
        stop=list(DEFAULT_STOP),
        repetition_penalty=1.2,
        penalize_prompt=False,
    )
    text = "".join(stream)
    return text, probe_seconds + float(stream.prefill_seconds or 0.0), stream.document_attention


def run(
    engine: SRAEngine,
    profile: ReadoutProfile,
    *,
    seed: int,
    length: int,
    count: int,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    kinds: Sequence[str] = ("name", "paraphrase"),
    done: Sequence[Outcome] = (),
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    """Answer ``count`` fresh prompts of about ``length`` tokens with every preset in ``settings``
    (the first is the baseline whose readout gives the ranks). ``done``: the outcomes of the first
    prompts from an interrupted run with the same arguments (:func:`resume`), which are kept and not
    answered again; ``checkpoint`` is called with all outcomes so far after each prompt."""
    configs = {name: setting(name) for name in settings}
    stock, stock_placement = configs[settings[0]]
    raw_profile = profile.model_copy(update={"calibrated": False})
    outcomes: list[Outcome] = list(done)
    for index, prompt in enumerate(prompts(engine, seed, [length], count, kinds)):
        if index < len(done):
            continue
        assert prompt.gold is not None
        documents = len(prompt.stuffed.layout.documents)
        outcome: Outcome | None = None
        baseline: tuple[DocumentAttention, float] | None = None
        for name, (config, placement) in configs.items():
            reuse = baseline if config == stock and stock_placement is None else None
            reply, seconds, attention = _answer(engine, prompt, config, placement, reuse)
            if outcome is None:
                readout = getattr(attention, "readout", None)
                if attention is None or readout is None:
                    raise RuntimeError("the baseline run returned no readout")
                baseline = (attention, seconds)
                outcome = Outcome(
                    index,
                    prompt.kind,
                    readout.layout.length,
                    documents,
                    prompt.gold,
                    prompt.gold / max(1, documents - 1),
                    prompt.answer,
                    rank_of_gold(np.asarray(raw_profile.score(readout).scores), prompt.gold),
                    rank_of_gold(np.asarray(profile.score(readout).scores), prompt.gold),
                )
            outcome.replies[name] = reply
            outcome.correct[name] = prompt.answer.lower() in reply.lower()
            outcome.prefill_seconds[name] = seconds
        assert outcome is not None
        outcomes.append(outcome)
        if checkpoint is not None:
            checkpoint(outcomes)
        if progress is not None:
            marks = " ".join(f"{name}={'Y' if ok else '.'}" for name, ok in outcome.correct.items())
            progress(
                f"{index + 1}/{count} {outcome.kind} gold {outcome.gold}/{documents} "
                f"rank raw {outcome.raw_rank} cal {outcome.calibrated_rank}: {marks}"
            )
    return outcomes


def save(folder: Path, arguments: dict[str, object], outcomes: Sequence[Outcome]) -> None:
    """Write ``outcomes.json`` and, beside it, ``run.json`` (the arguments that made them), each
    replaced whole so that an interrupted run leaves the last complete prompt's state."""
    for name, value in (("run.json", arguments), ("outcomes.json", [asdict(o) for o in outcomes])):
        partial = folder / f".{name}.partial"
        partial.write_text(json.dumps(value, indent=1) + "\n")
        partial.replace(folder / name)


def resume(folder: Path, arguments: dict[str, object]) -> list[Outcome]:
    """The outcomes saved in ``folder`` by a run with the same ``arguments``; none if it holds no run."""
    outcomes, arguments_file = folder / "outcomes.json", folder / "run.json"
    if not outcomes.exists():
        return []
    if not arguments_file.exists():
        raise ValueError(f"{outcomes} has no run.json beside it, so it cannot be resumed: pass another --out")
    saved = json.loads(arguments_file.read_text())
    if saved != arguments:
        differ = ", ".join(
            f"{key} {saved.get(key)!r} there, {value!r} here"
            for key, value in arguments.items()
            if saved.get(key) != value
        )
        raise ValueError(f"{folder} holds a run with other arguments ({differ}): pass those or another --out")
    return [Outcome(**item) for item in json.loads(outcomes.read_text())]


def sign_test(gained: int, lost: int) -> float:
    """Exact two-sided sign test p-value of ``gained`` against ``lost`` discordant pairs."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _percent(hits: int, total: int) -> str:
    low, high = wilson_interval(hits, total)
    return f"{100 * hits / total:.0f}% ({hits}/{total}; {100 * low:.0f}-{100 * high:.0f})"


def report(outcomes: Sequence[Outcome], title: str) -> str:
    """Markdown: readout recall, accuracy per depth and pooled, paired change against the baseline."""
    settings = list(outcomes[0].correct)
    baseline = settings[0]
    total = len(outcomes)
    lines = [f"## {title}", ""]
    lines += [
        f"{total} prompts, {outcomes[0].documents}-{max(o.documents for o in outcomes)} documents, "
        f"{min(o.length for o in outcomes)}-{max(o.length for o in outcomes)} tokens.",
        "",
        "| readout (stock run) | questions | Recall@1 | Recall@3 |",
        "|---|---|---|---|",
    ]
    for kind in [*dict.fromkeys(o.kind for o in outcomes), "all"]:
        items = [o for o in outcomes if kind in ("all", o.kind)]
        for name in ("raw", "calibrated"):
            ranks = [getattr(o, f"{name}_rank") for o in items]
            top1 = sum(rank == 0 for rank in ranks)
            top3 = sum(rank < 3 for rank in ranks)
            lines.append(f"| {name} | {kind} | {_percent(top1, len(items))} | {100 * top3 / len(items):.0f}% |")
    depths = sorted({o.depth for o in outcomes})
    lines += [
        "",
        "Answers naming the gold town, per gold depth (95% Wilson interval):",
        "",
        "| setting | " + " | ".join(f"depth {d:.2f}" for d in depths) + " | middle (0.25-0.75) | all |",
        "|---|" + "---|" * (len(depths) + 2),
    ]
    for name in settings:
        cells = []
        for depth in depths:
            items = [o for o in outcomes if o.depth == depth]
            cells.append(_percent(sum(o.correct[name] for o in items), len(items)))
        middle = [o for o in outcomes if 0.2 <= o.depth <= 0.8]
        cells.append(_percent(sum(o.correct[name] for o in middle), len(middle)) if middle else "-")
        cells.append(_percent(sum(o.correct[name] for o in outcomes), total))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", f"Paired against `{baseline}` on the same prompts:", ""]
    lines += [
        "| setting | scope | change | gained | lost | sign test p | prefill time / stock |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in settings[1:]:
        ratio = float(
            np.median(
                [o.prefill_seconds[name] / o.prefill_seconds[baseline] for o in outcomes if o.prefill_seconds[baseline]]
            )
        )
        for scope, items in (
            ("middle (0.25-0.75)", [o for o in outcomes if 0.2 <= o.depth <= 0.8]),
            ("all", list(outcomes)),
        ):
            if not items:
                continue
            gained = sum(o.correct[name] and not o.correct[baseline] for o in items)
            lost = sum(o.correct[baseline] and not o.correct[name] for o in items)
            change = 100 * (gained - lost) / len(items)
            lines.append(
                f"| `{name}` | {scope} | {change:+.1f} points | {gained} | {lost} | "
                f"{_p_value(sign_test(gained, lost))} | {ratio:.2f}x |"
            )
    reused = [name for name in settings[1:] if _reuses_readout(settings[0], name)]
    if reused:
        lines += [
            "",
            f"{', '.join(f'`{name}`' for name in reused)}: re-ordered under the baseline's attention, so the "
            "baseline's run is its readout and its time counts a full prefill for it. A user's run reads "
            "only up to the readout band's end (`SRAEngine.read`; `make bench`, row `sra+read`), so the "
            "ratio shown is an upper bound.",
        ]
    return "\n".join(lines) + "\n"


def _reuses_readout(baseline: str, name: str) -> bool:
    """Whether setting ``name`` re-orders under ``baseline``'s attention (and so takes its readout)."""
    (stock, stock_placement), (config, placement) = setting(baseline), setting(name)
    return placement is not None and stock_placement is None and config == stock


CHROMA_KINDS: tuple[str, ...] = ("name", "paraphrase", "mentioned")
# Short records that name the asked person beside another person born in another town: they match a
# name question better than the gold biography does, and hold a wrong town.
MENTIONS: tuple[str, ...] = (
    "{person}'s cousin {other} was born in the town of {town} and visited {person} every summer.",
    "{other}, born in {town}, wrote many letters to {person} about the weather and the harvest.",
    "{other} and {person} once worked together for a season in {town}, where {other} was born.",
)


@dataclass
class ChromaOutcome:
    """One question through a Chroma store: the retriever's rank of the gold record (1-based; None:
    not retrieved), the reader's prompt position of it, and per setting whether the answer names the
    gold town and the gold source's rank by ``Answer.source_attention``."""

    kind: str
    retrieved_rank: int | None
    correct: dict[str, bool] = field(default_factory=dict)
    attention_rank: dict[str, int | None] = field(default_factory=dict)


def chroma_check(
    engine: SRAEngine,
    folder: Path,
    *,
    seed: int,
    records: int = 40,
    questions: int = 20,
    top_k: int = 10,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    kinds: Sequence[str] = ("name", "paraphrase"),
    progress: Callable[[str], None] | None = None,
) -> list[ChromaOutcome]:
    """End to end as users run it: ``records`` biographies written as files, ingested into a fresh
    Chroma store in ``folder``, then ``questions`` questions, answered by
    :class:`~sra_rag.rag.reader.Reader` with ``top_k`` retrieved records. Questions alternate between
    naming one record's person and paraphrasing what one person did: each paraphrased profession
    belongs to exactly one record (the others get the remaining professions), so a paraphrase has one
    right answer, and the retriever, matching meaning rather than a name, ranks its record anywhere
    in 1..k (or misses it). ``kinds`` sets the cycle of question kinds; ``"mentioned"`` asks for a
    person whom 1 to ``top_k - 2`` short extra records mention beside another person born in another
    town (a cousin, a letter), so the retriever ranks those above the gold record and the reader must
    find the birth town in the gold one among records that name the person."""
    unknown = [kind for kind in kinds if kind not in CHROMA_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be some of {CHROMA_KINDS}, got {list(kinds)}")
    if "mentioned" in kinds and top_k < 3:
        raise ValueError(f"'mentioned' questions need top_k of at least 3, got {top_k}")
    from sra_rag.evaluation.readout import _PROFESSIONS, PARAPHRASES, _person
    from sra_rag.rag.ingest import ingest
    from sra_rag.rag.reader import Reader
    from sra_rag.rag.store import ChromaStore

    rng = random.Random(f"chroma-{seed}")
    unique = list(PARAPHRASES)
    if records <= len(unique):
        raise ValueError(f"records must exceed the {len(unique)} paraphrased professions, got {records}")
    common = [profession for profession in _PROFESSIONS if profession not in PARAPHRASES]
    professions = unique + [common[index % len(common)] for index in range(records - len(unique))]
    rng.shuffle(professions)
    people = [_person(rng, profession) for profession in professions]
    corpus = folder / "registry"
    corpus.mkdir(parents=True, exist_ok=True)
    for index, (_, _, text) in enumerate(people):
        (corpus / f"record-{index + 1:03d}.txt").write_text(text + "\n")
    plan = [kinds[number % len(kinds)] for number in range(questions)]
    mentioned = _write_mentions(corpus, people, plan, records, top_k, random.Random(f"chroma-mentions-{seed}"))
    store = ChromaStore.open(folder / "store")
    ingest(store, corpus, progress=False)
    outcomes = []
    for number in range(questions):
        kind = plan[number]
        if kind in ("name", "mentioned"):
            index = mentioned[number] if kind == "mentioned" else rng.randrange(records)
            question = f"In which town was {people[index][0]} born?"
        else:
            index = professions.index(rng.choice(unique))
            question = f"In which town was the person who {PARAPHRASES[professions[index]]} born?"
        town = people[index][1]
        source = f"record-{index + 1:03d}.txt"
        outcome: ChromaOutcome | None = None
        for name in settings:
            config, placement = setting(name)
            reader = Reader(
                engine,
                store,
                top_k=top_k,
                sra=config,
                max_new_tokens=NEW_TOKENS,
                sampling={"repetition_penalty": 1.2, "penalize_prompt": False},
                order=placement,
            )
            retrieved = [chunk.source.rsplit("/", 1)[-1] for chunk in reader.retrieve(question)]
            if outcome is None:
                rank = retrieved.index(source) + 1 if source in retrieved else None
                outcome = ChromaOutcome(kind, rank)
            answer = reader.ask(question)
            outcome.correct[name] = town.lower() in answer.text.lower()
            names = [item.rsplit("/", 1)[-1] for item in answer.sources]
            scores = answer.source_attention
            if source in names and scores:
                gold = scores[names.index(source)]
                outcome.attention_rank[name] = sum(score > gold for score in scores) + 1
            else:
                outcome.attention_rank[name] = None
        assert outcome is not None
        outcomes.append(outcome)
        if progress is not None:
            progress(
                f"chroma {number + 1}/{questions} {kind}: retrieved rank {outcome.retrieved_rank}, "
                f"attention rank {outcome.attention_rank}, correct {outcome.correct}"
            )
    return outcomes


def _write_mentions(
    corpus: Path,
    people: Sequence[tuple[str, str, str]],
    plan: Sequence[str],
    records: int,
    top_k: int,
    rng: random.Random,
) -> dict[int, int]:
    """For each ``"mentioned"`` question of ``plan``: pick its person and write 1 to ``top_k - 2``
    short records that name them beside someone else born elsewhere. Returns question number ->
    the asked record's index."""
    from sra_rag.evaluation.readout import _name

    asked: dict[int, int] = {}
    written = records
    for number, kind in enumerate(plan):
        if kind != "mentioned":
            continue
        asked[number] = index = rng.randrange(records)
        for _ in range(rng.randint(1, top_k - 2)):
            written += 1
            other, town = f"{_name(rng, 2)} {_name(rng, 3)}", _name(rng, 3)
            text = rng.choice(MENTIONS).format(person=people[index][0], other=other, town=town)
            (corpus / f"record-{written:03d}.txt").write_text(text + "\n")
    return asked


def chroma_report(outcomes: Sequence[ChromaOutcome], title: str) -> str:
    """Markdown: per retriever rank of the gold record, answers right per setting and how often the
    calibrated attention put the gold source first."""
    settings = list(outcomes[0].correct)
    lines = [
        f"## {title}",
        "",
        "| retriever rank of the gold record | questions | "
        + " | ".join(f"`{s}` right" for s in settings)
        + " | attention ranks it first (stock run) |",
        "|---|---|" + "---|" * (len(settings) + 1),
    ]
    buckets = {
        "1": lambda r: r == 1,
        "2-3": lambda r: r in (2, 3),
        "4-10": lambda r: r is not None and r >= 4,
        "not retrieved": lambda r: r is None,
    }
    for label, test in buckets.items():
        items = [o for o in outcomes if test(o.retrieved_rank)]
        if not items:
            continue
        cells = [f"{sum(o.correct[s] for o in items)}/{len(items)}" for s in settings]
        first = sum(o.attention_rank[settings[0]] == 1 for o in items)
        lines.append(f"| {label} | {len(items)} | " + " | ".join(cells) + f" | {first}/{len(items)} |")
    cells = [f"{sum(o.correct[s] for o in outcomes)}/{len(outcomes)}" for s in settings]
    first = sum(o.attention_rank[settings[0]] == 1 for o in outcomes)
    lines.append(f"| all | {len(outcomes)} | " + " | ".join(cells) + f" | {first}/{len(outcomes)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="as for SRAEngine.from_pretrained (default: smollm2-135m)"
    )
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens (about)")
    parser.add_argument("--count", type=int, default=100, help="prompts")
    parser.add_argument("--seed", type=int, default=11, help="prompt seed (settings were chosen on others)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="presets, order-PLACEMENT or PRESET+order-PLACEMENT (first, last, ends); the first is the baseline",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for outcomes.json and report.md")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the prompts already answered in --out by a run with the same arguments (saved after each prompt)",
    )
    parser.add_argument(
        "--chroma", action="store_true", help="the end-to-end check through a Chroma store instead (chroma.md)"
    )
    parser.add_argument("--questions", type=int, default=20, help="questions of the --chroma check")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=CHROMA_KINDS,
        default=["name", "paraphrase"],
        help="question kinds of the --chroma check, in turn (mentioned: other records name the person too)",
    )
    args = parser.parse_args(argv)
    if args.questions < 1:
        parser.error(f"--questions must be a positive number, got {args.questions}")
    from sra_rag.engine import SRAEngine

    engine = SRAEngine.from_pretrained(args.model)
    profile = engine.readout_profile
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.chroma:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            checked = chroma_check(
                engine,
                Path(folder),
                seed=args.seed,
                questions=args.questions,
                kinds=args.kinds,
                settings=args.settings,
                progress=print,
            )
        text = chroma_report(checked, f"{engine.name} through a Chroma store, seed {args.seed}")
        (args.out / "chroma.md").write_text(text)
        print(text)
        return
    arguments = {
        "model": engine.name,
        "length": args.length,
        "count": args.count,
        "seed": args.seed,
        "settings": list(args.settings),
    }
    try:
        done = resume(args.out, arguments) if args.resume else []
    except ValueError as error:
        parser.error(str(error))
    outcomes = run(
        engine,
        profile,
        seed=args.seed,
        length=args.length,
        count=args.count,
        settings=args.settings,
        done=done,
        progress=print,
        checkpoint=lambda outcomes: save(args.out, arguments, outcomes),
    )
    title = f"{engine.name}, ~{args.length} tokens, seed {args.seed}, profile layers {list(profile.layers)}"
    text = report(outcomes, title)
    (args.out / "report.md").write_text(text)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
