"""The copy suite: its prompts hold the asked value exactly once, and the report counts lost copies."""

from __future__ import annotations

from sra_rag.evaluation.copies import KINDS, Outcome, examples, report


def test_prompts_are_seeded_and_hold_the_asked_value_at_the_stated_place() -> None:
    built = examples(7, per_cell=2, documents=(1, 5, 30))
    assert built == examples(7, per_cell=2, documents=(1, 5, 30)) != examples(8, per_cell=2, documents=(1, 5, 30))
    assert len(built) == 3 * len(KINDS) * 2
    for example in built:
        assert len(example.records) == example.documents
        assert example.records[example.gold] == example.fact.text
        assert example.fact.value in example.fact.text and example.fact.value not in example.fact.question
    codes = [example.fact.value for example in built if example.fact.kind == "code"]
    assert all(len(set(code)) == 2 and len(code) == 4 for code in codes)  # four digits, two of them repeated


def test_the_report_counts_copies_that_plain_decoding_made_and_a_policy_lost() -> None:
    def outcome(id: str, policy: str, copied: bool, looped: bool = False) -> Outcome:
        return Outcome(id, policy, "code", 5, copied, looped, "", 0.1)

    outcomes = [
        outcome("a", "plain", True),
        outcome("a", "penalty", False),
        outcome("b", "plain", False, looped=True),
        outcome("b", "penalty", True),
    ]
    text = report(outcomes, "t")
    assert "| plain | 1/2 |" in text and "| 0 | 1 |" in text.split("| plain |")[1].split("\n")[0]
    assert "| penalty | 1/2 |" in text and text.split("| penalty |")[1].split("\n")[0].endswith("| 1 | 0 |")
