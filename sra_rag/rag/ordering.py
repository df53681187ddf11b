"""Attention-ordered stuffing: read the prompt once, then put the sources the question read most where
the model reads best, and answer from the re-ordered prompt.

Small readers lose a document in the middle of a long prompt even when their attention found it: the
calibrated readout (:class:`~sra_rag.readout.recorder.DocumentAttention`) ranks the gold document first far more
often than the reply uses it (``docs/eval/documents``). Re-ordering turns that ranking into position:
a read of the prompt up to the end of the readout's layer band (:meth:`~sra_rag.engine.SRAEngine.read`),
then the prompt is stuffed again with the same chunks, every one of them kept, in the order
:func:`arrange` gives, and answered. The cost is that partial prefill on top of the answer's (the
band ends at 18 of 24 layers on Qwen2.5-Coder-0.5B, 19 of 30 on SmolLM2-135M); the numbers in
``Answer.sources`` follow the new order.

Placements (:data:`PLACEMENTS`): ``"first"`` puts the most-read source first (``Document [1]``),
``"last"`` puts it last (just before the question), ``"ends"`` alternates the most-read sources between
the two ends, so the least-read end up in the middle (the order of LangChain's ``LongContextReorder``).

A reader's ``order`` (:data:`ORDERS`) is one of those, ``"retrieved"`` (keep the chunks' order, no
readout pass), or None: the model's default (:attr:`ModelDefaults.order <sra_rag.config.ModelDefaults>`),
resolved once by :func:`resolve_order` for the reader, the server, the command line and both adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sra_rag.config import ORDERS, PLACEMENTS, Placement
from sra_rag.rag.stuffing import Chunk, OverflowPolicy, StuffedPrompt, reorder, stuff_prompt

if TYPE_CHECKING:
    from sra_rag.config import SRAConfig
    from sra_rag.engine import SRAEngine
    from sra_rag.readout.recorder import DocumentAttention


def check_placement(placement: object) -> Placement:
    """``placement`` if it is one of :data:`PLACEMENTS`; a ``ValueError`` naming them otherwise."""
    if placement not in PLACEMENTS:
        raise ValueError(f"the order placement must be one of {PLACEMENTS}, got {placement!r}")
    return placement  # type: ignore[return-value]


def resolve_order(order: object, default: Placement | None) -> Placement | None:
    """The placement a reader stuffs with: ``default`` (the model's, ``engine.defaults.order``) for
    None, no re-ordering for ``"retrieved"``, else ``order`` itself; a ``ValueError`` naming
    :data:`ORDERS` for anything else."""
    if order is None:
        return default
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (None: the model's default), got {order!r}")
    return None if order == "retrieved" else order  # type: ignore[return-value]


def arrange(ranking: Sequence[int], placement: Placement) -> list[int]:
    """The prompt order (source indices, first to last) for sources ranked ``ranking`` (most read first).

    >>> arrange([2, 0, 1, 3], "first"), arrange([2, 0, 1, 3], "last"), arrange([2, 0, 1, 3], "ends")
    ([2, 0, 1, 3], [3, 1, 0, 2], [2, 1, 3, 0])
    """
    check_placement(placement)
    ranked = list(ranking)
    if placement == "first":
        return ranked
    if placement == "last":
        return ranked[::-1]
    front, back = ranked[0::2], ranked[1::2]
    return front + back[::-1]


def probe(engine: SRAEngine, stuffed: StuffedPrompt, sra: SRAConfig | None = None) -> tuple[DocumentAttention, float]:
    """Read ``stuffed`` once, only as far as the readout needs (:meth:`SRAEngine.read`: the layers up
    to the readout band's end): how much the question read each source, and the seconds it took."""
    completion = engine.read(stuffed.messages, layout=stuffed.layout, sra=sra)
    if completion.document_attention is None:
        raise RuntimeError("the engine returned no document readout for a prompt with sources and a question")
    return completion.document_attention, completion.prefill_seconds


def ordered(
    engine: SRAEngine, stuffed: StuffedPrompt, attention: DocumentAttention, placement: Placement
) -> StuffedPrompt:
    """``stuffed`` with its sources in the order :func:`arrange` gives for ``attention``'s ranking
    (a readout of ``stuffed`` itself)."""
    if len(attention.scores) != len(stuffed.sources):
        raise ValueError(f"the readout scores {len(attention.scores)} sources, the prompt has {len(stuffed.sources)}")
    return reorder(engine, stuffed, arrange(attention.ranking, placement))


def order_by_attention(
    engine: SRAEngine, stuffed: StuffedPrompt, placement: Placement, sra: SRAConfig | None = None
) -> tuple[StuffedPrompt, DocumentAttention, float]:
    """``stuffed`` re-ordered by one readout prefill (under ``sra``): the new prompt, the readout it was
    ordered by (in the old prompt's source order) and that prefill's seconds."""
    attention, seconds = probe(engine, stuffed, sra)
    return ordered(engine, stuffed, attention, placement), attention, seconds


def prepare_stuffed_prompt(
    engine: SRAEngine,
    question: str,
    chunks: Sequence[Chunk],
    *,
    max_new_tokens: int,
    overflow: OverflowPolicy = "error",
    system_prompt: str | None = None,
    group_by_source: bool = False,
    order: Placement | None = None,
    sra: SRAConfig | None = None,
) -> StuffedPrompt:
    """The prompt every reader answers from: ``chunks`` stuffed for ``question``
    (:func:`~sra_rag.rag.stuffing.stuff_prompt`; each chunk its own document at its rank, or grouped
    by source with ``group_by_source``), then, with ``order``, re-ordered by one readout
    prefill under ``sra`` (:func:`order_by_attention`). ``order`` is checked here, for the reader,
    the server and both adapters."""
    placement = None if order is None else check_placement(order)
    stuffed = stuff_prompt(
        engine,
        question,
        list(chunks),
        max_new_tokens=max_new_tokens,
        overflow=overflow,
        system_prompt=system_prompt,
        group_by_source=group_by_source,
    )
    if placement is None:
        return stuffed
    return order_by_attention(engine, stuffed, placement, sra)[0]
