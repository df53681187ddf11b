"""Command-line commands of this subpackage (gathered by :mod:`sra_rag.cli.app`): ``demo``, ``ingest``,
``ask`` and ``summarize``.

The store defaults to ``$SRA_RAG_STORE`` or ``~/.cache/sra-rag/store`` (``$SRA_RAG_CACHE/store``);
pass ``--store DIR`` for another folder or ``--chroma-url http://host:8000`` for a Chroma server.
Heavy imports (torch, ChromaDB, sentence-transformers) happen inside the commands so that ``--help``
stays fast.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sra_rag.cli.common import ModelOption, fail

if TYPE_CHECKING:
    from sra_rag.config import SRAConfig
    from sra_rag.engine import SRAEngine
    from sra_rag.rag.reader import Reader
    from sra_rag.rag.store import ChromaStore

app = typer.Typer()

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store", help="Folder of the ChromaDB store (default: $SRA_RAG_STORE, else ~/.cache/sra-rag/store)."
    ),
]
ChromaUrlOption = Annotated[
    str | None,
    typer.Option("--chroma-url", help="Use a Chroma server (e.g. http://localhost:8000) instead of a folder."),
]
CollectionOption = Annotated[str, typer.Option("--collection", help="Collection name in the store.")]
PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset", help="SRA preset: paper, demo, off, recommended or documents (default: the model's own default)."
    ),
]
SraSwitch = Annotated[
    bool | None, typer.Option("--sra/--no-sra", help="Force SRA on or off (--no-sra: stock attention, for comparison).")
]
BeginOption = Annotated[int | None, typer.Option("--begin-length", help="SRA: leading tokens skipped.", min=0)]
TailOption = Annotated[
    int | None, typer.Option("--tail-length", help="SRA tail length in tokens (used with --no-question-tail).", min=0)
]
AlphaInnerOption = Annotated[float | None, typer.Option("--alpha-inner", help="SRA inner elimination factor.")]
AlphaOuterOption = Annotated[float | None, typer.Option("--alpha-outer", help="SRA outer elimination factor.")]
BetaInnerOption = Annotated[float | None, typer.Option("--beta-inner", help="SRA inner strength factor.")]
BetaOuterOption = Annotated[float | None, typer.Option("--beta-outer", help="SRA outer strength factor.")]
QuestionTailOption = Annotated[
    bool | None,
    typer.Option(
        "--question-tail/--no-question-tail",
        help="SRA tail = exactly the question/instruction, or the config's tail length (default: the preset's).",
    ),
]
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.", min=1)]
TemperatureOption = Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).", min=0.0)]
TopPOption = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with --temperature > 0).")]
TokenTopKOption = Annotated[
    int, typer.Option("--top-k-tokens", help="Sample from the k likeliest tokens only (0: all).", min=0)
]
MinPOption = Annotated[
    float, typer.Option("--min-p", help="Drop tokens under min-p x the likeliest one's probability.")
]
RepetitionOption = Annotated[
    float | None,
    typer.Option(
        "--repetition-penalty",
        help="Per-token penalty on the answer's repeated tokens (1: none, the default: it miscopies numbers).",
    ),
]
LoopGuardOption = Annotated[
    int | None,
    typer.Option(
        "--loop-guard",
        help="End the answer once its newest N tokens repeat an earlier span; changes no token "
        "(0: off; default: the model's, 16).",
        min=0,
    ),
]
PenalizePromptOption = Annotated[
    bool,
    typer.Option(
        "--penalize-prompt/--no-penalize-prompt",
        help="Count the sources' tokens in the repetition penalty too (default: only the answer's).",
    ),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.")]


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A folder of .txt/.md files, or one file.")],
    store: StoreOption = None,
    chroma_url: ChromaUrlOption = None,
    collection: CollectionOption = "sra_rag",
    chunk_tokens: Annotated[
        int, typer.Option("--chunk-tokens", help="Largest chunk in embedding tokens (16 to 254).", min=16)
    ] = 200,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar (chunk by chunk).")
    ] = True,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Also ingest what symbolic links point to outside the folder (by default they are skipped and named).",
        ),
    ] = False,
) -> None:
    """Ingest documents into the store. Re-running adds only new or changed files."""
    from sra_rag.rag.ingest import display_path

    if not path.exists():
        fail(f"Nothing to ingest at {display_path(path)}: no such file or folder.")
    opened = _open_store(store, chroma_url, collection, create=True)
    report = _ingest(path, opened, chunk_tokens, progress, follow_symlinks=follow_symlinks)
    if report.files_seen == len(report.skipped):
        fail(f"No text could be ingested from {display_path(path)}.")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the store.")],
    store: StoreOption = None,
    chroma_url: ChromaUrlOption = None,
    collection: CollectionOption = "sra_rag",
    top_k: Annotated[
        int, typer.Option("--top-k", help="Chunks to retrieve (all are stuffed into the prompt).", min=1)
    ] = 8,
    max_new_tokens: MaxNewTokensOption = 256,
    overflow: Annotated[
        str,
        typer.Option(
            "--overflow", help="If the chunks do not fit: 'error', or 'drop' the lowest-ranked with a warning."
        ),
    ] = "error",
    model: ModelOption = None,
    order: Annotated[
        str | None,
        typer.Option(
            "--order",
            help="Attention-ordered stuffing: read the prompt once, then put the sources the question read most "
            "'first', 'last' or at both 'ends' and answer (about 2x prefill; no chunk is dropped); 'retrieved' "
            "keeps the retrieved order (default: the model's default).",
        ),
    ] = None,
    attribute: Annotated[
        bool,
        typer.Option(
            "--attribute",
            help="Also score how much the answer's own tokens read each source (one more read-only pass), "
            "and say so when the answer and the question read different sources most.",
        ),
    ] = False,
    cite: Annotated[
        str,
        typer.Option(
            "--cite",
            help="When the answer cites no source by number, append ' (Document [n])' with the source the "
            "answer read most ('attention', one read-only pass) or the number the model writes ('model', one "
            "prefill); 'off' leaves the answer as the model wrote it.",
        ),
    ] = "attention",
    group_by_source: Annotated[
        bool,
        typer.Option(
            "--group-by-source",
            help="Put the chunks of one file together as one numbered document, at the rank of its best chunk "
            "(default: every chunk is its own document, in retrieved order).",
        ),
    ] = False,
    preset: PresetOption = None,
    sra: SraSwitch = None,
    begin_length: BeginOption = None,
    tail_length: TailOption = None,
    alpha_inner: AlphaInnerOption = None,
    alpha_outer: AlphaOuterOption = None,
    beta_inner: BetaInnerOption = None,
    beta_outer: BetaOuterOption = None,
    question_tail: QuestionTailOption = None,
    temperature: TemperatureOption = 0.0,
    top_p: TopPOption = 1.0,
    top_k_tokens: TokenTopKOption = 0,
    min_p: MinPOption = 0.0,
    repetition_penalty: RepetitionOption = None,
    penalize_prompt: PenalizePromptOption = False,
    loop_guard: LoopGuardOption = None,
    seed: SeedOption = None,
) -> None:
    """Answer a question: retrieve top-k chunks, stuff them all into one prompt, stream the answer."""
    from sra_rag.config import ORDERS
    from sra_rag.rag.citing import CITE_MODES
    from sra_rag.rag.reader import Reader

    if order is not None and order not in ORDERS:
        fail(f"--order must be one of {', '.join(ORDERS)}, got {order!r}.")
    if cite not in (*CITE_MODES, "off"):
        fail(f"--cite must be one of {', '.join(CITE_MODES)} or off, got {cite!r}.")
    sampling = _sampling(temperature, top_p, top_k_tokens, min_p, repetition_penalty, penalize_prompt, loop_guard, seed)
    overrides = _overrides(begin_length, tail_length, alpha_inner, alpha_outer, beta_inner, beta_outer, question_tail)
    _sra_config(preset, sra, overrides)  # bad settings fail before the model loads
    opened = _open_store(store, chroma_url, collection, create=False)
    if opened.count() == 0:
        fail(f"The store at {opened.location} is empty. Ingest documents first: sra-rag ingest PATH")
    engine = _engine(model)
    config = _sra_config(preset, sra, overrides, engine.sra)
    reader = Reader(
        engine,
        opened,
        top_k=top_k,
        sra=config,
        max_new_tokens=max_new_tokens,
        overflow=overflow,  # type: ignore[arg-type]  # validated by Reader
        sampling=sampling,
        order=order,  # type: ignore[arg-type]  # validated above
        attribute=attribute,  # the citation by attention and the answer's column share one read-only pass
        cite=None if cite == "off" else cite,  # type: ignore[arg-type]  # validated above
        group_by_source=group_by_source,
    )
    _answer(reader, question)


@app.command()
def summarize(
    file: Annotated[Path, typer.Argument(help="A text or Markdown file.")],
    max_new_tokens: MaxNewTokensOption = 256,
    map_tokens: Annotated[
        int, typer.Option("--map-tokens", help="Tokens per part summary in map-reduce.", min=1)
    ] = 160,
    map_reduce: Annotated[
        bool, typer.Option("--map-reduce/--no-map-reduce", help="Fall back to map-reduce if the file does not fit.")
    ] = True,
    model: ModelOption = None,
    preset: PresetOption = None,
    sra: SraSwitch = None,
    begin_length: BeginOption = None,
    tail_length: TailOption = None,
    alpha_inner: AlphaInnerOption = None,
    alpha_outer: AlphaOuterOption = None,
    beta_inner: BetaInnerOption = None,
    beta_outer: BetaOuterOption = None,
    question_tail: QuestionTailOption = None,
) -> None:
    """Summarize a whole document in one pass (map-reduce only if it does not fit, and said so)."""
    from sra_rag.rag.ingest import UnreadableFileError, display_path, read_text
    from sra_rag.rag.summarizer import Summarizer

    overrides = _overrides(begin_length, tail_length, alpha_inner, alpha_outer, beta_inner, beta_outer, question_tail)
    _sra_config(preset, sra, overrides)  # bad settings fail before the model loads
    if not file.is_file():
        fail(f"No such file: {display_path(file)}")
    try:
        text = read_text(file)
    except UnreadableFileError as error:
        fail(f"{display_path(file)} {error}")
    engine = _engine(model)
    summarizer = Summarizer(
        engine,
        sra=_sra_config(preset, sra, overrides, engine.sra),
        max_new_tokens=max_new_tokens,
        map_tokens=map_tokens,
        allow_map_reduce=map_reduce,
        progress=True,
    )
    with _warnings_to_stderr():
        result = summarizer.stream(text, title=file.name)
    _echo_stream(result)
    mode = f"map-reduce over {result.parts} parts" if result.map_reduce else "one pass"
    _info(f"[{mode}; document {result.document_tokens} tokens, prompt {result.prompt_tokens} tokens]")


@app.command()
def demo(
    store: StoreOption = None,
    max_new_tokens: MaxNewTokensOption = 96,
    top_k: Annotated[int, typer.Option("--top-k", help="Chunks to retrieve.", min=1)] = 6,
    model: ModelOption = None,
    preset: PresetOption = None,
    sra: SraSwitch = None,
    temperature: TemperatureOption = 0.0,
    repetition_penalty: RepetitionOption = None,
    loop_guard: LoopGuardOption = None,
    seed: SeedOption = None,
) -> None:
    """Ingest the bundled sample documents (idempotent) and answer two sample questions. Chunks
    that do not fit the context window are dropped with a warning."""
    from sra_rag.rag.reader import Reader
    from sra_rag.rag.samples import SAMPLE_QUESTIONS, samples_path

    _sra_config(preset, sra, {})  # bad settings fail before the model loads
    opened = _open_store(store, None, "sra_rag", create=True)
    _info(f"Ingesting the sample documents from {samples_path()} into {opened.location}")
    _ingest(samples_path(), opened, 200, progress=True)
    engine = _engine(model)
    config = _sra_config(preset, sra, {}, engine.sra)
    state = "on" if config.enabled else "off"
    named = preset or f"{engine.defaults.preset}, the model's default"
    window = engine.context_window
    _info(f"Reader: {engine.name} ({engine.weights} weights), context window {window} tokens, SRA {state} ({named}).")
    sampling = _sampling(temperature, 1.0, 0, 0.0, repetition_penalty, False, loop_guard, seed)
    reader = Reader(
        engine, opened, top_k=top_k, sra=config, max_new_tokens=max_new_tokens, overflow="drop", sampling=sampling
    )
    for question in SAMPLE_QUESTIONS:
        typer.secho(f"\nQ: {question}", bold=True)
        _answer(reader, question)


# -- helpers ---------------------------------------------------------------------------------------


def _overrides(
    begin_length: int | None,
    tail_length: int | None,
    alpha_inner: float | None,
    alpha_outer: float | None,
    beta_inner: float | None,
    beta_outer: float | None,
    question_tail: bool | None = None,
) -> dict[str, Any]:
    values = {
        "begin_length": begin_length,
        "tail_length": tail_length,
        "alpha_inner": alpha_inner,
        "alpha_outer": alpha_outer,
        "beta_inner": beta_inner,
        "beta_outer": beta_outer,
        "tail": None if question_tail is None else ("question" if question_tail else "fixed"),
    }
    return {name: value for name, value in values.items() if value is not None}


def _sampling(
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repetition_penalty: float | None,
    penalize_prompt: bool,
    loop_guard: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """The decoding settings of an answer (checked by the engine, with the other settings); those
    left unset are the model's answer defaults (``engine.defaults.sampling``, merged by the Reader)."""
    settings = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "penalize_prompt": penalize_prompt,
        "loop_guard": loop_guard,
        "seed": seed,
    }
    return {name: value for name, value in settings.items() if value is not None or name == "seed"}


def _sra_config(
    preset: str | None, enabled: bool | None, overrides: dict[str, Any], base: SRAConfig | None = None
) -> SRAConfig:
    """The preset (None: ``base``, the model's default; the spec defaults when only checking the
    settings before the model loads), with the individual overrides applied and validated;
    ``enabled`` (from ``--sra/--no-sra``) wins over the preset."""
    from sra_rag.config import SRAConfig

    updates = {**overrides, **({} if enabled is None else {"enabled": enabled})}
    if preset is not None:
        return SRAConfig.preset(preset, **updates)
    return (SRAConfig() if base is None else base).override(**updates)


def _open_store(path: Path | None, url: str | None, collection: str, *, create: bool) -> ChromaStore:
    from sra_rag.rag.store import ChromaStore

    return ChromaStore.open(path, url=url, collection=collection, create=create)


def _engine(model: str | None) -> SRAEngine:
    from sra_rag.engine import SRAEngine

    return SRAEngine.shared(model)


def _ingest(path: Path, store: ChromaStore, chunk_tokens: int, progress: bool, *, follow_symlinks: bool = False) -> Any:
    from sra_rag.rag.ingest import ingest

    report = ingest(store, path, chunk_tokens=chunk_tokens, progress=progress, follow_symlinks=follow_symlinks)
    for skipped, reason in report.skipped:
        typer.secho(f"Skipped {skipped}: {reason}", fg=typer.colors.YELLOW, err=True)
    _info(f"{report.summary()}; the store holds {store.count()} chunks.")
    return report


def _answer(reader: Reader, question: str) -> None:
    """Stream ``reader``'s answer to ``question``, then list its sources with how much the question
    (and, with ``attribute``, the answer) read each, and the checks on its citation."""
    from sra_rag.rag.citing import citation_to_check, most_read

    with _warnings_to_stderr():
        answer = reader.stream(question)
    _echo_stream(answer)
    by_answer = reader.attribute(answer) if reader.attribute_answers else None
    typer.echo("\nSources:" + _attention_heading(answer, by_answer is not None))
    columns = [scores for scores in (answer.source_attention, by_answer) if scores is not None]
    for number, document in enumerate(answer.stuffed.documents, start=1):
        read = "".join(f"{scores[number - 1]:+7.2f}  " for scores in columns)
        pieces = ",".join(str(chunk.chunk_index) for chunk in document if chunk.chunk_index is not None)
        typer.echo(f"{read}[{number}] {document[0].source}" + (f"#{pieces}" if pieces else ""))
    to_check = citation_to_check(answer.text, by_answer)
    if to_check is not None:
        cited = ", ".join(f"[{number}]" for number in answer.citations)
        typer.echo(f"Check the citation: the answer cites {cited}, but its tokens read [{to_check}] most.")
    if answer.source_attention is not None and by_answer is not None:
        question_top, answer_top = most_read(answer.source_attention), most_read(by_answer)
        if question_top != answer_top:
            typer.echo(
                f"Check the answer: it read [{answer_top}] most, but the question read [{question_top}] most "
                "(the answer may come from another source than the one the question found)."
            )
    _info(
        f"[{len(answer.stuffed.chunks)} chunks in one prompt of {answer.prompt_tokens} tokens; "
        f"{len(answer.stuffed.dropped)} dropped; {answer.completion_tokens} tokens generated]"
    )


def _attention_heading(answer: Any, attributed: bool = False) -> str:
    if answer.source_attention is None:
        return ""
    kind = "calibrated" if answer.source_attention_calibrated else "raw, uncalibrated: no profile for this model"
    if attributed:
        return f" (columns: how much the question, then the answer, read each source, higher = more; {kind})"
    return f" (first column: how much the question read each source, higher = more; {kind})"


def _echo_stream(pieces: Iterable[str]) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _info(message: str) -> None:
    typer.secho(message, fg=typer.colors.BRIGHT_BLACK, err=True)


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Show warnings (dropped chunks, map-reduce fallback) as one plain line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        typer.secho(f"Warning: {warning.message}", fg=typer.colors.YELLOW, err=True)
