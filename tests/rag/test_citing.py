"""Citations: parsing the numbers an answer cites, the engine's constrained choice, and the reader's
appended citation when the model cites no source."""

from __future__ import annotations

import re

import pytest

from sra_rag import SRAConfig
from sra_rag.engine import ContextWindowExceededError
from sra_rag.rag.citing import (
    CITE_MODES,
    CITE_PREFIX,
    attribute_answer,
    citation_to_check,
    cite_answer,
    cited_numbers,
    finish_answer,
    most_read,
)
from sra_rag.rag.reader import Reader
from sra_rag.rag.stuffing import Chunk, stuff_prompt

OFF = SRAConfig(enabled=False)


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("Imelda approves it [2].", None, [2]),
        ("See [3], [1, 3] and [4][2].", None, [3, 1, 4, 2]),
        ("Document [2]; also [2; 5].", 4, [2]),  # 5 is not a source of a 4-source prompt
        ("No citation (1) or [a].", None, []),
        ("[0] and [12]", 12, [12]),
    ],
)
def test_cited_numbers_in_order_of_first_citation(text, count, expected) -> None:
    assert cited_numbers(text, count) == expected


@pytest.mark.parametrize(
    ("text", "scores", "expected"),
    [
        ("Born in Kalomi (Document [3]).", [0.1, 0.9, 0.2], 2),  # cites [3], read [2] most: check it
        ("Born in Kalomi [2], see also [3].", [0.1, 0.9, 0.2], None),  # cites the most-read one too
        ("Born in Kalomi.", [0.1, 0.9, 0.2], None),  # cites nothing: nothing to check
        ("Born in Kalomi [7].", [0.1, 0.9, 0.2], None),  # [7] is no source of a 3-source prompt
        ("Born in Kalomi [3].", None, None),  # no scores
    ],
)
def test_citation_to_check_is_the_most_read_source_when_the_answer_cites_others(text, scores, expected) -> None:
    assert citation_to_check(text, scores) == expected


def test_choose_takes_the_options_most_likely_first_token(tiny_engine) -> None:
    prompt = [{"role": "user", "content": "Pick a digit: 1 2 3 4 5."}]
    options = ["1", "2", "3", "4", "5"]  # one token each: greedy constrained decoding is the argmax
    likelihoods = [tiny_engine.log_likelihood(prompt, option, sra=OFF) for option in options]
    chosen = tiny_engine.choose(prompt, options, sra=OFF)
    assert chosen == max(range(len(options)), key=likelihoods.__getitem__)
    # A smaller set of options is a different question with its own answer.
    others = [option for i, option in enumerate(options) if i != chosen]
    second = tiny_engine.choose(prompt, others, sra=OFF)
    assert others[second] == options[max((i for i in range(5) if i != chosen), key=likelihoods.__getitem__)]


def test_choose_continues_the_reply_and_checks_its_options(tiny_engine) -> None:
    prompt = [{"role": "user", "content": "Which source?"}]
    options = ["1])", "2])", "12])"]
    assert tiny_engine.choose(prompt, options, reply="The lead approves it (Document [") in range(3)
    for bad in ([], "12", ["1", "1"], ["1", ""]):
        with pytest.raises(ValueError, match="options"):
            tiny_engine.choose(prompt, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reply"):
        tiny_engine.choose(prompt, options, reply=None)  # type: ignore[arg-type]


def test_cite_answer_appends_a_source_of_the_prompt_only_when_none_is_cited(tiny_engine) -> None:
    chunks = [Chunk(f"Record {n}: the lead is person {n}.", f"r{n}.txt", 0) for n in range(1, 13)]
    stuffed = stuff_prompt(tiny_engine, "Who is the lead?", chunks, max_new_tokens=8)
    answer = "The lead is person 7."
    # By attention: the source the answer's tokens read most.
    read = attribute_answer(tiny_engine, stuffed, answer, OFF)
    assert cite_answer(tiny_engine, stuffed, answer, OFF) == f"{CITE_PREFIX}{most_read(read)}])"
    assert cite_answer(tiny_engine, stuffed, answer, OFF, answer_attention=[0.0] * 11 + [1.0]) == " (Document [12])"
    # By the model: the number it writes after the prefix, one of the prompt's.
    citation = cite_answer(tiny_engine, stuffed, answer, OFF, "model")
    assert citation is not None and re.fullmatch(r" \(Document \[(\d+)\]\)", citation)
    assert 1 <= cited_numbers(citation)[0] <= len(stuffed.sources)
    options = [f"{n}])" for n in range(1, 13)]
    chosen = tiny_engine.choose(stuffed.messages, options, reply=answer + CITE_PREFIX, layout=stuffed.layout, sra=OFF)
    assert citation == CITE_PREFIX + options[chosen]
    for mode in CITE_MODES:
        assert cite_answer(tiny_engine, stuffed, "Person 7 [3].", OFF, mode) is None
        assert cite_answer(tiny_engine, stuffed, "  ", OFF, mode) is None
        # A number that is not a source of the prompt is no citation.
        assert cite_answer(tiny_engine, stuffed, "Person 7 [40].", OFF, mode) is not None
    with pytest.raises(ValueError, match="cite must be one of"):
        cite_answer(tiny_engine, stuffed, answer, OFF, "readout")  # type: ignore[arg-type]


class CountingReads:
    """An engine that records each read-only pass of an answer (``attribute``) in ``calls``."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def attribute(self, *args, **kwargs):
        self.calls.append(args)
        return self.engine.attribute(*args, **kwargs)


def test_finish_answer_shares_one_read_between_citation_and_attribution(tiny_engine) -> None:
    chunks = [Chunk(f"Record {n}: the lead is person {n}.", f"r{n}.txt", 0) for n in range(1, 4)]
    stuffed = stuff_prompt(tiny_engine, "Who is the lead?", chunks, max_new_tokens=8)
    engine = CountingReads(tiny_engine)
    calls = engine.calls
    citation, read = finish_answer(engine, stuffed, "Person 2.", "stop", OFF, attribute=True)
    assert len(calls) == 1 and citation == f"{CITE_PREFIX}{most_read(read)}])"
    assert finish_answer(engine, stuffed, "Person 2.", "length", OFF) == ("", None)  # cut: left as it is
    assert finish_answer(engine, stuffed, "Person 2 [1].", "stop", OFF) == ("", None)
    assert finish_answer(engine, stuffed, "Person 2.", "stop", OFF, cite=None) == ("", None)
    assert len(calls) == 1


@pytest.mark.slow
def test_reader_streams_the_models_pick_last_when_it_cites_none(embedded_engine) -> None:
    chunks = [
        Chunk("Leave in the Storm Fortnight needs approval from Imelda Farrow.", "leave.md", 0, id="l0"),
        Chunk("The showroom is on Lantern Street.", "faq.txt", 0, id="f0"),
    ]

    class Retriever:
        def retrieve(self, question: str, top_k: int = 8) -> list[Chunk]:
            return chunks[:top_k]

    question = "Who approves leave during the Storm Fortnight?"
    plain = Reader(embedded_engine, Retriever(), sra=OFF, max_new_tokens=48, cite=None).ask(question)
    cited = Reader(embedded_engine, Retriever(), sra=OFF, max_new_tokens=48)
    stream = cited.stream(question)
    pieces = list(stream)
    assert plain.finish_reason == stream.finish_reason == "stop", "the model should end this short answer itself"
    assert plain.appended_citation is None and plain.citations == cited_numbers(plain.text, 2)
    if plain.citations:  # the model cited a source itself: nothing is added
        assert stream.appended_citation is None and stream.text == plain.text
    else:
        assert stream.appended_citation is not None and pieces[-1] == stream.appended_citation
        assert stream.text == plain.text + stream.appended_citation == "".join(pieces)
        assert stream.citations and 1 <= stream.citations[0] <= 2
        assert stream.appended_citation == f" (Document [{most_read(cited.attribute(stream))}])"
    counting = CountingReads(embedded_engine)
    answer = Reader(counting, Retriever(), sra=OFF, max_new_tokens=48, attribute=True).ask(question)
    assert len(counting.calls) == 1  # the citation by attention and answer_attention share one read-only pass
    assert answer.text == stream.text and answer.citations == stream.citations
    assert answer.appended_citation == stream.appended_citation and answer.answer_attention is not None
    assert answer.citation_to_check == citation_to_check(answer.text, answer.answer_attention)
    by_model = Reader(embedded_engine, Retriever(), sra=OFF, max_new_tokens=48, cite="model").ask(question)
    assert by_model.text == plain.text + (by_model.appended_citation or "")
    assert by_model.citations and 1 <= by_model.citations[0] <= 2
    with pytest.raises(ValueError, match="cite"):
        Reader(embedded_engine, Retriever(), cite="yes")  # type: ignore[arg-type]


def test_a_model_citation_without_room_in_the_window_is_cited_by_attention(tiny_engine) -> None:
    chunks = [Chunk(f"Record {n}: the lead is person {n}.", f"r{n}.txt", 0) for n in range(1, 4)]
    budget = 8
    full = stuff_prompt(tiny_engine, "Who is the lead?", chunks, max_new_tokens=budget)
    small = tiny_engine.with_context_window(full.prompt_tokens + budget)  # the answer's budget, no more
    stuffed = stuff_prompt(small, "Who is the lead?", chunks, max_new_tokens=budget)
    answer = "Person 2"
    assert small.count_tokens(answer) < budget
    options = ["1])", "2])", "3])"]
    with pytest.raises(ContextWindowExceededError):
        small.choose(stuffed.messages, options, reply=answer + CITE_PREFIX, layout=stuffed.layout, sra=OFF)
    assert cite_answer(small, stuffed, answer, OFF, "model") == cite_answer(small, stuffed, answer, OFF)
