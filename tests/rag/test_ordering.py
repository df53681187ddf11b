"""Attention-ordered stuffing: the placements, the re-stuffed prompt (every chunk kept, sources
renumbered) and the reader switch, on the embedded model."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from sra_rag.config import SAFE_DEFAULTS, ModelDefaults
from sra_rag.rag.ordering import PLACEMENTS, arrange, order_by_attention, probe, resolve_order
from sra_rag.rag.reader import Reader
from sra_rag.rag.stuffing import Chunk, reorder, stuff_prompt

QUESTION = "Who approves leave during the Storm Fortnight?"
CHUNKS = [
    Chunk("The showroom is on Lantern Street and opens at nine.", "faq.txt", 0, id="f0"),
    Chunk("Leave in the Storm Fortnight needs approval from Imelda Farrow.", "leave.md", 1, id="l1"),
    Chunk("Expenses are paid back within ten working days.", "expenses.md", 0, id="e0"),
    Chunk("Full-time staff get 27 days of paid leave.", "leave.md", 0, id="l0"),
    Chunk("The canteen serves soup on Tuesdays.", "canteen.md", 0, id="c0"),
]


@pytest.mark.parametrize("count", [1, 2, 5, 6])
def test_every_placement_is_a_permutation_with_the_most_read_where_it_says(count: int) -> None:
    for ranking in itertools.islice(itertools.permutations(range(count)), 24):
        first, last, ends = (arrange(ranking, placement) for placement in ("first", "last", "ends"))
        for order in (first, last, ends):
            assert sorted(order) == list(range(count))
        assert first[0] == ranking[0] and last[-1] == ranking[0] and ends[0] == ranking[0]
        if count > 1:
            # ends: the second most read is last, the least read sits in the middle.
            assert ends[-1] == ranking[1] and ends.index(ranking[-1]) in {count // 2, (count - 1) // 2}
    with pytest.raises(ValueError, match="first"):
        arrange([0, 1], "middle")  # type: ignore[arg-type]


class FakeTokens:
    """Counts words: enough to check that reorder recounts the prompt."""

    def count_tokens(self, messages: Any) -> int:
        return sum(len(message["content"].split()) for message in messages) + len(messages)

    context_window = 10_000
    defaults = SAFE_DEFAULTS


def test_reorder_keeps_every_chunk_and_renumbers_the_sources() -> None:
    engine: Any = FakeTokens()
    stuffed = stuff_prompt(engine, QUESTION, CHUNKS, max_new_tokens=8, group_by_source=True)
    assert stuffed.sources == ["faq.txt", "leave.md", "expenses.md", "canteen.md"]
    moved = reorder(engine, stuffed, [1, 3, 0, 2])
    assert moved.sources == ["leave.md", "canteen.md", "faq.txt", "expenses.md"]
    assert [chunk.id for chunk in moved.chunks] == ["l0", "l1", "c0", "f0", "e0"]  # chunk order inside a source kept
    assert sorted(moved.chunks, key=lambda chunk: chunk.id or "") == sorted(stuffed.chunks, key=lambda c: c.id or "")
    system = moved.messages[0]["content"]
    assert system.index("Document [1]\nFull-time staff") < system.index("Storm Fortnight")
    assert system.index("Storm Fortnight") < system.index("Document [2]\nThe canteen")
    assert system.index("Document [3]\nThe showroom") < system.index("Document [4]\nExpenses")
    assert moved.messages[1] == stuffed.messages[1] and moved.tail_from == stuffed.tail_from
    assert moved.prompt_tokens == engine.count_tokens(moved.messages) == stuffed.prompt_tokens
    assert moved.system == stuffed.system and moved.dropped == stuffed.dropped
    no_system = stuff_prompt(engine, QUESTION, CHUNKS, max_new_tokens=8, system_prompt="", group_by_source=True)
    assert len(reorder(engine, no_system, [3, 2, 1, 0]).messages) == 1
    for bad in ([0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 4]):
        with pytest.raises(ValueError, match="each of the 4 document indices once"):
            reorder(engine, stuffed, bad)


def test_reorder_moves_single_chunks_when_nothing_is_grouped() -> None:
    engine: Any = FakeTokens()
    stuffed = stuff_prompt(engine, QUESTION, CHUNKS, max_new_tokens=8)
    assert [chunk.id for chunk in stuffed.chunks] == ["f0", "l1", "e0", "l0", "c0"]  # retrieved rank
    assert stuffed.sources == ["faq.txt", "leave.md", "expenses.md", "leave.md", "canteen.md"]
    moved = reorder(engine, stuffed, [3, 1, 4, 0, 2])
    assert [chunk.id for chunk in moved.chunks] == ["l0", "l1", "c0", "f0", "e0"]
    assert moved.sources == ["leave.md", "leave.md", "canteen.md", "faq.txt", "expenses.md"]
    assert "Document [1]\nFull-time staff" in moved.messages[0]["content"]
    assert "Document [2]\nLeave in the Storm" in moved.messages[0]["content"]


class ListRetriever:
    def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
        return CHUNKS[:top_k]


@pytest.mark.slow
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_reader_orders_the_prompt_by_the_question_s_readout(embedded_engine, placement: str) -> None:
    plain = Reader(embedded_engine, ListRetriever(), max_new_tokens=4)
    stuffed = plain.stuff(QUESTION)
    attention, seconds = probe(embedded_engine, stuffed)
    assert seconds > 0 and len(attention.scores) == len(stuffed.sources)
    expected = [stuffed.sources[index] for index in arrange(attention.ranking, placement)]  # type: ignore[arg-type]
    ordered, used, _ = order_by_attention(embedded_engine, stuffed, placement)  # type: ignore[arg-type]
    assert ordered.sources == expected and used.scores == pytest.approx(attention.scores, abs=1e-4)
    answer = Reader(embedded_engine, ListRetriever(), max_new_tokens=4, order=placement).ask(QUESTION)  # type: ignore[arg-type]
    assert answer.sources == expected and len(answer.chunks) == len(CHUNKS)
    assert answer.prompt_tokens == embedded_engine.count_tokens(ordered.messages)
    assert answer.source_attention is not None and len(answer.source_attention) == len(expected)
    greedy = embedded_engine.complete(ordered.messages, layout=ordered.layout, max_new_tokens=4, stop=["\nQuestion:"])
    assert answer.text == greedy.text


def test_reader_refuses_an_unknown_placement() -> None:
    with pytest.raises(ValueError, match="'retrieved', 'first', 'last', 'ends'"):
        Reader(FakeTokens(), ListRetriever(), order="middle")  # type: ignore[arg-type]


def test_the_model_s_default_order_applies_unless_the_reader_names_one() -> None:
    plain, ordering = FakeTokens(), FakeTokens()
    ordering.defaults = SAFE_DEFAULTS.model_copy(update={"order": "last"})
    assert Reader(plain, ListRetriever()).order is None  # the shipped defaults keep the retrieved order
    assert Reader(ordering, ListRetriever()).order == "last"
    assert Reader(ordering, ListRetriever(), order="retrieved").order is None
    assert Reader(ordering, ListRetriever(), order="ends").order == "ends"
    assert resolve_order(None, "first") == "first" and resolve_order("retrieved", "first") is None
    with pytest.raises(ValidationError):
        ModelDefaults(order="retrieved")  # type: ignore[arg-type]  # a default names a placement or None
