"""The reader: retrieve, stuff every retrieved chunk into one prompt, and stream an answer with SRA.

No chunk is dropped and there is no refine loop: the whole retrieved context is read in one prefill.
The prompt's layout (the question and every source block) goes to the engine with the request, so
with a question-tail preset (``recommended``) Scaled ReAttention's tail covers exactly the question,
the instruction after it and the generation prompt, and the question re-attends to the documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sra_rag.config import Order, SRAConfig, as_sra_config
from sra_rag.rag.citing import (
    CiteMode,
    attribute_answer,
    check_cite,
    citation_to_check,
    cited_numbers,
    finish_answer,
)
from sra_rag.rag.ordering import Placement, prepare_stuffed_prompt, resolve_order
from sra_rag.rag.stuffing import OVERFLOW_POLICIES, Chunk, OverflowPolicy, StuffedPrompt

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine, TextStream

DEFAULT_STOP: tuple[str, ...] = ("\nQuestion:",)


class Retriever(Protocol):
    """Anything that returns the ``top_k`` chunks for a question, best first (e.g. ``ChromaStore``)."""

    def retrieve(self, question: str, top_k: int = ...) -> list[Chunk]: ...


class EmptyRetrievalError(LookupError):
    """The retriever returned nothing (an empty store): there is no context to answer from."""


@dataclass
class AnswerStream:
    """Text pieces of an answer as they are generated. ``stuffed`` tells what the prompt held
    (``stuffed.sources``: the numbered sources, ``stuffed.dropped``: chunks left out); after the
    stream is exhausted, ``text``, ``completion_tokens`` and ``finish_reason`` are set. ``cite``:
    called with the stream once the model has ended the answer (not when the token limit cut it),
    it returns the citation to stream last (``appended_citation``) or None (see
    :func:`~sra_rag.rag.citing.cite_answer`). ``answer_attention``: how much the answer's tokens
    read each source, once computed (for a citation by attention, or :meth:`Reader.attribute`)."""

    question: str
    stuffed: StuffedPrompt
    stream: TextStream
    cite: Callable[[AnswerStream], str | None] | None = None
    appended_citation: str | None = field(default=None, init=False)
    answer_attention: list[float] | None = field(default=None, init=False)

    def __iter__(self) -> Iterator[str]:
        yield from self.stream
        if self.cite is not None and self.stream.finish_reason == "stop":
            self.appended_citation = self.cite(self)
            if self.appended_citation:
                yield self.appended_citation

    @property
    def text(self) -> str:
        """The answer as streamed: the model's text and the citation appended to it, if any."""
        return self.stream.text + (self.appended_citation or "")

    @property
    def citations(self) -> list[int]:
        """The source numbers the answer cites (1-based, in order of first citation)."""
        return cited_numbers(self.text, len(self.sources))

    @property
    def sources(self) -> list[str]:
        return self.stuffed.sources

    @property
    def prompt_tokens(self) -> int:
        return self.stuffed.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.stream.completion_tokens

    @property
    def finish_reason(self) -> str | None:
        return self.stream.finish_reason

    @property
    def source_attention(self) -> list[float] | None:
        """One score per numbered source (order of :attr:`sources`; higher = the question read it
        more), once the first piece is computed; None without a readout."""
        attention = self.stream.document_attention
        return None if attention is None else list(attention.scores)

    @property
    def source_attention_calibrated(self) -> bool:
        attention = self.stream.document_attention
        return attention is not None and attention.calibrated


@dataclass(frozen=True)
class Answer:
    """A finished answer with the numbered sources it may cite (``sources[0]`` is ``[1]``).

    ``source_attention``: one score per document, in the order of ``sources`` (higher = the question
    read that document more; with ``group_by_source``, a source's chunks form one block), calibrated for
    position when ``source_attention_calibrated`` (the model has a readout profile); None when the
    readout was off. ``answer_attention``: the same scores read from the answer's own tokens
    (``Reader(attribute=True)``, one more read-only pass; None otherwise or when the answer is
    empty): which source the answer was written from. Where its top source differs from
    ``source_attention``'s, the answer may have been copied from another source than the one the
    question found. ``citations``: the source numbers ``text`` cites (1-based, in order);
    ``appended_citation``: the citation the reader appended because the model cited none
    (``Reader(cite=...)``; None when the model cited a source itself or ``cite=None``).
    ``citation_to_check``: with ``answer_attention``, the source the answer read most when the
    answer cites others but not it (its citation may be wrong; see
    :func:`~sra_rag.rag.citing.citation_to_check`); None otherwise.
    """

    question: str
    text: str
    sources: list[str]
    chunks: list[Chunk]
    dropped: list[Chunk]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    source_attention: list[float] | None = None
    source_attention_calibrated: bool = False
    answer_attention: list[float] | None = None
    citations: list[int] = field(default_factory=list)
    appended_citation: str | None = None
    citation_to_check: int | None = None


class Reader:
    """Answer questions over a retriever (or over the chunks each call passes) with one stuffed
    prompt per question.

    ``top_k``: chunks retrieved; ``sra``: the SRA settings (default: the engine's); ``overflow``:
    what to do when the retrieved text does not fit (``"error"`` or ``"drop"``, see
    :func:`~sra_rag.rag.stuffing.stuff_prompt`); ``stop``: stop sequences (by default, a small model
    that starts writing another "Question:" is stopped); ``sampling``: further decoding settings of
    :meth:`~sra_rag.SRAEngine.stream` (``temperature``, ``repetition_penalty``, ``loop_guard``, ``seed``,
    ...), over the model's answer defaults (``engine.defaults.sampling``: greedy, the loop guard, no
    repetition penalty); ``order``: attention-ordered stuffing (``"first"``, ``"last"`` or ``"ends"``,
    see :mod:`sra_rag.rag.ordering`): one readout prefill ranks the sources by how much the question
    read them, and the prompt is stuffed again with the most-read sources at that place before
    answering (about 2x prefill; no chunk is dropped; ``sources`` follow the new numbering);
    ``"retrieved"`` keeps the retrieved order, and None is the model's default
    (``engine.defaults.order``, the retrieved order for every shipped model);
    ``attribute``: after answering, read the prompt again with the answer appended and score how much
    the answer's tokens read each source (:attr:`Answer.answer_attention`; :meth:`attribute` does it
    for a stream); ``cite``: when the model ends an answer that cites no source by number, append
    ``" (Document [n])"`` with ``n`` the source the answer's tokens read most (``"attention"``, the
    default: the ``attribute`` pass, shared with it) or the number the model writes after
    ``" (Document ["`` (``"model"``: one more prefill; positional on small models), or nothing
    (None); see :mod:`sra_rag.rag.citing`. ``group_by_source``: every chunk is its own numbered
    document at its retrieved rank (the default), or the chunks of one source form one document at
    its best rank (True; :attr:`StuffedPrompt.moved` lists the chunks that moved). The SRA tail
    follows the config's ``tail`` (``"question"``: exactly the question and instruction); the
    prompt's layout is always passed.
    """

    def __init__(
        self,
        engine: SRAEngine,
        retriever: Retriever | None = None,
        *,
        top_k: int = 8,
        sra: SRAConfig | None = None,
        max_new_tokens: int = 256,
        overflow: OverflowPolicy = "error",
        system_prompt: str | None = None,
        stop: tuple[str, ...] = DEFAULT_STOP,
        sampling: Mapping[str, Any] | None = None,
        order: Order | None = None,
        attribute: bool = False,
        cite: CiteMode | None = "attention",
        group_by_source: bool = False,
    ) -> None:
        if retriever is not None and not callable(getattr(retriever, "retrieve", None)):
            raise TypeError(f"retriever must have a retrieve(question, top_k) method, got {type(retriever).__name__}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if sra is not None:
            as_sra_config(sra)
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        self.order: Placement | None = resolve_order(order, engine.defaults.order)
        if not isinstance(group_by_source, bool):
            raise TypeError(f"group_by_source must be True or False, got {group_by_source!r}")
        self.group_by_source = group_by_source
        if not isinstance(attribute, bool):
            raise TypeError(f"attribute must be True or False, got {attribute!r}")
        self.attribute_answers = attribute
        self.cite = check_cite(cite)
        self.engine = engine
        self.retriever = retriever
        self.top_k = top_k
        self.sra = sra
        self.max_new_tokens = max_new_tokens
        self.overflow: OverflowPolicy = overflow
        self.system_prompt = system_prompt
        self.stop = stop
        self.sampling = {**engine.defaults.sampling, **(sampling or {})}
        taken = sorted(set(self.sampling) & {"max_new_tokens", "sra", "stop", "layout", "tail_from"})
        if taken:
            raise TypeError(f"pass {taken} as Reader arguments, not in sampling")

    def retrieve(self, question: str) -> list[Chunk]:
        if self.retriever is None:
            raise ValueError(
                "This Reader has no retriever: pass the chunks to answer from, reader.ask(question, chunks=[...])."
            )
        chunks = self.retriever.retrieve(question, self.top_k)
        if not chunks:
            raise EmptyRetrievalError("Nothing was retrieved: the store is empty. Ingest documents first.")
        return chunks

    def stuff(
        self, question: str, chunks: list[Chunk] | None = None, *, order: Placement | None = None
    ) -> StuffedPrompt:
        """The prompt for ``question`` over ``chunks`` (default: retrieve them); with ``order``,
        re-ordered by attention (:func:`~sra_rag.rag.ordering.prepare_stuffed_prompt`)."""
        return prepare_stuffed_prompt(
            self.engine,
            question,
            self.retrieve(question) if chunks is None else chunks,
            max_new_tokens=self.max_new_tokens,
            overflow=self.overflow,
            system_prompt=self.system_prompt,
            group_by_source=self.group_by_source,
            order=order,
            sra=self.sra,
        )

    def stream(self, question: str, chunks: list[Chunk] | None = None) -> AnswerStream:
        """Retrieve (unless ``chunks`` are given), stuff (and re-order, with ``order``) and start
        generating; iterate the result for text pieces."""
        stuffed = self.stuff(question, chunks, order=self.order)
        stream = self.engine.stream(
            stuffed.messages,
            max_new_tokens=self.max_new_tokens,
            sra=self.sra,
            stop=self.stop,
            layout=stuffed.layout,
            **self.sampling,
        )
        return AnswerStream(question, stuffed, stream, None if self.cite is None else self._cite)

    def _cite(self, answer: AnswerStream) -> str | None:
        # With ``attribute`` too, the read-only pass that cites is the one ``attribute`` returns.
        citation, read = finish_answer(
            self.engine,
            answer.stuffed,
            answer.stream.text,
            answer.stream.finish_reason,
            self.sra,
            cite=self.cite,
            attribute=self.attribute_answers,
        )
        answer.answer_attention = read
        return citation or None

    def attribute(self, answer: AnswerStream) -> list[float] | None:
        """How much the finished ``answer``'s own tokens read each numbered source (order of
        ``answer.sources``; higher = read more), from one read-only pass over the prompt with the
        answer appended (:meth:`~sra_rag.SRAEngine.attribute`; the model's text, without an appended
        citation); None when the answer is empty."""
        if answer.finish_reason is None:
            raise RuntimeError("the answer is still being generated: exhaust the stream before attributing it")
        if answer.answer_attention is None:
            answer.answer_attention = attribute_answer(self.engine, answer.stuffed, answer.stream.text, self.sra)
        return answer.answer_attention

    def ask(self, question: str, chunks: list[Chunk] | None = None) -> Answer:
        """Retrieve, stuff and generate the whole answer (and attribute it, with ``attribute``)."""
        answer = self.stream(question, chunks)
        for _ in answer:
            pass
        read = self.attribute(answer) if self.attribute_answers else None
        return Answer(
            question=question,
            text=answer.text,
            sources=answer.sources,
            chunks=answer.stuffed.chunks,
            dropped=answer.stuffed.dropped,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            finish_reason=answer.finish_reason,
            source_attention=answer.source_attention,
            source_attention_calibrated=answer.source_attention_calibrated,
            answer_attention=read,
            citations=answer.citations,
            appended_citation=answer.appended_citation,
            citation_to_check=citation_to_check(answer.text, read),
        )
