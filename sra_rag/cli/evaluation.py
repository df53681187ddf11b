"""Command-line commands of this subpackage (gathered by :mod:`sra_rag.cli.app`): ``eval`` and ``tune``.

Heavy imports (torch, transformers, matplotlib) happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sra_rag.cli.common import ModelOption

app = typer.Typer()

# (lengths in tokens, gold depths, prompts per cell) of the two modes.
QUICK: tuple[list[int], list[float], int] = ([512, 1024], [0.0, 0.5, 1.0], 1)
FULL: tuple[list[int], list[float], int] = ([1024, 2048, 4096], [0.0, 0.25, 0.5, 0.75, 1.0], 4)
# Numbers of retrieved documents of the reader suite in the two modes.
QUICK_DOCUMENTS = [1, 5, 10]
FULL_DOCUMENTS = [1, 5, 10, 20, 30]

SuitesOption = Annotated[
    list[str] | None,
    typer.Option("--suite", "-s", help="Suite to run (repeatable): passkey, kv, qa, summary, reader. Default: all."),
]
LengthsOption = Annotated[
    list[int] | None,
    typer.Option("--length", "-l", help="Context length in tokens (repeatable). Default: quick 512 1024; full 1k-4k."),
]
DocumentsOption = Annotated[
    list[int] | None,
    typer.Option(
        "--documents",
        "-d",
        help="Reader suite: retrieved documents per prompt (repeatable). Default: quick 1 5 10; full 1 5 10 20 30.",
    ),
]
DepthsOption = Annotated[
    list[float] | None, typer.Option("--depth", help="Gold depth in [0, 1] (repeatable). Default: 0 .5 1 / 0-1 by .25.")
]
PerCellOption = Annotated[
    int | None,
    typer.Option("--examples", "-n", min=1, help="Prompts per (length, depth) cell. Default: quick 1, full 4."),
]
QuickOption = Annotated[bool, typer.Option("--quick/--full", help="Quick mode (CI, minutes) or the full grid.")]
OutOption = Annotated[
    Path,
    typer.Option("--out", help="Folder for report.md, results.json, the PNG plots and records.jsonl (written live)."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the generated prompts.")]
PlotsOption = Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots (needs matplotlib).")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
LikelihoodOption = Annotated[
    bool,
    typer.Option(
        "--likelihood/--no-likelihood",
        help="Also measure each answer's log-probability under every setting (one more prefill per prompt).",
    ),
]


def _grid(
    quick: bool, lengths: list[int] | None, depths: list[float] | None, per_cell: int | None
) -> tuple[list[int], list[float], int]:
    default_lengths, default_depths, default_per_cell = QUICK if quick else FULL
    return list(lengths or default_lengths), list(depths or default_depths), per_cell or default_per_cell


def _documents(quick: bool, documents: list[int] | None) -> list[int]:
    return list(documents or (QUICK_DOCUMENTS if quick else FULL_DOCUMENTS))


def _suites(names: list[str] | None) -> list[str]:
    from sra_rag.evaluation.suites import SUITES

    chosen = list(names or SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        raise typer.BadParameter(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}", param_hint="--suite")
    return chosen


@app.command("eval")
def eval_command(
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            help="SRA settings to compare with stock attention: presets (paper, demo, recommended) and/or "
            "inline overrides such as 'paper:inner=false,beta_outer=2,tail=question'. Default: paper recommended."
        ),
    ] = None,
    suite: SuitesOption = None,
    length: LengthsOption = None,
    documents: DocumentsOption = None,
    depth: DepthsOption = None,
    examples: PerCellOption = None,
    quick: QuickOption = True,
    out: OutOption = Path("sra-eval"),
    seed: SeedOption = 0,
    model: ModelOption = None,
    plots: PlotsOption = True,
    progress: ProgressOption = True,
    likelihood: LikelihoodOption = False,
) -> None:
    """Compare stock attention and SRA settings on the synthetic long-context suites (offline, seeded)."""
    from sra_rag.engine import SRAEngine
    from sra_rag.evaluation import report, runner, suites

    lengths, depths, per_cell = _grid(quick, length, depth, examples)
    counts = _documents(quick, documents)
    names = _suites(suite)
    try:
        parsed = runner.parse_settings(settings or ["paper", "recommended"])
        engine = SRAEngine.shared(model)
        built = []
        for name in names:
            built += suites.build(name, engine.count_tokens, lengths, depths, per_cell, seed, counts)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(f"{engine.name}: {len(built)} prompts x {len(parsed)} settings", err=True)
    # Each result is appended as it finishes, so an interrupted run keeps what it measured
    # (report.load_records reads the file).
    out.mkdir(parents=True, exist_ok=True)
    with (out / "records.jsonl").open("w") as log:

        def keep(record: runner.Record) -> None:
            log.write(json.dumps(record.to_dict()) + "\n")
            log.flush()

        records = runner.run(engine, built, parsed, progress=progress, likelihood=likelihood, on_record=keep)
    path = report.write_report(records, out, plots=plots, title=f"SRA evaluation ({engine.name}, seed {seed})")
    typer.echo(report.markdown_table(records))
    citations = report.citation_table(records)
    if citations:
        typer.echo("\n" + citations)
    if likelihood:
        typer.echo("\n" + report.likelihood_table(records))
    typer.echo(f"\nWrote {path}", err=True)


@app.command("tune")
def tune_command(
    suite: SuitesOption = None,
    length: LengthsOption = None,
    documents: DocumentsOption = None,
    depth: DepthsOption = None,
    candidates: Annotated[
        int | None,
        typer.Option("--candidates", "-c", min=1, help="Random sample of this many candidates (default all)."),
    ] = None,
    dev_examples: Annotated[int, typer.Option("--dev-examples", min=1, help="Dev prompts per cell.")] = 1,
    test_examples: Annotated[int, typer.Option("--test-examples", min=1, help="Test prompts per cell.")] = 2,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Dev finalists confirmed on the test split.")] = 3,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            "--reference",
            help="Setting also confirmed on the test split (repeatable). Default: the presets paper and recommended.",
        ),
    ] = None,
    quick: QuickOption = True,
    out: OutOption = Path("sra-tune"),
    seed: SeedOption = 0,
    model: ModelOption = None,
    progress: ProgressOption = True,
) -> None:
    """Search SRA settings on a dev split and confirm the best on a held-out test split."""
    from sra_rag.engine import SRAEngine
    from sra_rag.evaluation import runner, tune

    lengths, depths, _ = _grid(quick, length, depth, None)
    specs = tune.candidates(candidates, seed)
    names = _suites(suite)
    references = tuple(reference or tune.REFERENCE)
    try:
        runner.parse_settings(references)  # a mistyped setting fails before the model loads
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    engine = SRAEngine.shared(model)
    try:
        result = tune.search(
            engine,
            names,
            lengths,
            specs,
            depths=depths,
            dev_per_cell=dev_examples,
            test_per_cell=test_examples,
            top_k=top_k,
            seed=seed,
            reference=references,
            progress=progress,
            documents=_documents(quick, documents),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    path = tune.write_tune_report(result, out)
    typer.echo(tune.ranking_table(result.test_ranking))
    typer.echo(f"\nWrote {path}", err=True)


@app.command("calibrate")
def calibrate_command(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Profile file to write (JSON). Default: readout-<model>.json here."),
    ] = None,
    length: Annotated[
        list[int] | None,
        typer.Option("--length", "-l", help="Prompt length in tokens (repeatable). Default: 1024 2048."),
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", "-n", min=2, help="Prompts per length, half without an answer.")
    ] = 12,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the calibration prompts (keep reports on others).")
    ] = 1000,
    length_exponent: Annotated[
        float,
        typer.Option(
            "--length-exponent",
            min=0.0,
            max=1.0,
            help="Length normalisation of a document's mass: 0 compares total mass (default), 1 mass per token.",
        ),
    ] = 0.0,
    model: ModelOption = None,
) -> None:
    """Measure a model's readout profile (which layers tell which document the question reads, and the
    position bias to subtract), without labels; load it with SRAEngine(..., readout_profile=FILE)."""
    from sra_rag.engine import SRAEngine
    from sra_rag.evaluation.readout import calibrate
    from sra_rag.models import default_model

    engine = SRAEngine.shared(model)
    profile = calibrate(
        engine,
        seed=seed,
        lengths=length or [1024, 2048],
        count=examples,
        length_exponent=length_exponent,
        progress=lambda line: typer.echo(line),
    )
    target = out or Path(f"readout-{(model or default_model()).replace('/', '--')}.json")
    profile.save(target)
    low, high = profile.layers
    typer.echo(f"Wrote {target}: layers {low}-{high - 1} of {profile.num_layers}.")


@app.command("inspect")
def inspect_command(
    question: Annotated[str, typer.Argument(help="The question.")],
    documents: Annotated[list[Path], typer.Argument(help="Document files, in prompt order (one document each).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html and the PNG plots.")] = Path("sra-inspect"),
    preset: Annotated[
        str, typer.Option("--preset", help="SRA preset compared with stock attention (off: stock only).")
    ] = "recommended",
    model: ModelOption = None,
) -> None:
    """Show what the model reads for one question over some documents: per layer, the question's
    attention on each document (raw and calibrated) and the paper's token classes, as one HTML page."""
    from sra_rag.config import SRAConfig
    from sra_rag.engine import SRAEngine
    from sra_rag.evaluation.inspector import inspect_prompt, write_report

    missing = [str(path) for path in documents if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"not a file: {', '.join(missing)}", param_hint="DOCUMENTS")
    try:
        config = SRAConfig.preset(preset)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--preset") from None
    engine = SRAEngine.shared(model)
    texts = [path.read_text(encoding="utf-8", errors="replace") for path in documents]
    inspection = inspect_prompt(engine, question, texts, [path.name for path in documents], config)
    page = write_report(inspection, out)
    stock = inspection.passes[0].attention
    kind = "calibrated" if stock.calibrated else "raw: no readout profile for this model"
    typer.echo(f"Documents by how much the question read them ({kind}):")
    for index in stock.ranking:
        typer.echo(f"{stock.scores[index]:+7.2f}  [{index + 1}] {inspection.labels[index]}")
    typer.echo(f"Wrote {page}")
