"""The attribution report: which source the answer's town comes from, each readout's top source, and
the disagreement flag, counted from outcomes (no model)."""

from sra_rag.evaluation import suites
from sra_rag.evaluation.attribution import Outcome, report


def outcome(gold, named, question_top, answer_top, right=None, cited=None, appended=False):
    right = named == gold if right is None else right
    return Outcome("x", 5, gold, named, right, question_top, answer_top, "reply", cited=cited, appended=appended)


def test_report_counts_each_readout_against_the_named_source_and_the_flag():
    outcomes = [
        outcome(1, 1, 1, 1),  # right, both readouts on it
        outcome(2, 2, 2, 3),  # right, the answer's readout elsewhere: flagged although right
        outcome(3, 4, 3, 4),  # wrong, copied from [4]: only the answer's readout finds it; flagged
        outcome(3, 5, 3, 3),  # wrong, copied from [5]: neither finds it; not flagged
        outcome(2, None, 2, 1),  # names no town: flagged and wrong
    ]
    assert [o.flagged for o in outcomes] == [False, True, True, False, True]
    text = report(outcomes, "t")
    assert "2 answers name the gold town, 2 name another source's town, 1 name no town" in text
    assert "| right (gold town) | 2/2 (100%" in text and "| 1/2 (50%" in text
    assert "| wrong (another source's town) | 0/2 (0%; 0-66) | 1/2 (50%" in text
    assert "| all naming a town | 2/4 (50%" in text
    # flagged 3 of 5: 2 of them wrong; 2 of 3 wrong answers flagged; 1 of 2 right answers flagged
    flag_row = text.split("| 3/5 |")[1]
    assert flag_row.startswith(" 2/3 (67%") and "| 2/3 (67%" in flag_row and "| 1/2 (50%" in flag_row
    assert not outcome(1, 1, 1, None).flagged  # an empty answer has no readout of its own


def test_report_counts_citations_the_models_own_and_appended():
    outcomes = [
        outcome(1, 1, 1, 1, cited=1),  # right, cites the gold itself
        outcome(2, 2, 2, 2, cited=5, appended=True),  # right, an appended citation elsewhere
        outcome(3, 4, 3, 4, cited=4, appended=True),  # wrong, the citation names the copied source
        outcome(3, None, 3, 3),  # cut: no citation
    ]
    text = report(outcomes, "t")
    assert "| right (gold town) | 2/2 (100%" in text and "| 1/2 (50%; 9-91): 1/1 / 0/1 |" in text
    assert "| 1/1 (100%; 21-100): 0/0 / 1/1 |" in text
    assert "1 answers cite a source themselves, 2 got a citation appended, 1 cite none" in text
    # The one own citation names the right source, and the answer read it most: nothing to check.
    assert "(1 answers that cite a source and name a town): 0 cite another source" in text
    assert "flags 0: wrong citations of flagged -, wrong citations flagged -" in text


def test_named_choice_is_the_source_index_of_the_first_town_named():
    example = suites.reader(None, [4], [0.5], per_cell=1, seed=3)[0]
    towns, person = example.choices, example.ignore[0]
    assert example.named_choice(f"{person} was born in {towns[2]}, not {towns[0]}.") == 2
    assert example.named_choice(f"{person} was born somewhere else.") is None
    assert example.score(f"{person} was born in {towns[2]}.") == [towns[2] == example.answers[0].text]


def test_run_answers_and_attributes_through_the_reader(tiny_engine):
    from sra_rag.evaluation.attribution import run

    outcomes = run(tiny_engine, seed=1, documents=[3], per_cell=1)
    assert [o.gold for o in outcomes] == [1, 1, 2, 3, 3]  # depths 0, .25, .5, .75, 1 of 3 sources
    for item in outcomes:
        assert 1 <= item.question_top <= 3 and item.named in (None, 1, 2, 3)
        assert (item.answer_top is None) is (not item.reply.strip())


def test_report_checks_the_models_own_citations_against_the_answers_readout():
    def cited(gold, named, number, scores):
        reply = f"Document [{number}] says so."
        return Outcome("x", 3, gold, named, named == gold, 1, 1 + scores.index(max(scores)), reply, (), scores, number)

    outcomes = [
        cited(2, 2, 3, (0.1, 0.8, 0.2)),  # cites [3], the town is [2]'s, read [2] most: flagged, wrong
        cited(2, 2, 2, (0.1, 0.8, 0.2)),  # cites the right one, read it most: not flagged
        cited(1, 1, 3, (0.1, 0.2, 0.9)),  # cites [3] wrongly and read [3] most: missed
        cited(1, 1, 1, (0.1, 0.9, 0.2)),  # cites the right one, read [2] most: flagged, right
    ]
    text = report(outcomes, "t")
    assert "(4 answers that cite a source and name a town): 2 cite another source than the town's" in text
    assert "flags 2: wrong citations of flagged 1/2 (50%" in text and "wrong citations flagged 1/2 (50%" in text
