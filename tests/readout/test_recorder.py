"""The readout: the question's attention mass on each document, recorded in the prefill (fast path ==
reference, per row in a padded batch), scored by a profile, and exposed by the engine and reader."""

import math
import random

import numpy as np
import pytest
import torch

from sra_rag import SRAConfig
from sra_rag.attention import sra_attention_forward, sra_reference_attention_forward
from sra_rag.layout import PromptLayout, TextLayout
from sra_rag.models import shipped_profile
from sra_rag.readout.calibration import (
    BIAS_POSITIONS,
    ReadoutProfile,
    choose_band,
    fit_bias,
    fit_profile,
    rank_of_gold,
)
from sra_rag.readout.recorder import Readout, ReadoutRecorder
from tests.test_attention import SMALL, module, padded_mask, random_qkv

LAYOUTS = [
    PromptLayout(96, question=(80, 90), documents=((5, 30), (30, 55), (55, 78))),
    PromptLayout(86, question=(70, 80), documents=((2, 40), (40, 68))),
    PromptLayout(76, question=(60, 66), documents=((10, 58),)),
]
PADS = [(0, 0), (10, 0), (0, 20)]


def column_mass(qkv, layout, row=0, left=0):
    """The literal readout: full softmax, question rows (question to the end) over the row's keys."""
    query, key, value = qkv
    q = query[row, :, left : left + layout.length].float()
    k = key[row, :, left : left + layout.length].float().repeat_interleave(query.shape[1] // key.shape[1], 0)
    scores = q @ k.transpose(1, 2) * 0.25
    scores.masked_fill_(torch.ones(layout.length, layout.length, dtype=torch.bool).triu(1), float("-inf"))
    rows = scores.softmax(-1)[:, layout.question_start :]
    return [float(rows.mean(dim=(0, 1))[start:stop].sum()) for start, stop in layout.documents]


@pytest.mark.parametrize("fn", [sra_attention_forward, sra_reference_attention_forward])
@pytest.mark.parametrize("config", [SRAConfig(enabled=False), SMALL.model_copy(update={"tail": "question"})])
def test_each_row_records_its_question_mass_on_each_document(fn, config):
    n, layer = 96, 2
    qkv = random_qkv(batch=3, n=n, seed=3)
    recorders = [ReadoutRecorder(layout) for layout in LAYOUTS]
    output, _ = fn(
        module(layer), *qkv, padded_mask(n, PADS), scaling=0.25, sra_config=config, sra_layout=LAYOUTS,
        sra_readout=recorders,
    )  # fmt: skip
    for row, (recorder, layout, (left, _)) in enumerate(zip(recorders, LAYOUTS, PADS, strict=True)):
        assert list(recorder.mass) == [layer]
        expected = column_mass(qkv, layout, row, left)
        assert recorder.mass[layer] == pytest.approx(expected, abs=1e-5)
        assert all(0 < mass < 1 for mass in recorder.mass[layer]) and sum(recorder.mass[layer]) < 1
    # Recording changes nothing: the output equals the same call without recorders.
    plain, _ = fn(module(layer), *qkv, padded_mask(n, PADS), scaling=0.25, sra_config=config, sra_layout=LAYOUTS)
    torch.testing.assert_close(output, plain)


def test_no_readout_without_a_question_or_documents_or_in_decoding():
    qkv = random_qkv(n=40)
    no_documents = ReadoutRecorder(PromptLayout(40, question=(30, 35)))
    no_question = ReadoutRecorder(PromptLayout(40, documents=((0, 20),)))
    for recorder in (no_documents, no_question):
        sra_attention_forward(module(1), *qkv, None, sra_config=SRAConfig(enabled=False), sra_readout=recorder)
        assert recorder.mass == {} and recorder.readout() is None
    decoding = ReadoutRecorder(PromptLayout(40, question=(30, 35), documents=((0, 20),)))
    query, key, value = qkv
    sra_attention_forward(module(1), query[:, :, -1:], key, value, None, sra_readout=decoding)
    assert decoding.mass == {}
    with pytest.raises(ValueError, match="one per row"):
        sra_attention_forward(module(1), *qkv, None, sra_readout=[decoding, decoding])
    with pytest.raises(ValueError, match="describes 50 tokens"):
        sra_attention_forward(
            module(1), *qkv, None, sra_readout=ReadoutRecorder(PromptLayout(50, (40, 45), ((0, 20),)))
        )


def readout(mass, spans=((0, 10), (10, 20), (20, 30)), length=40):
    return Readout(PromptLayout(length, question=(30, 35), documents=spans), tuple(tuple(row) for row in mass))


def test_uncalibrated_scores_are_the_upper_half_mean_of_log_mass_per_token():
    masses = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.05, 0.5, 0.05], [0.1, 0.4, 0.2]]
    profile = ReadoutProfile.uncalibrated("tiny", 4)
    attention = profile.score(readout(masses))
    assert not attention.calibrated and attention.layers == (2, 4)
    expected = [(math.log(masses[2][d] / 10) + math.log(masses[3][d] / 10)) / 2 for d in range(3)]
    assert attention.scores == pytest.approx(expected)
    assert attention.ranking == [1, 2, 0]
    assert attention.summary()["scores"] == [round(score, 4) for score in expected]


def test_a_short_chunk_that_repeats_the_question_s_words_does_not_outrank_the_long_one_that_answers():
    # A 4-token mention of the asked person takes 0.1 of the question's attention, the 40-token
    # record that answers takes 0.3: per token the mention wins, in total the record does.
    spans = ((0, 40), (40, 44), (44, 84))
    masses = [[0.3, 0.1, 0.1]] * 4
    total = ReadoutProfile.uncalibrated("tiny", 4)
    per_token = total.model_copy(update={"length_exponent": 1.0})
    assert total.length_exponent == 0.0
    assert total.score(readout(masses, spans, 90)).ranking[0] == 0
    assert per_token.score(readout(masses, spans, 90)).ranking[0] == 1
    logs = [math.log(n) for n in (40, 4, 40)]
    expected = [
        math.log(m / n) + (lg - sum(logs) / 3) for m, n, lg in zip((0.3, 0.1, 0.1), (40, 4, 40), logs, strict=True)
    ]
    assert total.score(readout(masses, spans, 90)).scores == pytest.approx(expected)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        total.model_validate({**total.model_dump(), "length_exponent": 2.0})


def synthetic(rng, layers, count, gold, bias_of, signal_layers):
    """Readouts whose log mass per token is a position bias plus noise, plus a boost of the gold
    document in ``signal_layers``."""
    spans = [(i * 10, i * 10 + 10) for i in range(count)]
    where = [((a + b) / 2 - 0) / (count * 10) for a, b in spans]
    density = np.array([[bias_of(x) + rng.gauss(0, 0.05) for x in where] for _ in range(layers)])
    if gold is not None:
        density[signal_layers, gold] += 0.8
    mass = np.exp(density) * 10
    return readout(mass.tolist(), tuple(spans), count * 10 + 10)


def test_calibration_recovers_the_bias_and_finds_the_band_with_signal():
    rng = random.Random(0)

    def bias_of(x):
        return -5.0 + 3.0 * x**4  # the last documents look read, whatever the question

    absent = [synthetic(rng, 6, rng.randint(6, 12), None, bias_of, []) for _ in range(30)]
    bias = np.array(fit_bias(absent))
    assert bias.shape == (6, len(BIAS_POSITIONS))
    middle = [i for i, x in enumerate(BIAS_POSITIONS) if 0.1 <= x <= 0.9]
    assert bias[:, middle] == pytest.approx(np.array([[bias_of(BIAS_POSITIONS[i]) for i in middle]] * 6), abs=0.15)

    gold = []
    for _ in range(20):
        count = rng.randint(6, 12)
        index = rng.randrange(count - 2)  # not the last documents, which raw scores favour
        gold.append((synthetic(rng, 6, count, index, bias_of, [2, 3]), index))
    profile = fit_profile("tiny", absent, gold, {"seed": 0})
    assert profile.layers == (2, 4)
    raw = ReadoutProfile.uncalibrated("tiny", 6).model_copy(update={"layers": (2, 4)})
    calibrated_hits = sum(rank_of_gold(np.array(profile.score(r).scores), g) == 0 for r, g in gold)
    raw_hits = sum(rank_of_gold(np.array(raw.score(r).scores), g) == 0 for r, g in gold)
    assert calibrated_hits == 20 and raw_hits < 10
    assert choose_band(profile, gold) == (2, 4)


def unequal(rng, layers, bias_of):
    """A readout of an unanswered question whose documents have random lengths (5-60 tokens) and
    whose total mass (not mass per token) is a position bias plus noise."""
    lengths = [rng.randint(5, 60) for _ in range(rng.randint(6, 12))]
    starts = np.cumsum([0, *lengths])
    spans = tuple((int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True))
    where = [((a + b) / 2) / starts[-1] for a, b in spans]
    mass = [[math.exp(bias_of(x) + rng.gauss(0, 0.05)) for x in where] for _ in range(layers)]
    return readout(mass, spans, int(starts[-1]) + 10)


@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_the_bias_is_fitted_on_the_quantity_the_profile_scores(exponent):
    # Documents of mixed lengths whose total mass depends on position only. With total mass (the
    # default) an unanswered question's documents rank by nothing but noise, whatever their length;
    # per token, length decides.
    rng = random.Random(1)

    def bias_of(x):
        return -4.0 + 2.0 * x**4

    absent = [unequal(rng, 4, bias_of) for _ in range(40)]
    profile = fit_profile("tiny", absent, [(absent[0], 0)], {"seed": 0}, length_exponent=exponent)
    assert profile.length_exponent == exponent
    # The bias is the expected normalised mass: at exponent 0, the total mass less the prompt's mean
    # log length; at 1, the log mass per token.
    offset = np.mean([np.log(r.lengths).mean() for r in absent]) if exponent == 0.0 else None
    for x, row in zip(BIAS_POSITIONS, np.array(profile.bias).T, strict=True):
        if 0.1 <= x <= 0.9 and offset is not None:
            assert row == pytest.approx([bias_of(x) - offset] * 4, abs=0.15)
    fresh = [unequal(rng, 4, bias_of) for _ in range(20)]
    # Within each prompt (rankings compare documents of one prompt): scores and log lengths, centred.
    scores, lengths, inner = [], [], []
    for item in fresh:
        score = profile.layer_scores(item).mean(axis=0)
        scores.append(score - score.mean())
        lengths.append(np.log(item.lengths) - np.log(item.lengths).mean())
        inner.append((np.asarray(item.positions) > 0.1) & (np.asarray(item.positions) < 0.9))
    scores, lengths, inner = np.concatenate(scores), np.concatenate(lengths), np.concatenate(inner)
    correlation = np.corrcoef(scores[inner], lengths[inner])[0, 1]
    if exponent == 0.0:
        assert abs(correlation) < 0.2
    else:  # per token, a longer document has less mass per token than a bias over mixed lengths
        assert correlation < -0.8
    with pytest.raises(ValueError, match="no document answers"):
        fit_profile("tiny", [], [], {})


def test_profile_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="band inside"):
        ReadoutProfile(model="x", num_layers=4, layers=(3, 6), calibrated=False)
    with pytest.raises(ValueError, match="one row per layer"):
        ReadoutProfile(model="x", num_layers=2, layers=(0, 2), positions=(0.0, 1.0), bias=((0.0, 0.0),))
    profile = ReadoutProfile(model="x", num_layers=2, layers=(0, 2), positions=(0.0, 1.0), bias=((0.0, 1.0),) * 2)
    profile.save(tmp_path / "p.json")
    assert ReadoutProfile.load(tmp_path / "p.json") == profile
    with pytest.raises(ValueError, match="calibrate"):
        profile.score(readout([[0.1, 0.1, 0.1]]))
    assert shipped_profile("no-such-model") is None


DOCUMENTS = (
    "The harbour master keeps the ferry log.",
    "The lighthouse keeper's house has a green door.",
    "Leave is approved by the team lead in October.",
)
QUESTION = "Question: what colour is the door?"
PROMPT = "Sources:\n\n" + "\n\n".join(DOCUMENTS) + "\n\n" + QUESTION


def test_engine_returns_document_attention_per_request(tiny_engine):
    layout = TextLayout(question=QUESTION, documents=DOCUMENTS)
    completions = [tiny_engine.complete(PROMPT, max_new_tokens=2, layout=layout, sra=sra) for sra in (None, SMALL)]
    for completion in completions:
        attention = completion.document_attention
        assert attention is not None and len(attention.scores) == 3 and not attention.calibrated
        assert attention.readout.num_layers == 4 and all(0 < m < 1 for row in attention.readout.mass for m in row)
    # Batched with other requests, the readout is the same as alone (per-row recorders).
    streams = [tiny_engine.stream(PROMPT, max_new_tokens=2, layout=layout) for _ in range(3)]
    streams.append(tiny_engine.stream("Hello there", max_new_tokens=2))
    for stream in streams:
        stream.text  # noqa: B018
        for _ in stream:
            pass
    for stream in streams[:3]:
        assert stream.document_attention is not None
        assert stream.document_attention.scores == pytest.approx(completions[0].document_attention.scores, abs=1e-4)
    assert streams[3].document_attention is None
    assert tiny_engine.complete(PROMPT, max_new_tokens=1, layout=layout, readout=False).document_attention is None


def test_engine_takes_a_profile_for_its_model(tiny_tokenizer, make_tiny_model, tmp_path):
    from sra_rag import SRAEngine

    bias = tuple((0.0, 0.0, 5.0) for _ in range(4))  # the last document is discounted
    profile = ReadoutProfile(model="tiny", num_layers=4, layers=(0, 4), positions=(0.0, 0.5, 1.0), bias=bias)
    profile.save(tmp_path / "tiny.json")
    engine = SRAEngine(
        make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, readout_profile=tmp_path / "tiny.json"
    )
    layout = TextLayout(question=QUESTION, documents=DOCUMENTS)
    attention = engine.complete(PROMPT, max_new_tokens=1, layout=layout).document_attention
    assert attention is not None and attention.calibrated
    raw = ReadoutProfile.uncalibrated("tiny", 4).model_copy(update={"layers": (0, 4)}).score(attention.readout)
    shift = np.interp(attention.readout.positions, (0.0, 0.5, 1.0), (0.0, 0.0, 5.0))
    assert attention.scores == pytest.approx(list(np.array(raw.scores) - shift))
    with pytest.raises(ValueError, match="has 4"):
        SRAEngine(
            make_tiny_model("llama", len(tiny_tokenizer)),
            tiny_tokenizer,
            readout_profile=ReadoutProfile.uncalibrated("other", 6),
        )


def test_token_classes_fast_path_equals_reference():
    n, layer = 96, 3
    qkv = random_qkv(batch=3, n=n, seed=5)
    shares = {}
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        recorders = [ReadoutRecorder(layout, token_classes=True) for layout in LAYOUTS]
        fn(module(layer), *qkv, padded_mask(n, PADS), scaling=0.25, sra_layout=LAYOUTS, sra_readout=recorders)
        shares[fn] = [recorder.classes[layer] for recorder in recorders]
    for fast, reference in zip(shares[sra_attention_forward], shares[sra_reference_attention_forward], strict=True):
        assert fast == pytest.approx(reference, abs=1e-6) and sum(fast) == pytest.approx(1.0)
        assert all(share > 0 for share in fast)


@pytest.mark.slow
def test_embedded_model_reads_the_planted_gold_document_first(embedded_engine):
    from sra_rag.evaluation.readout import build_prompt, read

    profile = embedded_engine.readout_profile
    assert profile.calibrated and profile == shipped_profile("smollm2-135m")
    rng = random.Random("slow-test")  # not a calibration seed
    for depth in (0.25, 0.5, 0.75):
        prompt = build_prompt(embedded_engine, rng, 1024, "name", depth)
        attention = profile.score(read(embedded_engine, prompt))
        assert attention.ranking[0] == prompt.gold, attention.scores


def test_calibrate_command_writes_a_profile_for_any_model(tiny_engine, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sra_rag import SRAEngine
    from sra_rag.cli import build_app

    monkeypatch.setattr(SRAEngine, "shared", classmethod(lambda cls, model=None, **kwargs: tiny_engine))
    out = tmp_path / "tiny.json"
    result = CliRunner().invoke(
        build_app(), ["calibrate", "--out", str(out), "--length", "700", "--examples", "4", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    profile = ReadoutProfile.load(out)
    assert profile.calibrated and profile.num_layers == 4 and profile.model == "tiny-llama"
    assert profile.details["absent_prompts"] == 2 and profile.details["gold_prompts"] == 2
    assert np.isfinite(np.array(profile.bias)).all() and 0 <= profile.layers[0] < profile.layers[1] <= 4
    assert profile.length_exponent == 0.0
    per_token = tmp_path / "per-token.json"
    result = CliRunner().invoke(
        build_app(),
        ["calibrate", "--out", str(per_token), "--length", "700", "--examples", "4", "--seed", "3",
         "--length-exponent", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ReadoutProfile.load(per_token).length_exponent == 1.0
    bad = CliRunner().invoke(build_app(), ["calibrate", "--out", str(per_token), "--length-exponent", "2"])
    assert bad.exit_code != 0 and "--length-exponent" in bad.output


def test_recall_table_counts_ranks():
    from sra_rag.evaluation.readout import Measurement, recall_table

    results = [
        Measurement(2000, "name", 0, 10, 0, 0),
        Measurement(2000, "name", 3, 10, 4, 0),
        Measurement(2000, "paraphrase", 5, 10, 2, 5),
    ]
    rows = {row["questions"]: row for row in recall_table(results)}
    assert rows["name"]["raw_recall@1"] == 0.5 and rows["name"]["calibrated_recall@1"] == 1.0
    assert rows["paraphrase"]["raw_recall@3"] == 1.0 and rows["paraphrase"]["calibrated_recall@3"] == 0.0
    assert rows["all"]["prompts"] == 3 and rows["all"]["calibrated_recall@1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [sra_attention_forward, sra_reference_attention_forward])
def test_a_read_only_batch_stops_once_every_row_has_its_layers(fn):
    from sra_rag.readout.recorder import ReadoutComplete

    n, layer = 96, 2
    qkv = random_qkv(batch=3, n=n, seed=3)
    kwargs = {"scaling": 0.25, "sra_layout": LAYOUTS}
    # Every row read-only and done after this layer: the pass stops, with this layer recorded.
    recorders = [ReadoutRecorder(layout, until=layer + 1) for layout in LAYOUTS]
    with pytest.raises(ReadoutComplete):
        fn(module(layer), *qkv, padded_mask(n, PADS), sra_readout=recorders, **kwargs)
    assert all(list(recorder.mass) == [layer] for recorder in recorders)
    # One row still needs a later layer, or one row has no readout: the pass goes on.
    for rows in (
        [ReadoutRecorder(LAYOUTS[0], until=layer + 1), ReadoutRecorder(LAYOUTS[1], until=layer + 2), None],
        [*(ReadoutRecorder(layout, until=layer + 1) for layout in LAYOUTS[:2]), None],
    ):
        output, _ = fn(module(layer), *qkv, padded_mask(n, PADS), sra_readout=rows, **kwargs)
        plain, _ = fn(module(layer), *qkv, padded_mask(n, PADS), **kwargs)
        torch.testing.assert_close(output, plain)


def test_engine_read_runs_the_prompt_only_to_the_band_s_end(tiny_tokenizer, make_tiny_model):
    from sra_rag import SRAEngine
    from sra_rag.generation.request import Request

    bias = tuple((0.0, 0.0, 5.0) for _ in range(4))
    profile = ReadoutProfile(model="tiny", num_layers=4, layers=(0, 2), positions=(0.0, 0.5, 1.0), bias=bias)
    engine = SRAEngine(make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, readout_profile=profile)
    layout = TextLayout(question=QUESTION, documents=DOCUMENTS)
    calls = []
    layers = engine.model.model.layers
    hooks = [
        layer.register_forward_pre_hook(lambda *_, index=index: calls.append(index))
        for index, layer in enumerate(layers)
    ]
    try:
        full = engine.complete(PROMPT, max_new_tokens=1, layout=layout)
        assert calls == [0, 1, 2, 3]
        calls.clear()
        read = engine.read(PROMPT, layout=layout)
        assert calls == [0, 1]  # layer 1 stops in its attention; 2, 3 and the output layer never run
    finally:
        for hook in hooks:
            hook.remove()
    assert read.text == "" and read.completion_tokens == 0 and read.finish_reason == "stop"
    assert read.prompt_tokens == full.prompt_tokens and read.prefill_seconds > 0
    assert read.document_attention is not None and full.document_attention is not None
    assert read.document_attention.readout.num_layers == 2 and read.document_attention.calibrated
    assert read.document_attention.scores == pytest.approx(full.document_attention.scores, abs=1e-5)
    # Concurrent reads and generations: reads are prefilled apart from generating rows, results as alone.
    alone = engine.complete("Hello there", max_new_tokens=4)
    streams = [engine.submit(engine.request("Hello there", max_new_tokens=4))]
    request = engine.request(PROMPT, max_new_tokens=1, layout=layout)
    streams += [engine.submit(Request(**{**request.__dict__, "read_only": True})) for _ in range(3)]
    for stream in streams:
        for _ in stream:
            pass
    assert streams[0].text == alone.text
    for stream in streams[1:]:
        assert stream.text == "" and stream.document_attention is not None
        assert stream.document_attention.scores == pytest.approx(read.document_attention.scores, abs=1e-4)
    with pytest.raises(ValueError, match="layout marks a question"):
        engine.read(PROMPT)
    with pytest.raises(ValueError, match="read-only request needs"):
        Request(**{**engine.request("Hello", max_new_tokens=1).__dict__, "read_only": True})


def test_engine_attribute_reads_the_reply_s_rows(tiny_engine):
    from sra_rag import ContextWindowExceededError

    reply = "The lighthouse keeper's door is green."
    layout = TextLayout(documents=DOCUMENTS)
    attention = tiny_engine.attribute(PROMPT, reply, layout=layout, sra=SRAConfig.preset("off"))
    # The same as a plain forward pass over the prompt's tokens and the reply's, recording the
    # reply's rows (from its first token to the end) on the prompt's document spans.
    request = tiny_engine.request(PROMPT, max_new_tokens=1, layout=layout)
    reply_ids = tiny_engine.tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = [*request.prompt_ids, *reply_ids]
    spans = PromptLayout(len(ids), (len(request.prompt_ids), len(ids)), request.layout.documents)
    recorder = ReadoutRecorder(spans)
    with torch.no_grad():
        tiny_engine.model(
            torch.tensor([ids]), sra_config=SRAConfig.preset("off"), sra_layout=spans, sra_readout=recorder
        )
    expected = tiny_engine.readout_profile.score(recorder.readout())
    assert attention.scores == pytest.approx(expected.scores, abs=1e-5)
    assert attention.readout.layout == spans and len(attention.scores) == len(DOCUMENTS)
    question = tiny_engine.read(PROMPT, layout=TextLayout(question=QUESTION, documents=DOCUMENTS))
    assert question.document_attention is not None
    assert attention.scores != pytest.approx(question.document_attention.scores, abs=1e-3)
    with pytest.raises(ValueError, match="reply must be a non-empty string"):
        tiny_engine.attribute(PROMPT, "  ", layout=layout)
    with pytest.raises(ValueError, match="marks at least one document"):
        tiny_engine.attribute(PROMPT, reply)
    with pytest.raises(ContextWindowExceededError):
        tiny_engine.attribute(PROMPT, "green " * tiny_engine.context_window, layout=layout)
