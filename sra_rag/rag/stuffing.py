"""Stuff every retrieved chunk into one chat prompt that fits the model's context window exactly.

Layout of the prompt (the question comes last, so the SRA tail can cover exactly the question, the
instruction and the generation prompt)::

    system: <system prompt: answer from the documents below and name the one used by its number>

            Documents:

            Document [1] (Title: Employee handbook)
            <chunk 3 of handbook.md, the best match>

            Document [2]
            <chunk 1 of history.txt>

            Document [3] (Title: Employee handbook)
            <chunk 0 of handbook.md>
    user:   Question: <question>
            Answer in one or two sentences and name the document you used by its number.

Why this layout (measured with the ``reader`` evaluation suite, ``docs/eval/reader-*``): with the
sources in the user's message, headed by their file names, small models continue the list of
sources instead of answering once there are about ten ("[1] registry/record-597931.txt [2] ..."),
and when told to cite they cite file names or copy the example number. With the documents in the
system message and the question alone in the user's turn, they answer it, and naming the document
"Document [n]" gets the number cited. File names are left out of the prompt (they drew citations
by name and cost the smallest model answers); a chunk's ``title``, when it has one, is shown in its
header as in the "Lost in the Middle" prompts. ``StuffedPrompt.sources`` maps numbers to sources.
With ``system_prompt=""`` (for chat templates without a system role) everything goes in one user
message, the question last.

Ranking and order: chunks are ranked in the order they are given (retrievers return the best match
first). Duplicates (same id, or same text) keep their best-ranked copy. By default every chunk is its
own ``Document [n]`` at its rank, so ``[1]`` is the best match and no chunk moves. With
``group_by_source=True`` the chunks of one source form one document, placed at the rank of its
best-ranked chunk, its chunks in document order (by ``chunk_index``) so neighbouring chunks read as
continuous text; ``StuffedPrompt.moved`` then lists the chunks that grouping moved.
When chunks must be dropped (``overflow="drop"``), the lowest-ranked go first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from sra_rag.engine import ContextWindowExceededError
from sra_rag.layout import TextLayout

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

OverflowPolicy = Literal["error", "drop"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "drop")

DEFAULT_SYSTEM_PROMPT = (
    "You answer the user's question from the documents below, using only them. Answer in one or two "
    "sentences and name the document you used by its number, such as Document [n]. If the documents do not "
    "contain the answer, say so."
)
# No example number: models copy it ("like [4]" gave [4] whatever the source).
ANSWER_INSTRUCTION = "Answer in one or two sentences and name the document you used by its number."


SOURCE_KEYS: tuple[str, ...] = ("source", "file_path", "file_name", "filename", "url", "title")
"""Framework metadata keys tried, in order, for a chunk's source (LangChain documents, LlamaIndex nodes)."""
TITLE_KEYS: tuple[str, ...] = ("title", "document_title")
"""Framework metadata keys tried, in order, for a chunk's title."""


def first_metadata(metadata: Mapping[str, object], keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that ``metadata`` sets (non-empty), as text; None when none is set."""
    return next((str(metadata[key]) for key in keys if metadata.get(key)), None)


@dataclass(frozen=True)
class Chunk:
    """One retrieved piece of text.

    ``source`` names the document (a path or title, shown in citations); ``chunk_index`` is the
    piece's position in that document (orders pieces of one source); ``score`` is the retriever's
    relevance (informational; ranking is the order chunks are given in); ``id`` is a stable
    identifier (used for deduplication); ``title`` is shown in the document's header
    (``Document [n] (Title: ...)``; None: no title).
    """

    text: str
    source: str
    chunk_index: int | None = None
    score: float | None = None
    id: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class StuffedPrompt:
    """A prompt ready for :meth:`SRAEngine.stream`.

    ``messages``: the chat messages; ``tail_from``: the text from which the SRA tail starts (the
    question and the instruction after it); ``prompt_tokens``: ``engine.count_tokens(messages)``;
    ``chunks``: the chunks included, in prompt order; ``dropped``: chunks left out (only with
    ``overflow="drop"``), best-ranked first; ``system``: the system prompt above the documents
    (``""``: none, everything in one user message); ``group_by_source``: the chunks of one source
    form one document (see the module docstring); ``moved``: the chunks that grouping placed
    elsewhere than their retrieved rank (empty without ``group_by_source``).
    """

    messages: list[dict[str, str]]
    tail_from: str
    prompt_tokens: int
    chunks: list[Chunk]
    dropped: list[Chunk] = field(default_factory=list)
    system: str = DEFAULT_SYSTEM_PROMPT
    group_by_source: bool = False
    moved: list[Chunk] = field(default_factory=list)

    @property
    def documents(self) -> list[list[Chunk]]:
        """The numbered documents in prompt order, each the chunks it holds: ``documents[0]`` is ``[1]``."""
        return group_documents(self.chunks, self.group_by_source)

    @property
    def sources(self) -> list[str]:
        """Each document's source in citation order: ``sources[0]`` is ``[1]`` in the prompt (a source
        appears once per chunk of it unless ``group_by_source``)."""
        return [document[0].source for document in self.documents]

    @property
    def layout(self) -> TextLayout:
        """The prompt's parts as text markers for the engine (``engine.stream(..., layout=...)``):
        the question (the question and instruction: ``tail_from``) and each numbered document block."""
        return TextLayout(question=self.tail_from, documents=tuple(document_blocks(self.documents)))


class ContextOverflowError(ContextWindowExceededError):
    """The retrieved chunks do not all fit the context window (and the caller did not choose to
    drop some). ``num_chunks`` were given after deduplication; only ``num_fitting`` of the
    best-ranked would fit (0 when not even the question alone fits)."""

    def __init__(
        self, prompt_tokens: int, max_new_tokens: int, context_window: int, num_chunks: int, num_fitting: int
    ) -> None:
        super().__init__(prompt_tokens, max_new_tokens, context_window)
        self.num_chunks = num_chunks
        self.num_fitting = num_fitting
        advice = (
            f"Only the {num_fitting} best-ranked of the {num_chunks} chunks fit ({num_chunks - num_fitting} do not). "
            "Retrieve fewer chunks (top-k), lower max_new_tokens, or pass overflow='drop' to leave out the "
            "lowest-ranked chunks with a warning."
            if num_fitting
            else f"Not even one of the {num_chunks} chunks fits with the question; lower max_new_tokens or "
            "use a model with a larger context window."
        )
        self.args = (f"With all {num_chunks} retrieved chunks: {self.args[0]} {advice}",)


def stuff_prompt(
    engine: SRAEngine,
    question: str,
    chunks: list[Chunk],
    *,
    max_new_tokens: int,
    overflow: OverflowPolicy = "error",
    system_prompt: str | None = None,
    group_by_source: bool = False,
) -> StuffedPrompt:
    """Build one prompt holding every chunk (deduplicated, in rank order or grouped by source with
    ``group_by_source``, documents numbered) and the question last, sized with
    ``engine.count_tokens`` so that ``prompt_tokens + max_new_tokens <= engine.context_window``.

    ``overflow="error"`` raises :class:`ContextOverflowError` (a :class:`ContextWindowExceededError`)
    with the token counts and how many chunks would fit; ``overflow="drop"`` leaves out the
    lowest-ranked chunks that do not fit and warns (``UserWarning``) naming them. Nothing is ever cut
    inside a chunk. Raises the error under either policy if not even one chunk fits.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty; pass the text of the question.")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
    if not isinstance(group_by_source, bool):
        raise TypeError(f"group_by_source must be True or False, got {group_by_source!r}")
    if isinstance(chunks, (str, Chunk)) or not all(isinstance(chunk, Chunk) for chunk in chunks):
        raise TypeError("chunks must be a list of sra_rag.rag.stuffing.Chunk")
    ranked = deduplicate(list(chunks))
    if not ranked:
        raise ValueError("There are no chunks to stuff; retrieve some context first (is the store empty?).")
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    tail_from = f"Question: {question.strip()}\n{ANSWER_INSTRUCTION}"
    budget = engine.context_window - max_new_tokens

    def build(count: int) -> tuple[list[dict[str, str]], list[Chunk], int]:
        included = order_chunks(ranked[:count]) if group_by_source else ranked[:count]
        messages = _messages(system, group_documents(included, group_by_source), tail_from)
        return messages, included, engine.count_tokens(messages)

    messages, included, prompt_tokens = build(len(ranked))
    if prompt_tokens <= budget:
        return StuffedPrompt(
            messages, tail_from, prompt_tokens, included, [], system, group_by_source, moved_chunks(ranked, included)
        )

    fitting = _largest_fitting(lambda count: build(count)[2] <= budget, len(ranked))
    if overflow == "error" or fitting == 0:
        raise ContextOverflowError(prompt_tokens, max_new_tokens, engine.context_window, len(ranked), fitting)
    messages, included, kept_tokens = build(fitting)
    dropped = ranked[fitting:]
    names = ", ".join(_describe(chunk) for chunk in dropped)
    warnings.warn(
        f"The {len(ranked)} chunks need {prompt_tokens} prompt tokens but only {budget} are available "
        f"(context window {engine.context_window} - max_new_tokens {max_new_tokens}); left out the "
        f"{len(dropped)} lowest-ranked: {names}.",
        UserWarning,
        stacklevel=2,
    )
    return StuffedPrompt(
        messages, tail_from, kept_tokens, included, dropped, system, group_by_source, moved_chunks(ranked, included)
    )


def reorder(engine: SRAEngine, stuffed: StuffedPrompt, order: Sequence[int]) -> StuffedPrompt:
    """The same prompt with its documents in a new order: ``order[i]`` is the index (in
    ``stuffed.documents``) of the document that becomes ``Document [i + 1]``. Every chunk stays, whole,
    in its document; chunks of one document keep their order; documents are renumbered by position."""
    documents = stuffed.documents
    if sorted(order) != list(range(len(documents))):
        raise ValueError(f"order must list each of the {len(documents)} document indices once, got {list(order)}")
    placed = [documents[index] for index in order]
    chunks = [chunk for document in placed for chunk in document]
    messages = _messages(stuffed.system, placed, stuffed.tail_from)
    return replace(stuffed, messages=messages, prompt_tokens=engine.count_tokens(messages), chunks=chunks)


def deduplicate(chunks: list[Chunk]) -> list[Chunk]:
    """Drop repeated chunks (same ``id``, or the same text up to whitespace), keeping the first
    (best-ranked) copy; the order is kept."""
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    unique: list[Chunk] = []
    for chunk in chunks:
        text_key = " ".join(chunk.text.split())
        if not text_key or text_key in seen_texts or (chunk.id is not None and chunk.id in seen_ids):
            continue
        seen_texts.add(text_key)
        if chunk.id is not None:
            seen_ids.add(chunk.id)
        unique.append(chunk)
    return unique


def order_chunks(ranked: list[Chunk]) -> list[Chunk]:
    """Prompt order when grouping by source: sources by their best rank, chunks of one source by ``chunk_index`` (chunks
    without an index keep their rank order after the indexed ones)."""
    first_rank: dict[str, int] = {}
    for rank, chunk in enumerate(ranked):
        first_rank.setdefault(chunk.source, rank)
    positions = {id(chunk): rank for rank, chunk in enumerate(ranked)}
    return sorted(
        ranked,
        key=lambda chunk: (
            first_rank[chunk.source],
            chunk.chunk_index is None,
            chunk.chunk_index if chunk.chunk_index is not None else 0,
            positions[id(chunk)],
        ),
    )


def group_documents(chunks: list[Chunk], group_by_source: bool = False) -> list[list[Chunk]]:
    """The numbered documents of chunks already in prompt order: each chunk alone, or with
    ``group_by_source`` the chunks of one source together (at its first chunk's place)."""
    if not group_by_source:
        return [[chunk] for chunk in chunks]
    grouped: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        grouped.setdefault(chunk.source, []).append(chunk)
    return list(grouped.values())


def moved_chunks(ranked: list[Chunk], chunks: list[Chunk]) -> list[Chunk]:
    """The chunks of ``chunks`` (prompt order) that are not at their place in ``ranked`` (retrieved
    order, deduplicated): what grouping by source moved."""
    rank = {id(chunk): position for position, chunk in enumerate(ranked)}
    order = sorted(rank[id(chunk)] for chunk in chunks)
    return [chunk for place, chunk in zip(order, chunks, strict=True) if rank[id(chunk)] != place]


def format_sources(documents: list[list[Chunk]]) -> str:
    """The ``Documents:`` block: each document headed ``Document [n]`` (``n`` its citation number,
    with its title when its first chunk has one), its chunks below it, each chunk's text whole."""
    return "Documents:\n\n" + "\n\n".join(document_blocks(documents))


def document_blocks(documents: list[list[Chunk]]) -> list[str]:
    """One text block per document, in citation order: its numbered header and its chunks."""
    return [
        "\n\n".join([_header(number, document[0]) + document[0].text.strip()] + [c.text.strip() for c in document[1:]])
        for number, document in enumerate(documents, start=1)
    ]


def _header(number: int, chunk: Chunk) -> str:
    title = " ".join((chunk.title or "").split())
    return f"Document [{number}] (Title: {title})\n" if title else f"Document [{number}]\n"


def _messages(system: str, documents: list[list[Chunk]], tail_from: str) -> list[dict[str, str]]:
    """The documents in the system message and the question alone in the user's turn (see the
    module docstring); without a system prompt, one user message with the question last."""
    if not system:
        return [{"role": "user", "content": f"{format_sources(documents)}\n\n{tail_from}"}]
    return [
        {"role": "system", "content": f"{system}\n\n{format_sources(documents)}"},
        {"role": "user", "content": tail_from},
    ]


def _largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest ``count`` in ``[1, upper)`` with ``fits(count)``, by binary search (token counts
    grow with the number of chunks); 0 when none fits (a prompt without context is no answer, so 0
    itself is never checked)."""
    low, high = 0, upper - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _describe(chunk: Chunk) -> str:
    return f"{chunk.source}#{chunk.chunk_index}" if chunk.chunk_index is not None else chunk.source
