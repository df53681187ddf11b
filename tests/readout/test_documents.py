"""Document reattention (``SRAConfig.document_boost``): the question's rows read the readout's
top-ranked document more, after the profile's layer band; fast path == reference, per row in a
padded batch; and its evaluation's statistics."""

from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError

from sra_rag import SRAConfig
from sra_rag.attention import boost_documents, sra_attention_forward, sra_reference_attention_forward
from sra_rag.evaluation.documents import Outcome, report, setting, sign_test
from sra_rag.evaluation.readout import PARAPHRASES
from sra_rag.layout import TextLayout
from sra_rag.readout.calibration import ReadoutProfile
from sra_rag.readout.recorder import Readout, ReadoutRecorder
from tests.readout.test_recorder import DOCUMENTS, LAYOUTS, PADS, PROMPT, QUESTION
from tests.test_attention import module, padded_mask, random_qkv

BOOST = SRAConfig.preset("documents")
NUM_LAYERS = 4  # of tests.test_attention.module


def profile(layers=(0, 2), bias_last=0.0):
    bias = tuple((0.0, 0.0, bias_last) for _ in range(NUM_LAYERS))
    return ReadoutProfile(model="t", num_layers=NUM_LAYERS, layers=layers, positions=(0.0, 0.5, 1.0), bias=bias)


def test_the_preset_and_its_checks():
    assert BOOST.boosts_documents and not BOOST.inner and not BOOST.outer and BOOST.tail == "question"
    assert not SRAConfig().boosts_documents and not BOOST.model_copy(update={"enabled": False}).boosts_documents
    with pytest.raises(ValidationError, match="inner=False and outer=False"):
        SRAConfig(document_boost=4.0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SRAConfig(inner=False, outer=False, document_boost=0.5)
    with pytest.raises(ValidationError):
        SRAConfig(inner=False, outer=False, document_boost=float("inf"))


def test_boosting_multiplies_the_spans_and_renormalises():
    probs = torch.full((2, 3, 10), 0.1)
    boost_documents(probs, [(2, 4)], 10.0)
    assert probs.sum(-1) == pytest.approx(torch.ones(2, 3))
    assert float(probs[0, 0, 2]) == pytest.approx(1.0 / 2.8) and float(probs[0, 0, 0]) == pytest.approx(0.1 / 2.8)


def test_the_ranking_waits_for_the_band_and_uses_the_calibrated_scores():
    layout = LAYOUTS[0]  # three documents of 25, 25 and 23 tokens
    recorder = ReadoutRecorder(layout, profile=profile(bias_last=5.0))
    recorder.mass = {0: [0.1, 0.1, 0.5], 1: [0.1, 0.2, 0.5]}
    assert recorder.ranking(1) is None  # the band [0, 2) ends after layer 1
    # Raw, the last document leads; its position bias (5 nats at the end) puts it last.
    assert recorder.ranking(2) == [1, 0, 2]
    full = Readout(layout, tuple(tuple(recorder.mass.get(layer, [0.1, 0.1, 0.1])) for layer in range(NUM_LAYERS)))
    assert recorder.profile is not None
    assert recorder.profile.band_scores(layout, recorder.mass) == pytest.approx(
        list(recorder.profile.score(full).scores)
    )
    assert ReadoutRecorder(layout).ranking(3) is None
    with pytest.raises(ValueError, match="misses layers"):
        recorder.profile.band_scores(layout, {0: [0.1, 0.1, 0.5]})


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_fast_path_equals_reference_per_row_in_a_padded_batch(layer):
    n = 96
    qkv = random_qkv(batch=3, n=n, seed=7)
    mask = padded_mask(n, PADS)
    configs = [BOOST, SRAConfig(enabled=False), BOOST.model_copy(update={"document_top_k": 2})]
    outputs = {}
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        recorders = [ReadoutRecorder(layout, profile=profile()) for layout in LAYOUTS]
        for recorder in recorders:  # the band's layers as an earlier part of the prefill left them
            recorder.mass = {
                0: [0.3, 0.1, 0.2][: len(recorder.layout.documents)],
                1: [0.3, 0.1, 0.2][: len(recorder.layout.documents)],
            }
        outputs[fn], _ = fn(
            module(layer), *qkv, mask, scaling=0.25, sra_config=configs, sra_layout=LAYOUTS, sra_readout=recorders
        )
    torch.testing.assert_close(
        outputs[sra_attention_forward], outputs[sra_reference_attention_forward], atol=1e-5, rtol=1e-5
    )
    stock, _ = sra_attention_forward(module(layer), *qkv, mask, scaling=0.25, sra_config=SRAConfig(enabled=False))
    fast = outputs[sra_attention_forward]
    torch.testing.assert_close(fast[1], stock[1])  # the row without document reattention
    for row in (0, 2):
        left, question_start = PADS[row][0], LAYOUTS[row].question_start
        assert question_start is not None
        before = left + question_start
        if layer < 2:  # the band is not read yet: stock everywhere
            torch.testing.assert_close(fast[row], stock[row])
        else:  # only the question's rows change
            torch.testing.assert_close(fast[row, :before], stock[row, :before])
            assert not torch.allclose(fast[row, before:], stock[row, before:])


def test_without_documents_or_a_recorder_nothing_changes():
    qkv = random_qkv(n=40)
    stock, _ = sra_attention_forward(module(3), *qkv, None, sra_config=SRAConfig(enabled=False))
    alone, _ = sra_attention_forward(module(3), *qkv, None, sra_config=BOOST)
    torch.testing.assert_close(alone, stock)


def test_the_engine_ranks_by_the_readout_even_when_it_is_not_asked_for(tiny_engine):
    layout = TextLayout(question=QUESTION, documents=DOCUMENTS)
    boosted = tiny_engine.complete(PROMPT, max_new_tokens=4, layout=layout, sra=BOOST, readout=False)
    assert boosted.document_attention is not None
    stock = tiny_engine.complete(PROMPT, max_new_tokens=4, layout=layout, sra=SRAConfig(enabled=False))
    # The readout is of stock attention at every layer up to the band; the band is the upper half.
    band = range(*boosted.document_attention.layers)
    for layer in range(band.start):
        assert boosted.document_attention.readout.mass[layer] == pytest.approx(
            stock.document_attention.readout.mass[layer]
        )
    # Without a layout the preset leaves the prompt as stock attention reads it.
    plain = [tiny_engine.complete(PROMPT, max_new_tokens=6, sra=sra).text for sra in (BOOST, SRAConfig(enabled=False))]
    assert plain[0] == plain[1]


def test_sign_test_and_report():
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(3, 3) == 1.0
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    outcomes = [
        Outcome(
            i,
            "name",
            2000,
            5,
            i % 5,
            (i % 5) / 4,
            "Town",
            0,
            0,
            {},
            {"off": i % 2 == 0, "documents": True},
            {"off": 1.0, "documents": 1.05},
        )
        for i in range(10)
    ]
    text = report(outcomes, "t")
    assert "| `documents` | all | +50.0 points | 5 | 0 | 0.062 | 1.05x |" in text
    assert "| `off` |" in text and "depth 0.50" in text and "upper bound" not in text
    for outcome in outcomes:
        outcome.correct["order-last"] = outcome.correct.pop("documents")
        outcome.prefill_seconds["order-last"] = 2.0
    assert "`order-last`: re-ordered under the baseline's attention" in report(outcomes, "t")
    many = [
        replace(
            outcomes[i % 10],
            index=i,
            correct={"off": False, "order-last": True},
            prefill_seconds={"off": 1.0, "order-last": 2.0},
        )
        for i in range(20)
    ]
    assert "| `order-last` | all | +100.0 points | 20 | 0 | < 0.001 |" in report(many, "t")


def test_the_chroma_check_runs_end_to_end(tiny_engine, tmp_path):
    from sra_rag.evaluation.documents import chroma_check, chroma_report

    settings = ("off", "documents", "order-first")
    outcomes = chroma_check(tiny_engine, tmp_path, seed=1, records=10, questions=4, top_k=3, settings=settings)
    assert len(outcomes) == 4 and all(set(o.correct) == set(settings) for o in outcomes)
    assert [o.kind for o in outcomes] == ["name", "paraphrase", "name", "paraphrase"]
    assert all(o.retrieved_rank is None or 1 <= o.retrieved_rank <= 3 for o in outcomes)
    records = [path.read_text() for path in (tmp_path / "registry").iterdir()]
    assert len(records) == 10
    for profession in PARAPHRASES:  # a paraphrase question has one right record
        assert sum(f"worked as a {profession} " in text for text in records) == 1
    text = chroma_report(outcomes, "tiny")
    assert "| all | 4 |" in text
    with pytest.raises(ValueError, match="exceed the 8 paraphrased"):
        chroma_check(tiny_engine, tmp_path, seed=1, records=8)


def test_the_chroma_check_asks_for_people_other_records_mention_too(tiny_engine, tmp_path):
    from sra_rag.evaluation.documents import chroma_check

    outcomes = chroma_check(
        tiny_engine, tmp_path, seed=1, records=10, questions=2, top_k=5, settings=("off",), kinds=("mentioned",)
    )
    assert [o.kind for o in outcomes] == ["mentioned", "mentioned"]
    files = sorted((tmp_path / "registry").iterdir())
    extra = [path.read_text() for path in files[10:]]
    assert 2 <= len(extra) <= 2 * 3  # 1 to top_k - 2 mentions per question
    biographies = [path.read_text() for path in files[:10]]
    towns = {text.split(" was born in ")[0]: text.split("in the town of ")[1].split(".")[0] for text in biographies}
    # every extra record names one of the people, and not that person's town
    for text in extra:
        (person,) = [person for person in towns if person in text]
        assert towns[person] not in text
    assert all(o.retrieved_rank is None or 1 <= o.retrieved_rank <= 5 for o in outcomes)
    for bad, message in (
        (dict(kinds=("names",)), "kinds must be some of"),
        (dict(kinds=("mentioned",), top_k=2), "at least 3"),
    ):
        with pytest.raises(ValueError, match=message):
            chroma_check(tiny_engine, tmp_path / "x", seed=1, records=10, **bad)


def test_settings_name_a_preset_and_an_optional_order():
    assert setting("documents") == (SRAConfig.preset("documents"), None)
    assert setting("order-ends") == (SRAConfig.preset("off"), "ends")
    assert setting("documents+order-last") == (SRAConfig.preset("documents"), "last")
    for bad, message in (("order-middle", "placement"), ("off+first", "PRESET"), ("nonsense", "preset")):
        with pytest.raises(ValueError, match=message):
            setting(bad)


def test_a_reordered_setting_may_take_the_baseline_s_readout_instead_of_a_probe(tiny_engine):
    from sra_rag.evaluation.documents import _answer
    from sra_rag.evaluation.readout import prompts

    prompt = next(prompts(tiny_engine, 3, [400], 1, ["name"]))
    off = SRAConfig.preset("off")
    _, seconds, attention = _answer(tiny_engine, prompt, off)
    assert attention is not None
    probed = _answer(tiny_engine, prompt, off, "last")
    reused = _answer(tiny_engine, prompt, off, "last", (attention, seconds))
    assert reused[0] == probed[0] and reused[2].scores == pytest.approx(probed[2].scores, abs=1e-5)
    assert reused[1] > seconds  # the baseline's prefill is counted as the probe's


def test_an_interrupted_run_resumes_where_it_stopped(tiny_engine, tmp_path):
    from sra_rag.evaluation.documents import resume, run, save

    arguments = {"model": "tiny-llama", "length": 400, "count": 3, "seed": 2, "settings": ["off", "order-last"]}
    kwargs = {"seed": 2, "length": 400, "count": 3, "settings": ("off", "order-last")}
    profile = tiny_engine.readout_profile
    whole = run(tiny_engine, profile, **kwargs)

    def stop_after_two(outcomes):
        save(tmp_path, arguments, outcomes)
        if len(outcomes) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_engine, profile, **kwargs, checkpoint=stop_after_two)
    done = resume(tmp_path, arguments)
    assert [o.index for o in done] == [0, 1]
    answered = []
    resumed = run(tiny_engine, profile, **kwargs, done=done, progress=answered.append)
    assert len(answered) == 1 and answered[0].startswith("3/3")

    def same(outcome):
        return (outcome.index, outcome.gold, outcome.raw_rank, outcome.calibrated_rank, outcome.replies)

    assert [same(o) for o in resumed] == [same(o) for o in whole]
    with pytest.raises(ValueError, match="seed 2 there, 3 here"):
        resume(tmp_path, {**arguments, "seed": 3})
    assert resume(tmp_path / "elsewhere", arguments) == []
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match="no run.json"):
        resume(tmp_path, arguments)


def test_the_command_refuses_a_chroma_check_without_questions(tmp_path, capsys):
    from sra_rag.evaluation.documents import main

    with pytest.raises(SystemExit):
        main(["--chroma", "--questions", "0", "--out", str(tmp_path)])
    assert "--questions must be a positive number, got 0" in capsys.readouterr().err
