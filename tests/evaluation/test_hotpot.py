"""The HotpotQA suite (sra_rag/evaluation/hotpot.py): reading a release file (whole or cut short),
the examples it makes, the shipped file, and the report's multi-gold re-ranking."""

import json

import pytest

from sra_rag.evaluation.hotpot import GOLD_INDICES, build, read_release, to_examples
from sra_rag.evaluation.nq import DATASETS, NUM_DOCUMENTS, Example, Passage, best_subspan_em, iter_questions, load
from sra_rag.evaluation.nq_report import best_gold_rank


def record(number: int, answer: str = "Paris", paragraphs: int = NUM_DOCUMENTS) -> dict:
    context = [[f"Title {number}.{i}", [f"Sentence {i}a.", f" Sentence {i}b."]] for i in range(paragraphs)]
    return {
        "_id": f"id{number}",
        "question": f"question {number}?",
        "answer": answer,
        "type": "bridge",
        "supporting_facts": [[f"Title {number}.6", 0], [f"Title {number}.2", 1], [f"Title {number}.6", 1]],
        "context": context,
    }


def test_read_release_reads_a_whole_file_and_the_complete_records_of_a_cut_one(tmp_path) -> None:
    records = [record(i) for i in range(3)]
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(records))
    assert read_release(whole) == records
    cut = tmp_path / "cut.json"
    text = json.dumps(records)
    cut.write_text(text[: text.index('"_id": "id2"') + 20])  # inside the third record
    assert read_release(cut) == records[:2]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert read_release(empty) == []
    with pytest.raises(ValueError, match="no JSON array"):
        (tmp_path / "bad.json").write_text("{}")
        read_release(tmp_path / "bad.json")


def test_examples_put_both_supporting_paragraphs_together_at_each_gold_position() -> None:
    examples = to_examples(record(5), 5)
    assert [example.gold_index for example in examples] == list(GOLD_INDICES) == [0, 4, 8]
    distractors = [f"Title 5.{i}" for i in (0, 1, 3, 4, 5, 7, 8, 9)]  # release order, without 2 and 6
    for example in examples:
        titles = [passage.title for passage in example.passages]
        index = example.gold_index
        assert titles[index : index + 2] == ["Title 5.2", "Title 5.6"]  # in the release's order
        assert [p.title for p in example.passages if not p.is_gold] == distractors
        assert example.passages[index].text == "Sentence 2a. Sentence 2b."  # the sentences joined
        assert example.answers == ("Paris",) and example.id == f"5@{index}"


def test_yes_no_answers_and_other_shapes_are_left_out() -> None:
    assert to_examples(record(1, answer="yes"), 1) == []
    assert to_examples(record(1, answer=" No"), 1) == []
    assert to_examples(record(1, paragraphs=2), 1) == []


def test_build_writes_what_load_reads(tmp_path) -> None:
    release = tmp_path / "release.json"
    release.write_text(json.dumps([record(0), record(1, answer="no"), record(2)]))
    examples = build(release, tmp_path)
    assert {example.question_id for example in examples} == {0, 2} and len(examples) == 6
    from sra_rag.evaluation.nq import read

    assert read(tmp_path / "test.jsonl.gz") == examples


def test_shipped_hotpotqa_file() -> None:
    examples = load("test", "hotpotqa")
    groups = list(iter_questions(examples))
    assert len(groups) == 44 and len(examples) == 3 * 44
    for group in groups:
        assert [example.gold_index for example in group] == list(GOLD_INDICES)
        assert len({tuple(p for p in example.passages if not p.is_gold) for example in group}) == 1
        for example in group:
            assert len(example.passages) == NUM_DOCUMENTS
            assert [i for i, p in enumerate(example.passages) if p.is_gold] == [
                example.gold_index,
                example.gold_index + 1,
            ]
            assert example.answers[0].lower() not in {"yes", "no"}
    # the answer is found in the supporting paragraphs more often than in the distractors
    in_gold = sum(any(best_subspan_em(p.text, e.answers) for p in e.passages if p.is_gold) for e in examples)
    assert in_gold > 0.8 * len(examples)
    with pytest.raises(ValueError, match="split must be one of"):
        load("dev", "hotpotqa")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load("test", "squad")
    assert set(DATASETS) == {"nq-open", "hotpotqa"}


def test_the_best_ranked_gold_passage_counts() -> None:
    passages = tuple(Passage(f"T{i}", "x", i in (3, 4)) for i in range(5))
    example = Example(0, "q", ("a",), 3, passages)
    assert best_gold_rank([0.0, 0.1, 0.2, 0.9, 0.5], example) == 0
    assert best_gold_rank([0.0, 0.9, 0.2, 0.1, 0.5], example) == 1  # the second gold passage at rank 1
    assert best_gold_rank([0.9, 0.8, 0.7, 0.1, 0.2], example) == 3


def test_the_accuracy_table_uses_the_dataset_s_gold_positions() -> None:
    from sra_rag.evaluation.nq_report import accuracy_table, complete_records

    records = [
        {"id": f"{q}@{i}", "gold_index": i, "setting": s, "correct": q == 0, "seconds": 1.0, "prompt_tokens": 9}
        for q in range(2)
        for i in GOLD_INDICES
        for s in ("off", "recommended")
    ]
    settings, rows = complete_records(records)
    header, _, stock, _ = accuracy_table(settings, rows, GOLD_INDICES)
    assert "gold at 1 | gold at 5 | gold at 9 | all" in header
    assert stock.startswith("| `off` | 1/2") and "3/6" in stock
