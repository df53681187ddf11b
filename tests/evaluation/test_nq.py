"""The NQ-Open suite: the paper's scoring, the seeded split, the shipped data's shape, the reader's
prompt over it, the runner's records and the report's statistics. No real model."""

from __future__ import annotations

import json

import pytest

from sra_rag.evaluation.nq import (
    DEV_QUESTIONS,
    GOLD_INDICES,
    NUM_DOCUMENTS,
    TEST_QUESTIONS,
    Example,
    OracleQuestion,
    Passage,
    best_subspan_em,
    contains_answer,
    iter_questions,
    load,
    normalize_answer,
    pick_distractors,
    place_gold,
    read,
    split_questions,
    write,
)
from sra_rag.evaluation.nq_report import accuracy_table, complete_records, rank_of_gold, recall_at
from sra_rag.evaluation.nq_run import PassageRetriever, parse_setting, read_records, run
from sra_rag.rag.stuffing import stuff_prompt

ORACLE_QUESTIONS = 2655  # lines of the paper's nq-open-oracle.jsonl.gz


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[Example]]:
    return {split: load(split) for split in ("dev", "test")}


# -- scoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A   cat,  an owl and THE dog. ", "cat owl and dog"),
        ("Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"),
        ("U.S.-based", "usbased"),
        ("theatre", "theatre"),  # articles only as whole words
    ],
)
def test_normalize_answer_follows_squad(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "answers", "right"),
    [
        ("The first prize went to Wilhelm Conrad Röntgen in 1901.", ["Wilhelm Conrad Röntgen"], True),
        ("It was Röntgen.", ["Wilhelm Conrad Röntgen"], False),
        ("In 1901.", ["1901"], True),
        ("In 1910.", ["1901"], False),
        ("the Beatles", ["The Beatles", "Beatles"], True),
        ("Paris, France", ["London", "paris"], True),
        ("anything at all", ["the"], False),  # an answer that normalises to nothing never matches
        ("", ["1901"], False),
    ],
)
def test_best_subspan_em(prediction: str, answers: list[str], right: bool) -> None:
    assert best_subspan_em(prediction, answers) is right


# -- building -----------------------------------------------------------------------------------


def test_split_questions_is_seeded_disjoint_and_sized() -> None:
    first = split_questions(ORACLE_QUESTIONS)
    assert first == split_questions(ORACLE_QUESTIONS)
    assert len(first["dev"]) == DEV_QUESTIONS and len(first["test"]) == TEST_QUESTIONS
    assert not set(first["dev"]) & set(first["test"])
    assert split_questions(ORACLE_QUESTIONS, seed=1) != first
    with pytest.raises(ValueError, match="dev \\+ test"):
        split_questions(10, dev=6, test=5)


def test_pick_distractors_skips_answers_repeated_titles_and_the_gold_article() -> None:
    question = OracleQuestion(0, "who painted the mona lisa", ("Leonardo da Vinci",), Passage("Mona Lisa", "...", True))
    ranked = [
        Passage("Mona Lisa", "Another passage of the gold article."),
        Passage("Louvre", "The museum shows works by Leonardo da Vinci."),  # holds the answer
        Passage("Leonardo da Vinci", "An Italian polymath."),  # the answer is in the title
        Passage("Uffizi", "A museum in Florence."),
        Passage("Uffizi", "A second passage of that article."),
        Passage("Prado", "A museum in Madrid."),
        Passage("Tate", "A museum in London."),
    ]
    picked = pick_distractors(question, ranked, count=3)
    assert [passage.title for passage in picked] == ["Uffizi", "Prado", "Tate"]
    assert not any(passage.is_gold for passage in picked)
    with pytest.raises(ValueError, match="only 3 distractors"):
        pick_distractors(question, ranked, count=4)


def test_place_gold_inserts_at_the_index_and_keeps_the_distractor_order() -> None:
    gold = Passage("Gold", "answer here", True)
    question = OracleQuestion(7, "q", ("answer",), gold)
    distractors = [Passage(f"D{i}", f"text {i}") for i in range(9)]
    for index in GOLD_INDICES:
        example = place_gold(question, distractors, index)
        assert example.passages[index] == gold and example.id == f"7@{index}"
        assert [p for p in example.passages if not p.is_gold] == distractors
    with pytest.raises(ValueError, match="gold_index"):
        place_gold(question, distractors, 10)


def test_write_then_read_round_trips(tmp_path) -> None:
    example = place_gold(
        OracleQuestion(3, "q", ("a", "b"), Passage("Gold", "a", True)), [Passage(f"D{i}", "x") for i in range(9)], 4
    )
    write(tmp_path / "split.jsonl.gz", [example])
    assert read(tmp_path / "split.jsonl.gz") == [example]


# -- the shipped data ---------------------------------------------------------------------------


def test_shipped_splits_are_the_seeded_split(shipped) -> None:
    expected = split_questions(ORACLE_QUESTIONS)
    for split, examples in shipped.items():
        assert sorted({example.question_id for example in examples}) == expected[split]
        assert len(examples) == len(expected[split]) * len(GOLD_INDICES)


def test_every_question_has_the_same_distractors_at_every_gold_position(shipped) -> None:
    for examples in shipped.values():
        for group in iter_questions(examples):
            assert [example.gold_index for example in group] == list(GOLD_INDICES)
            distractors = {tuple(p for p in example.passages if not p.is_gold) for example in group}
            assert len(distractors) == 1


def test_each_example_has_ten_distinct_passages_and_one_answering_gold(shipped) -> None:
    for examples in shipped.values():
        for example in examples:
            assert len(example.passages) == NUM_DOCUMENTS
            assert [index for index, p in enumerate(example.passages) if p.is_gold] == [example.gold_index]
            assert len({passage.title for passage in example.passages}) == NUM_DOCUMENTS
            gold = example.passages[example.gold_index]
            assert contains_answer(gold.text, example.answers), example.id
            for passage in example.passages:
                if not passage.is_gold:
                    assert not contains_answer(passage.full_text, example.answers), example.id


# -- the reader's prompt and the runner ---------------------------------------------------------


class CharacterCounter:
    """Enough of an engine for ``stuff_prompt``: a context window and a token count."""

    context_window = 1_000_000

    def count_tokens(self, messages) -> int:
        return sum(len(message["content"]) for message in messages)


def test_the_reader_numbers_each_passage_as_its_own_document(shipped) -> None:
    example = next(e for e in shipped["dev"] if e.gold_index == 4)
    chunks = PassageRetriever(example).retrieve(example.question, NUM_DOCUMENTS)
    stuffed = stuff_prompt(CharacterCounter(), example.question, chunks, max_new_tokens=48)  # type: ignore[arg-type]
    assert stuffed.sources == [passage.title for passage in example.passages]
    gold = example.passages[4]
    assert f"Document [5]\n{gold.full_text.strip()}" in stuffed.messages[0]["content"]


def test_parse_setting() -> None:
    sra, order = parse_setting("recommended+first")
    assert sra.tail == "question" and order == "first"
    assert parse_setting("off")[0].enabled is False and parse_setting("off")[1] is None
    with pytest.raises(ValueError, match="placement"):
        parse_setting("recommended+middle")
    with pytest.raises(ValueError, match="unknown SRA preset"):
        parse_setting("strong")


def tiny_example(question_id: int, gold_index: int) -> Example:
    gold = Passage("Gold", "The green door is at number 12.", True)
    others = [Passage(f"Other {i}", f"The harbour log page {i}.") for i in range(9)]
    return place_gold(OracleQuestion(question_id, "what colour is the door?", ("green",), gold), others, gold_index)


def test_run_appends_one_record_per_answer_and_resumes(tiny_engine, tmp_path) -> None:
    examples = [tiny_example(q, index) for q in (1, 2) for index in GOLD_INDICES]
    out = tmp_path / "records.jsonl"
    settings = ["off", "recommended+first"]
    assert run(tiny_engine, examples, settings, out, questions=1, max_new_tokens=4) == 6
    records = read_records(out)
    assert {(r["id"], r["setting"]) for r in records} == {(f"1@{i}", s) for i in GOLD_INDICES for s in settings}
    for record in records:
        assert record["correct"] == best_subspan_em(record["reply"], ["green"])
        assert record["prompt_tokens"] > 0 and record["seconds"] > 0 and record["repetition_penalty"] == 1.0
        assert len(record["source_attention"]) == NUM_DOCUMENTS
        if record["setting"] == "off":
            assert record["gold_document"] == record["gold_index"] + 1
    assert run(tiny_engine, examples, settings, out, questions=1, max_new_tokens=4) == 0
    assert run(tiny_engine, examples, settings, out, max_new_tokens=4) == 6
    assert len(out.read_text().splitlines()) == 12
    json.loads(out.read_text().splitlines()[-1])


# -- the report ---------------------------------------------------------------------------------


def test_rank_of_gold_counts_ties_against_the_gold_passage() -> None:
    assert rank_of_gold([0.1, 0.9, 0.3], 1) == 0
    assert rank_of_gold([0.9, 0.9, 0.3], 1) == 1
    assert rank_of_gold([0.5, 0.9, 0.3], 2) == 2
    assert recall_at([0, 1, 2, 5], 1) == (1, 4) and recall_at([0, 1, 2, 5], 3) == (3, 4)


def test_accuracy_table_pairs_settings_on_the_same_prompts() -> None:
    def record(setting: str, question: int, index: int, correct: bool) -> dict:
        return {
            "id": f"{question}@{index}",
            "setting": setting,
            "gold_index": index,
            "correct": correct,
            "seconds": 2.0,
            "prompt_tokens": 9,
        }

    records = [record("off", q, i, q == 0) for q in range(3) for i in GOLD_INDICES]
    records += [record("paper", q, i, q < 2) for q in range(3) for i in GOLD_INDICES]
    records.append(record("paper", 9, 0, True))  # not answered by "off": left out of the comparison
    settings, rows = complete_records(records)
    assert settings == ["off", "paper"] and len(rows["paper"]) == 9
    table = accuracy_table(settings, rows)
    assert "| `off` | 1/3 (33%; 6-79) | 1/3 (33%; 6-79) | 1/3 (33%; 6-79) | 3/9 (33%; 12-65) | (baseline)" in table[2]
    assert "| 6/9 (67%; 35-88) | +3 / -0 | 0.250 | 2.0 | 9 |" in table[3]
