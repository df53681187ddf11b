"""Which source an answer came from: the answer's own attention over the sources, the numbers it
cites, and a citation for an answer that cites none.

The reader's prompt numbers the sources ("Document [1]", ...) and asks the model to name the one it
used. Qwen2.5-Coder-0.5B does in most replies; SmolLM2-135M answers without a number. For an answer
that cites no source of the prompt, :func:`cite_answer` appends ``" (Document [n])"``, where ``n`` is
(``mode``):

- ``"attention"`` (the reader's default): the source the answer's own tokens read most
  (:func:`attribute_answer`: one read-only pass over the prompt with the answer, scored with the
  model's readout profile, so position does not pass for relevance);
- ``"model"``: the number the model itself writes after ``" (Document ["``, by constrained decoding
  over the source numbers (:meth:`~sra_rag.SRAEngine.choose`: one prefill). On SmolLM2-135M that pick
  is the first or the last source on 79 of 80 prompts whatever the answer came from, so it is opt-in.

Measured in ``docs/eval/attribution`` (modes compared on seed 7, reported on seed 11).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

from sra_rag.engine import ContextWindowExceededError

if TYPE_CHECKING:
    from sra_rag.config import SRAConfig
    from sra_rag.engine import SRAEngine
    from sra_rag.rag.stuffing import StuffedPrompt

CiteMode = Literal["attention", "model"]
CITE_MODES: tuple[str, ...] = get_args(CiteMode)

CITE_PREFIX = " (Document ["
"""What follows an answer that cites no source, before the source number and ``"])"``."""

_GROUP = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def check_cite(cite: object) -> CiteMode | None:
    """``cite`` if it is a citation mode (``"attention"`` or ``"model"``) or None (no citation is
    appended); anything else is a clear error."""
    if cite is not None and cite not in CITE_MODES:
        raise ValueError(f"cite must be one of {CITE_MODES} or None (leave the answer as written), got {cite!r}")
    return cite  # type: ignore[return-value]


def attribute_answer(
    engine: SRAEngine, stuffed: StuffedPrompt, text: str, sra: SRAConfig | None = None
) -> list[float] | None:
    """How much the answer ``text`` to the prompt ``stuffed`` read each numbered source (order of
    ``stuffed.sources``; higher = read more): one read-only pass over the prompt with the answer
    appended (:meth:`~sra_rag.SRAEngine.attribute`). None when the answer is empty. What
    ``Reader(attribute=True)``, both adapters and the server's ``attribute`` return."""
    if not text.strip():
        return None
    return list(engine.attribute(stuffed.messages, text, layout=stuffed.layout, sra=sra).scores)


def most_read(scores: Sequence[float] | None) -> int | None:
    """The number (1-based, as the prompt cites it) of the source with the highest score; None
    without scores."""
    return None if not scores else 1 + max(range(len(scores)), key=scores.__getitem__)


def cited_numbers(text: str, count: int | None = None) -> list[int]:
    """Source numbers cited as ``[1]``, ``[1, 3]`` or ``[1][2]`` in ``text``, in order of first
    citation; with ``count``, only those of a prompt with ``count`` sources (1..count)."""
    numbers = [int(number) for group in _GROUP.findall(text) for number in re.split(r"[,;]", group)]
    valid = [n for n in numbers if count is None or 1 <= n <= count]
    return list(dict.fromkeys(valid))


def needs_citation(stuffed: StuffedPrompt, text: str) -> bool:
    """Whether the answer ``text`` is not empty and cites no source of the prompt ``stuffed``."""
    return bool(text.strip()) and bool(stuffed.sources) and not cited_numbers(text, len(stuffed.sources))


def cite_answer(
    engine: SRAEngine,
    stuffed: StuffedPrompt,
    text: str,
    sra: SRAConfig | None = None,
    mode: CiteMode = "attention",
    answer_attention: Sequence[float] | None = None,
) -> str | None:
    """The citation to append to the answer ``text`` to the prompt ``stuffed``:
    ``" (Document [n])"``, ``n`` chosen by ``mode`` (see the module); None when the answer already
    cites a source of the prompt or is empty. ``answer_attention``: :func:`attribute_answer`'s
    scores when the caller has them (``"attention"`` then costs nothing more). With ``"model"``, an
    answer that leaves no room in the context window for the prefix and a number is cited by
    attention."""
    if not needs_citation(stuffed, text):
        return None
    if check_cite(mode) == "model":
        options = [f"{number}])" for number in range(1, len(stuffed.sources) + 1)]
        reply = text.rstrip() + CITE_PREFIX
        try:
            chosen = engine.choose(stuffed.messages, options, reply=reply, layout=stuffed.layout, sra=sra)
            return f"{CITE_PREFIX}{options[chosen]}"
        except ContextWindowExceededError:
            pass  # the answer nearly filled its token budget: no room for the prefix; cite by attention
    scores = answer_attention if answer_attention is not None else attribute_answer(engine, stuffed, text, sra)
    return f"{CITE_PREFIX}{most_read(scores)}])"


def finish_answer(
    engine: SRAEngine,
    stuffed: StuffedPrompt,
    text: str,
    finish_reason: str | None,
    sra: SRAConfig | None = None,
    *,
    cite: CiteMode | None = "attention",
    attribute: bool = False,
) -> tuple[str, list[float] | None]:
    """What follows a finished answer ``text``: the citation to append (``""`` when ``cite`` is
    None, the model did not end the answer itself (``finish_reason`` other than ``"stop"``) or it
    cites a source already) and, with ``attribute``, :func:`attribute_answer`'s scores (else None).
    One read-only pass serves both. What the server and both adapters call."""
    mode = check_cite(cite) if finish_reason == "stop" and needs_citation(stuffed, text) else None
    read = attribute_answer(engine, stuffed, text, sra) if attribute or mode == "attention" else None
    citation = None if mode is None else cite_answer(engine, stuffed, text, sra, mode, read)
    return citation or "", read if attribute else None


def citation_to_check(text: str, answer_attention: Sequence[float] | None) -> int | None:
    """The source the answer's tokens read most (1-based) when ``text`` cites sources of the prompt
    but not that one: the citation may name the wrong source (on Qwen2.5-Coder-0.5B, the answer's
    readout names the source of the answer's fact far more often than its own citation does; see
    ``docs/eval/attribution``). None when the answer cites it, cites nothing, or without scores."""
    cited = cited_numbers(text, len(answer_attention or ()))
    top = most_read(answer_attention)
    return top if cited and top is not None and top not in cited else None
