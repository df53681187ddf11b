"""Run SRA settings over suite examples: the same prompts for every setting, greedy decoding.

A setting is written as ``NAME`` or ``NAME:key=value,...``: NAME is an SRA preset (``off``,
``paper``, ``demo``, ``recommended``) and the overrides are :class:`~sra_rag.config.SRAConfig`
fields, e.g. ``tail=question`` (the SRA tail starts at the question) or ``tail=fixed`` (the
config's ``tail_length``, the spec's reference behaviour). Pairs are written with a slash:
``outer_layers=0.5/1``. Every example's question travels with its request as layout data, so a
preset runs exactly as the reader and the CLI run it.
Example: ``paper:inner=false,beta_outer=2,outer_target=attention,tail=question``.

Examples with retrieved ``chunks`` (the ``reader`` suite) run through
:class:`~sra_rag.rag.reader.Reader` exactly as users run it: its stuffing, numbering, system prompt,
stop sequences and, with ``tail=question``, its question tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sra_rag.config import SRAConfig
from sra_rag.evaluation.suites import Example
from sra_rag.layout import TextLayout
from sra_rag.rag.citing import cited_numbers
from sra_rag.rag.reader import Reader
from sra_rag.rag.stuffing import Chunk

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine, TextStream


@dataclass(frozen=True)
class Setting:
    """An SRA configuration under test: ``name`` (its spec string) and ``config``."""

    name: str
    config: SRAConfig

    @property
    def is_baseline(self) -> bool:
        return not self.config.enabled


def _parse_value(key: str, raw: str) -> Any:
    field = SRAConfig.model_fields.get(key)
    if field is None:
        raise ValueError(f"unknown SRA setting {key!r}; use one of {sorted(SRAConfig.model_fields)}")
    if field.annotation is bool:
        lowered = raw.lower()
        if lowered not in {"true", "false", "1", "0", "on", "off", "yes", "no"}:
            raise ValueError(f"{key} expects true or false, got {raw!r}")
        return lowered in {"true", "1", "on", "yes"}
    if getattr(field.annotation, "__origin__", None) is tuple:
        # "," separates settings and ":" the preset, so a pair is written "0.5/1".
        return tuple(part.strip() for part in raw.split("/"))
    return raw  # pydantic converts and validates numbers and literals


def parse_setting(spec: str) -> Setting:
    """``"paper"``, ``"off"``, ``"paper:beta_outer=2,inner=false,tail=question"`` -> :class:`Setting`.

    Raises ValueError naming the bad preset, key or value."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("an SRA setting must be a non-empty string such as 'paper' or 'paper:beta_outer=2'")
    spec = spec.strip()
    preset, _, rest = spec.partition(":")
    SRAConfig.preset(preset.strip())  # an unknown preset is named before its settings are parsed
    fields: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise ValueError(f"setting {spec!r}: expected key=value, got {item!r}")
        fields[key] = _parse_value(key, raw)
    try:
        config = SRAConfig.preset(preset.strip(), **fields)
    except Exception as error:  # pydantic's ValidationError: restate with the spec that caused it
        raise ValueError(f"setting {spec!r} is not a valid SRAConfig: {error}") from error
    return Setting(spec, config)


def parse_settings(specs: Iterable[str], *, baseline: bool = True) -> list[Setting]:
    """Parse several specs; with ``baseline`` the stock-attention setting ``off`` comes first
    (every report compares against it). Duplicates are dropped."""
    settings = [parse_setting(spec) for spec in specs]
    if baseline and not any(setting.is_baseline for setting in settings):
        settings.insert(0, parse_setting("off"))
    unique: dict[str, Setting] = {}
    for setting in settings:
        unique.setdefault(setting.name, setting)
    return list(unique.values())


@dataclass
class Record:
    """One (example, setting) result. ``hits``: one verdict per answer of the example, with its
    ``positions`` (depth in [0, 1]); ``prefill_s``: seconds of the prompt's forward pass (SRA
    included); ``total_s``: seconds for the whole completion; ``answer_logprob``: with
    ``likelihood``, the log-probability of the first answer as the reply
    (:meth:`~sra_rag.SRAEngine.log_likelihood`), else None; ``cited``: for examples that name a
    source to cite, whether the reply cites its number (``[3]``, ``[1, 3]``), else None."""

    suite: str
    example_id: str
    setting: str
    length: int
    depth: float | None
    prompt_tokens: int
    output: str
    hits: list[bool]
    positions: list[float]
    prefill_s: float
    total_s: float
    answer_logprob: float | None = None
    cited: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RankedRetriever:
    """An in-memory retriever that returns fixed chunks in their given order (the ranking is the
    experiment's variable), whatever the question."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)

    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        return self.chunks[:top_k]


def run_one(engine: SRAEngine, example: Example, setting: Setting, *, likelihood: bool = False) -> Record:
    """Generate the answer of one example under one setting (greedy) and score it; with
    ``likelihood``, also measure the first answer's log-probability (one more prefill). Examples
    with ``chunks`` go through :class:`~sra_rag.rag.reader.Reader`."""
    start = time.perf_counter()
    stream: TextStream
    cite_number = None
    if example.chunks:
        reader = Reader(
            engine,
            RankedRetriever(example.chunks),
            top_k=len(example.chunks),
            sra=setting.config,
            max_new_tokens=example.max_new_tokens,
            cite=None,  # the model's own citations
        )
        answer = reader.stream(example.question)
        stream = answer.stream
        messages = answer.stuffed.messages
        layout = answer.stuffed.layout
        if example.cite is not None:
            cite_number = answer.sources.index(example.cite) + 1
    else:
        messages = example.messages
        layout = TextLayout(question=example.question)
        stream = engine.stream(
            messages,
            max_new_tokens=example.max_new_tokens,
            sra=setting.config,
            stop=list(example.stop) or None,
            temperature=0.0,
            layout=layout,
        )
    for _ in stream:
        pass
    end = time.perf_counter()
    logprob = None
    if likelihood:
        logprob = engine.log_likelihood(messages, example.answers[0].text, sra=setting.config, layout=layout)
    return Record(
        suite=example.suite,
        example_id=example.id,
        setting=setting.name,
        length=example.length,
        depth=example.depth,
        prompt_tokens=stream.prompt_tokens,
        output=stream.text,
        hits=example.score(stream.text),
        positions=[item.position for item in example.answers],
        prefill_s=stream.prefill_seconds or 0.0,
        total_s=end - start,
        answer_logprob=logprob,
        cited=None if cite_number is None else cite_number in cited_numbers(stream.text),
    )


def run(
    engine: SRAEngine,
    examples: Sequence[Example],
    settings: Sequence[Setting],
    *,
    progress: bool = True,
    likelihood: bool = False,
    on_record: Callable[[Record], None] | None = None,
) -> list[Record]:
    """Every setting on every example. Settings alternate per example, so a change in machine load
    affects all of them alike (the prefill-time ratios stay fair)."""
    if not settings:
        raise ValueError("no settings to run; pass at least one, e.g. 'off' and 'paper'")
    from tqdm.auto import tqdm

    records = []
    with tqdm(total=len(examples) * len(settings), desc="eval", unit="gen", disable=not progress) as bar:
        for example in examples:
            for setting in settings:
                record = run_one(engine, example, setting, likelihood=likelihood)
                records.append(record)
                if on_record is not None:
                    on_record(record)
                bar.set_postfix_str(f"{example.suite} {example.length} {setting.name[:32]}", refresh=False)
                bar.update()
    return records
