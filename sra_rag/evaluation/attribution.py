"""Which source did the answer come from? The answer's own readout against the question's, held out.

``python -m sra_rag.evaluation.attribution --model smollm2-135m --seed 11 --out docs/eval/attribution/smol``
answers the ``reader`` suite's prompts (retrieved biographies of invented people, the gold one at every
retrieval rank, the reader's own prompt) through :class:`~sra_rag.rag.reader.Reader` with
``attribute=True``, and writes per prompt: the gold source, the source whose town the answer names
(the source the answer's fact comes from, whether right or not), and the top source of the question's
readout (``Answer.source_attention``) and of the answer's (``Answer.answer_attention``), and the
source the answer cites (the model's own citation, or the one the reader appends when it cites none,
``Reader(cite=True)``). The report gives, with 95% Wilson intervals: how often each readout's top
source and the citation are the one the answer's town comes from, and how well "the two readouts
disagree" flags a wrong answer (precision and recall).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sra_rag.config import SRAConfig
from sra_rag.evaluation import suites
from sra_rag.evaluation.report import wilson_interval
from sra_rag.evaluation.runner import RankedRetriever
from sra_rag.rag.citing import CITE_MODES, CiteMode, citation_to_check, most_read
from sra_rag.rag.reader import Reader

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

DEFAULT_DOCUMENTS = (5, 10, 20, 30)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Outcome:
    """One prompt. Source numbers are 1-based, as the reader numbers them; ``named``: the source
    whose town the answer names first (None: it names no town of the prompt); the scores of both
    readouts per source, for other rules than the top source; ``cited``: the first source the
    answer cites (None: none), ``appended``: whether the reader appended that citation."""

    id: str
    documents: int
    gold: int
    named: int | None
    right: bool
    question_top: int
    answer_top: int | None
    reply: str
    question_scores: tuple[float, ...] = ()
    answer_scores: tuple[float, ...] | None = None
    cited: int | None = None
    appended: bool = False

    @property
    def flagged(self) -> bool:
        """The answer read another source most than the question did."""
        return self.answer_top is not None and self.answer_top != self.question_top


def run(
    engine: SRAEngine,
    *,
    seed: int,
    documents: Sequence[int] = DEFAULT_DOCUMENTS,
    per_cell: int = 3,
    sra: SRAConfig | None = None,
    cite: CiteMode = "attention",
    progress: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Answer and attribute ``per_cell`` prompts per number of ``documents`` and gold depth; an
    answer that cites no source gets a citation by ``cite`` (see :mod:`sra_rag.rag.citing`)."""
    outcomes = []
    examples = suites.reader(engine.count_tokens, list(documents), list(DEPTHS), per_cell=per_cell, seed=seed)
    for example in examples:
        chunks = list(example.chunks)
        reader = Reader(
            engine,
            RankedRetriever(chunks),
            top_k=len(chunks),
            sra=sra,
            max_new_tokens=example.max_new_tokens,
            attribute=True,
            cite=cite,
        )
        answer = reader.ask(example.question)
        if answer.source_attention is None:
            raise RuntimeError("the reader returned no readout of the question")
        town = example.named_choice(answer.text)  # the reader suite's choices are its sources' towns, in order
        named = None if town is None else answer.sources.index(chunks[town].source) + 1
        outcome = Outcome(
            example.id,
            len(chunks),
            answer.sources.index(str(example.cite)) + 1,
            named,
            example.score(answer.text)[0],
            most_read(answer.source_attention) or 0,
            most_read(answer.answer_attention),
            answer.text,
            tuple(round(score, 4) for score in answer.source_attention),
            None if answer.answer_attention is None else tuple(round(score, 4) for score in answer.answer_attention),
            answer.citations[0] if answer.citations else None,
            answer.appended_citation is not None,
        )
        outcomes.append(outcome)
        if progress is not None:
            verdict = "right" if outcome.right else "wrong"
            progress(
                f"{len(outcomes)}/{len(examples)} {outcome.id}: gold [{outcome.gold}] named {outcome.named} "
                f"question [{outcome.question_top}] answer [{outcome.answer_top}] cited [{outcome.cited}]"
                f"{' (appended)' if outcome.appended else ''} {verdict}"
            )
    return outcomes


def _rate(hits: int, total: int) -> str:
    if total == 0:
        return "-"
    low, high = wilson_interval(hits, total)
    return f"{hits}/{total} ({100 * hits / total:.0f}%; {100 * low:.0f}-{100 * high:.0f})"


def report(outcomes: Sequence[Outcome], title: str) -> str:
    """Markdown: answers, each readout's top source against the source of the named town, and the
    disagreement flag against wrong answers."""
    named = [o for o in outcomes if o.named is not None]
    right = [o for o in outcomes if o.right]
    wrong = [o for o in outcomes if not o.right]
    copied = [o for o in named if not o.right]
    flagged = [o for o in outcomes if o.flagged]
    lines = [
        f"## {title}",
        "",
        f"{len(outcomes)} prompts ({', '.join(str(n) for n in sorted({o.documents for o in outcomes}))} sources): "
        f"{len(right)} answers name the gold town, {len(copied)} name another source's town, "
        f"{len(outcomes) - len(named)} name no town of the prompt.",
        "",
        "Top source of each readout against the source whose town the answer names (95% Wilson interval):",
        "",
        "| answers | question's readout (`source_attention`) | answer's readout (`answer_attention`) "
        "| citation (model's own / appended) |",
        "|---|---|---|---|",
    ]
    groups = {"right (gold town)": [o for o in named if o.right], "wrong (another source's town)": copied}
    for label, items in [*groups.items(), ("all naming a town", named)]:
        own = [o.cited == o.named for o in items if not o.appended]
        appended = [o.cited == o.named for o in items if o.appended]
        lines.append(
            f"| {label} | {_rate(sum(o.question_top == o.named for o in items), len(items))} "
            f"| {_rate(sum(o.answer_top == o.named for o in items), len(items))} "
            f"| {_rate(sum(o.cited == o.named for o in items), len(items))}: "
            f"{sum(own)}/{len(own)} / {sum(appended)}/{len(appended)} |"
        )
    uncited = sum(o.cited is None for o in outcomes)
    lines += [
        "",
        f"Citations: {sum(not o.appended and o.cited is not None for o in outcomes)} answers cite a source themselves, "
        f"{sum(o.appended for o in outcomes)} got a citation appended, {uncited} cite none "
        "(cut by the token limit, or empty).",
    ]
    citing = [o for o in outcomes if o.cited is not None and not o.appended and o.named is not None]
    if citing:
        wrong_citation = [o.cited != o.named for o in citing]
        checked = [citation_to_check(o.reply, o.answer_scores) is not None for o in citing]
        flagged_wrong = sum(c and w for c, w in zip(checked, wrong_citation, strict=True))
        lines += [
            "",
            f"The model's own citations ({len(citing)} answers that cite a source and name a town): "
            f"{sum(wrong_citation)} cite another source than the town's. `citation_to_check` (the answer "
            "read another source most) flags "
            f"{sum(checked)}: wrong citations of flagged {_rate(flagged_wrong, sum(checked))}, "
            f"wrong citations flagged {_rate(flagged_wrong, sum(wrong_citation))}.",
        ]
    lines += [
        "",
        "The two readouts disagree (the answer read another source most than the question did) as a flag of a "
        "wrong answer:",
        "",
        "| flagged | of them wrong (precision) | wrong answers flagged (recall) | right answers flagged |",
        "|---|---|---|---|",
        f"| {len(flagged)}/{len(outcomes)} | {_rate(sum(not o.right for o in flagged), len(flagged))} "
        f"| {_rate(sum(o.flagged for o in wrong), len(wrong))} | {_rate(sum(o.flagged for o in right), len(right))} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="as for SRAEngine.from_pretrained (default: smollm2-135m)"
    )
    parser.add_argument("--seed", type=int, default=11, help="prompt seed (keep choices on another one)")
    parser.add_argument(
        "--documents", type=int, nargs="+", default=list(DEFAULT_DOCUMENTS), help="retrieved sources per prompt"
    )
    parser.add_argument("--per-cell", type=int, default=3, help="prompts per number of sources and gold depth")
    parser.add_argument("--preset", default="recommended", help="the reader's SRA preset (the CLI's default)")
    parser.add_argument(
        "--cite", choices=CITE_MODES, default="attention", help="how a citation is chosen for an answer that has none"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for outcomes.json and report.md")
    args = parser.parse_args(argv)
    if args.per_cell < 1:
        parser.error(f"--per-cell must be a positive number, got {args.per_cell}")
    try:
        sra = SRAConfig.preset(args.preset)
    except ValueError as error:
        parser.error(str(error))
    from sra_rag.engine import SRAEngine

    engine = SRAEngine.from_pretrained(args.model)
    started = time.perf_counter()
    try:
        outcomes = run(
            engine,
            seed=args.seed,
            documents=args.documents,
            per_cell=args.per_cell,
            sra=sra,
            cite=args.cite,
            progress=print,
        )
    except ValueError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outcomes.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    layers = list(engine.readout_profile.layers)
    title = f"{engine.name}, `{args.preset}`, cite `{args.cite}`, seed {args.seed}, profile layers {layers}"
    text = report(outcomes, title)
    (args.out / "report.md").write_text(text)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
