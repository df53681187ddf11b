"""Summarize a whole document in one pass with SRA; map-reduce only when it cannot fit.

A document that fits the context window (with the instruction and ``max_new_tokens``) is read in one
prefill, and the SRA tail covers exactly the instruction. A longer document is split, by token
counts, into parts that each fit; every part is summarized ("map"), and the part summaries are
summarized together ("reduce", repeated if even they do not fit). The fallback is announced with a
``UserWarning`` and flagged in the result (``map_reduce=True``), never used silently.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from sra_rag.config import SRAConfig, as_sra_config
from sra_rag.layout import TextLayout
from sra_rag.rag.splitting import split_text

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine, TextStream

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You write concise, faithful summaries. Use only facts stated in the text you are given."
SUMMARY_INSTRUCTION = "Summarize the document above in one paragraph, keeping its key facts and numbers."
PART_INSTRUCTION = "Summarize this part of the document in a few sentences, keeping its key facts and numbers."
REDUCE_INSTRUCTION = (
    "These are summaries of consecutive parts of one document. Combine them into one summary paragraph "
    "of the whole document, keeping its key facts and numbers."
)
_BOUNDARY_RESERVE = 8


class MapReduceFallbackWarning(UserWarning):
    """The document does not fit the context window, so it is summarized in parts (map-reduce)."""


@dataclass
class SummaryStream:
    """Text pieces of the (final) summary as they are generated. ``map_reduce`` says whether the
    map-reduce fallback was used; ``parts`` is the number of parts the document was read in (1 for
    one pass); ``part_summaries`` holds the map step's results. After exhaustion ``text`` is set."""

    stream: TextStream
    map_reduce: bool
    parts: int
    document_tokens: int
    part_summaries: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return iter(self.stream)

    @property
    def text(self) -> str:
        return self.stream.text

    @property
    def prompt_tokens(self) -> int:
        return self.stream.prompt_tokens


@dataclass(frozen=True)
class Summary:
    text: str
    map_reduce: bool
    parts: int
    document_tokens: int
    prompt_tokens: int
    part_summaries: list[str]


class Summarizer:
    """One-pass document summaries with SRA.

    ``max_new_tokens``: the final summary's length limit; ``map_tokens``: each part summary's limit
    in the map-reduce fallback (the instruction is the prompt's question: a config with
    ``tail="question"`` puts the SRA tail exactly over it); ``allow_map_reduce=False`` raises
    :class:`~sra_rag.engine.ContextWindowExceededError` instead of falling back; ``progress``:
    a progress bar over the map step.
    """

    def __init__(
        self,
        engine: SRAEngine,
        *,
        sra: SRAConfig | None = None,
        max_new_tokens: int = 256,
        map_tokens: int = 160,
        allow_map_reduce: bool = True,
        progress: bool = False,
    ) -> None:
        if sra is not None:
            as_sra_config(sra)
        for name, value in (("max_new_tokens", max_new_tokens), ("map_tokens", map_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.engine = engine
        self.sra = sra
        self.max_new_tokens = max_new_tokens
        self.map_tokens = map_tokens
        self.allow_map_reduce = allow_map_reduce
        self.progress = progress

    def stream(self, text: str, *, title: str | None = None) -> SummaryStream:
        """Summarize ``text`` (``title``: the document's name, shown to the model). One pass if it
        fits; otherwise the map steps run now and the returned stream generates the reduce step."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("The document is empty; there is nothing to summarize.")
        document_tokens = self.engine.count_tokens(text)
        messages = _messages(text, title, SUMMARY_INSTRUCTION)
        if self.engine.count_tokens(messages) + self.max_new_tokens <= self.engine.context_window:
            return SummaryStream(
                self._generate(messages, SUMMARY_INSTRUCTION, self.max_new_tokens), False, 1, document_tokens
            )
        if not self.allow_map_reduce:
            # engine.stream raises ContextWindowExceededError with the exact numbers.
            self._generate(messages, SUMMARY_INSTRUCTION, self.max_new_tokens)
        parts = split_text(text, self._part_budget(title, PART_INSTRUCTION, self.map_tokens), self.engine.count_tokens)
        message = (
            f"The document has {document_tokens} tokens and does not fit the context window of "
            f"{self.engine.context_window} in one pass; summarizing it in {len(parts)} parts (map-reduce)."
        )
        logger.warning(message)
        warnings.warn(message, MapReduceFallbackWarning, stacklevel=2)
        summaries = [
            self._complete(_messages(part, title, PART_INSTRUCTION, index + 1, len(parts)), PART_INSTRUCTION)
            for index, part in enumerate(tqdm(parts, desc="Summarizing parts", unit="part", disable=not self.progress))
        ]
        combined = _combine(summaries)
        # Reduce in rounds while the part summaries themselves do not fit one prompt.
        while (
            self.engine.count_tokens(_messages(combined, title, REDUCE_INSTRUCTION)) + self.max_new_tokens
            > self.engine.context_window
        ):
            groups = split_text(
                combined, self._part_budget(title, REDUCE_INSTRUCTION, self.map_tokens), self.engine.count_tokens
            )
            if len(groups) >= len(summaries):
                raise ValueError("The part summaries do not shrink; lower map_tokens or use a larger context window.")
            summaries = [
                self._complete(_messages(group, title, REDUCE_INSTRUCTION), REDUCE_INSTRUCTION) for group in groups
            ]
            combined = _combine(summaries)
        final = self._generate(_messages(combined, title, REDUCE_INSTRUCTION), REDUCE_INSTRUCTION, self.max_new_tokens)
        return SummaryStream(final, True, len(parts), document_tokens, summaries)

    def summarize(self, text: str, *, title: str | None = None) -> Summary:
        """Summarize ``text`` and return the whole summary."""
        result = self.stream(text, title=title)
        for _ in result:
            pass
        return Summary(
            result.text,
            result.map_reduce,
            result.parts,
            result.document_tokens,
            result.prompt_tokens,
            result.part_summaries,
        )

    def _part_budget(self, title: str | None, instruction: str, max_new_tokens: int) -> int:
        """Tokens left for document text in one prompt: the window minus the prompt's fixed part
        (template, instruction, part numbering) and the tokens to generate."""
        overhead = self.engine.count_tokens(_messages("x", title, instruction, 999, 999)) - self.engine.count_tokens(
            "x"
        )
        # Tokens may merge differently where the text meets the template; keep a few in reserve.
        budget = self.engine.context_window - overhead - max_new_tokens - _BOUNDARY_RESERVE
        if budget < 16:
            raise ValueError(
                f"The context window of {self.engine.context_window} tokens leaves only {budget} tokens for text "
                f"after the instruction and {max_new_tokens} new tokens; lower max_new_tokens or map_tokens."
            )
        return budget

    def _generate(self, messages: list[dict[str, str]], instruction: str, max_new_tokens: int) -> TextStream:
        return self.engine.stream(
            messages,
            max_new_tokens=max_new_tokens,
            sra=self.sra,
            layout=TextLayout(question=instruction),
        )

    def _complete(self, messages: list[dict[str, str]], instruction: str) -> str:
        stream = self._generate(messages, instruction, self.map_tokens)
        for _ in stream:
            pass
        return stream.text.strip()


def _messages(
    text: str, title: str | None, instruction: str, part: int | None = None, parts: int | None = None
) -> list[dict[str, str]]:
    header = f"Document: {title}" if title else "Document:"
    if part is not None:
        header += f" (part {part} of {parts})"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{header}\n\n{text.strip()}\n\n{instruction}"},
    ]


def _combine(summaries: list[str]) -> str:
    return "\n\n".join(f"Part {index + 1}: {summary}" for index, summary in enumerate(summaries))
