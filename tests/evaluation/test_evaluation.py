"""The evaluation harness: seeded suites with answers planted where their labels say, scoring,
Wilson intervals, setting strings, reports and plots, the settings search, and the CLI end to end."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sra_rag.config import SAFE_DEFAULTS, SRAConfig
from sra_rag.engine import TextStream
from sra_rag.evaluation import report, runner, suites, tune
from sra_rag.evaluation.runner import Record
from sra_rag.evaluation.suites import Answer, Example
from sra_rag.generation.streaming import Channel, Update
from sra_rag.rag.citing import cited_numbers
from sra_rag.rag.reader import DEFAULT_STOP

TOKEN_SUITES = sorted(set(suites.SUITES) - suites.SIZED_BY_DOCUMENTS)


def words(text: str) -> int:
    """A cheap stand-in for a tokenizer: whitespace-separated words."""
    return len(text.split())


def chars(text: str) -> int:
    """Another stand-in: about four characters per token."""
    return len(text) // 4 + 1


@pytest.mark.parametrize("suite", TOKEN_SUITES)
def test_suites_are_seeded_and_deterministic(suite: str) -> None:
    first = suites.build(suite, chars, [300, 600], [0.0, 0.5, 1.0], 2, seed=3)
    again = suites.build(suite, chars, [300, 600], [0.0, 0.5, 1.0], 2, seed=3)
    other = suites.build(suite, chars, [300, 600], [0.0, 0.5, 1.0], 2, seed=4)
    assert first == again
    assert [e.answers for e in first] != [e.answers for e in other]
    assert len({e.id for e in first}) == len(first)
    for example in first:
        content = example.messages[-1]["content"]
        assert content.rstrip().endswith(example.question)
        assert all(answer.text in content for answer in example.answers)
        # The context is about the asked size (the template and question add a little).
        assert 0.9 * example.length <= chars(content) <= 1.2 * example.length + 80


@pytest.mark.parametrize("suite", TOKEN_SUITES)
def test_a_cells_prompts_do_not_depend_on_the_rest_of_the_grid(suite: str) -> None:
    # Runs over different grids (1k-2k today, 4k added later) must be comparable cell by cell.
    small = suites.build(suite, chars, [300], [0.5], 2, seed=5)
    large = suites.build(suite, chars, [200, 300, 600], [0.0, 0.5, 1.0], 2, seed=5)
    cell = [e for e in large if e.length == 300 and e.depth in (0.5, None)]
    if suite == "summary":  # one report per length carries every depth
        small = suites.build(suite, chars, [300], [0.0, 0.5, 1.0], 2, seed=5)
    assert small == cell


def _relative_offset(content: str, needle: str, start_marker: str, end_marker: str) -> float:
    start = content.index(start_marker) + len(start_marker)
    end = content.rindex(end_marker)
    return (content.index(needle) - start) / (end - start)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_passkey_needle_sits_at_its_depth(depth: float) -> None:
    (example,) = suites.passkey(words, [800], [depth], 1, seed=0)
    content = example.messages[0]["content"]
    offset = _relative_offset(content, "The pass key is", "quiz you about it.\n\n", suites.PASSKEY_QUESTION)
    assert offset == pytest.approx(depth, abs=0.05)
    assert example.answers[0].position == depth


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_kv_and_qa_gold_items_sit_at_their_positions(depth: float) -> None:
    (pairs,) = suites.kv(words, [600], [depth], 1, seed=1)
    content = pairs.messages[0]["content"]
    key = re.search(r'Key: "([0-9a-f-]+)"', content).group(1)
    lines = [line for line in content.splitlines() if line.startswith('  "')]
    gold = next(i for i, line in enumerate(lines) if line.startswith(f'  "{key}"'))
    assert gold / (len(lines) - 1) == pairs.answers[0].position == pytest.approx(depth, abs=0.01)
    assert lines[gold].split('"')[3].startswith(pairs.answers[0].text)

    (qa,) = suites.qa(words, [600], [depth], 1, seed=1)
    content = qa.messages[0]["content"]
    person = re.search(r"In which town was (.+?) born\?", content).group(1)
    documents = re.split(r"\n\nDocument \[\d+\]\n", "\n\n" + content.split("below.\n\n", 1)[1])[1:]
    gold = next(i for i, doc in enumerate(documents) if doc.startswith(person))
    assert gold / (len(documents) - 1) == qa.answers[0].position == pytest.approx(depth, abs=0.05)
    assert "born in" in documents[gold] and qa.answers[0].text in documents[gold]


def test_summary_plants_one_fact_per_depth_in_order() -> None:
    (example,) = suites.summary(words, [900], [0.1, 0.5, 0.9], 1, seed=2)
    content = example.messages[0]["content"]
    offsets = [_relative_offset(content, a.text, "meeting.\n\n", suites.SUMMARY_INSTRUCTION) for a in example.answers]
    assert offsets == pytest.approx([0.1, 0.5, 0.9], abs=0.05)
    assert [a.position for a in example.answers] == [0.1, 0.5, 0.9]


def test_scorer_accepts_right_and_rejects_wrong_answers() -> None:
    example = Example("qa", "x", [{"role": "user", "content": "q"}], "q", (Answer("Velmora", 0.5),), 100, 0.5, 8)
    assert example.score("The town is  VELMORA.") == [True]
    assert example.score("The town is Velmoran") == [True]  # containment; town names never nest in one prompt
    assert example.score("Vel mora") == [False]
    assert example.score("") == [False]
    facts = Example("summary", "y", [], "q", (Answer("1234", 0.1), Answer("5678", 0.9)), 100, None, 8)
    assert facts.score("It costs 5678 crowns.") == [False, True]


def test_scorer_with_choices_takes_the_first_town_named() -> None:
    example = Example(
        "qa", "x", [], "q", (Answer("Velmora", 0.5),), 100, 0.5, 40,
        choices=("Kalomi", "Velmora", "Torbi"), ignore=("Torbi Kalomi",),
    )  # fmt: skip
    assert example.score("The answer to this question is:\n\nVelmora") == [True]  # a lead-in line is fine
    assert example.score("Torbi Kalomi was born in the town of Velmora.") == [True]  # the subject is ignored
    assert example.score("Document [3]\nKalomi\n\nOr maybe Velmora.") == [False]  # a wrong town came first
    assert example.score("Velmoran") == [False]  # whole words only
    assert example.score("I do not know.") == [False]
    (qa,) = suites.qa(words, [600], [0.5], 1, seed=1)
    content = qa.messages[0]["content"]
    assert qa.answers[0].text in qa.choices and all(f"town of {town}." in content for town in qa.choices)
    assert len(set(qa.choices)) == len(qa.choices) == content.count("Document [")
    assert qa.ignore[0] in qa.question and not qa.stop


def test_reader_suite_ranks_the_gold_document_where_its_depth_says() -> None:
    examples = suites.build("reader", words, [4096], [0.0, 0.5, 1.0], 2, seed=3, documents=[1, 5, 30])
    assert examples == suites.build("reader", chars, [], [0.0, 0.5, 1.0], 2, seed=3, documents=[1, 5, 30])
    other = suites.build("reader", words, [], [0.0, 0.5, 1.0], 2, seed=4, documents=[1, 5, 30])
    assert [e.answers for e in examples] != [e.answers for e in other]
    assert len(examples) == 3 * 3 * 2 and len({e.id for e in examples}) == len(examples)
    for example in examples:
        sources = [chunk.source for chunk in example.chunks]
        assert len(sources) == len(set(sources)) == example.length  # one source per document
        gold = round(example.depth * (example.length - 1))
        assert example.cite == sources[gold]
        assert f"{example.ignore[0]} was born" in example.chunks[gold].text
        assert f"town of {example.answers[0].text}." in example.chunks[gold].text
        assert example.answers[0].position == pytest.approx(gold / max(1, example.length - 1))
        assert example.choices == tuple(re.search(r"town of (\w+)\.", c.text).group(1) for c in example.chunks)
        assert example.question == f"In which town was {example.ignore[0]} born?" and example.messages == []
        assert re.fullmatch(r"(registry|archive/people|parish-records)/[\w./-]+\.(txt|md)", sources[0])
    # A cell's prompts do not depend on the rest of the grid.
    alone = suites.build("reader", words, [], [0.5], 2, seed=3, documents=[5])
    assert alone == [e for e in examples if e.length == 5 and e.depth == 0.5]


@pytest.mark.parametrize("documents", [[0], [101], [1024], []])
def test_reader_suite_sizes_are_document_counts(documents: list[int]) -> None:
    with pytest.raises(ValueError, match="numbers of retrieved documents from 1 to 100"):
        suites.build("reader", words, [1024], [0.5], documents=documents)


@pytest.mark.parametrize(
    ("output", "number", "expected"),
    [
        ("Ada was born in Kalomi [3].", 3, True),
        ("Kalomi [1, 3]", 3, True),
        ("Kalomi [2][3]", 3, True),
        ("Kalomi [13]", 3, False),
        ("Kalomi (3)", 3, False),
        ("[3] registry/record-1.txt", 1, False),
        ("", 1, False),
    ],
)
def test_a_source_number_in_brackets_is_a_citation(output: str, number: int, expected: bool) -> None:
    assert (number in cited_numbers(output)) is expected


class FirstDocumentEngine:
    """Stands in for the engine under the reader: a reader that always answers from the first
    document of its prompt and cites it as [1]. Records every ``stream`` call."""

    context_window = 100_000
    defaults = SAFE_DEFAULTS

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict]] = []

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(chars(message["content"]) for message in messages)

    def stream(self, messages: list[dict[str, str]], **kwargs) -> TextStream:
        self.calls.append((messages, kwargs))
        prompt = "\n".join(message["content"] for message in messages)
        town = re.search(r"town of (\w+)", prompt).group(1)
        text = f"Born in the town of {town} [1]."
        channel = Channel()
        channel.put(Update(text, [1], prefill_seconds=0.5, finish_reason="stop"))
        return TextStream(self.count_tokens(messages), channel)


def test_reader_examples_run_through_the_reader_as_users_run_it() -> None:
    engine = FirstDocumentEngine()
    examples = suites.build("reader", words, [], [0.0, 1.0], 1, seed=0, documents=[1, 4])
    setting = runner.parse_setting("recommended")
    records = runner.run(engine, examples, [runner.parse_setting("off"), setting], progress=False)
    assert len(engine.calls) == len(records) == 8
    for example, (messages, kwargs) in zip([e for e in examples for _ in range(2)], engine.calls, strict=True):
        prompt = "\n".join(message["content"] for message in messages)
        assert all(chunk.text in prompt for chunk in example.chunks)  # every document, whole
        assert example.question in messages[-1]["content"]  # the question comes last
        assert kwargs["stop"] == DEFAULT_STOP and kwargs["max_new_tokens"] == suites.READER_MAX_NEW_TOKENS
    _, off_call = engine.calls[0]
    _, recommended_call = engine.calls[1]
    assert off_call["sra"] == SRAConfig.preset("off") and recommended_call["sra"] == setting.config
    # The question travels as layout data; the preset's own tail mode decides what SRA does with it.
    assert examples[0].question in recommended_call["layout"].question and setting.config.tail == "question"
    # Answering from the first document is right, and cites the gold source, only when it is the gold one.
    for record in records:
        first = record.length == 1 or record.depth == 0.0
        assert record.hits == [first] and record.cited is first
        assert record.prompt_tokens > 0 and record.prefill_s == 0.5
    table = report.markdown_table(records)
    assert "| reader | 4 docs (" in table and "| 2 | 50 [9-91] | 50 [9-91] (+0) |" in table
    citations = report.citation_table(records)
    assert "| reader | 1 docs | 100 [34-100] n=2 | 100 [34-100] n=2 |" in citations
    assert "| reader | 4 docs | 50 [9-91] n=2 | 100 [21-100] n=1 |" in citations


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"lengths": [10]}, "lengths"),
        ({"depths": [1.5]}, "depths"),
        ({"per_cell": 0}, "per_cell"),
    ],
)
def test_suites_reject_bad_grids(bad: dict, message: str) -> None:
    arguments = {"lengths": [200], "depths": [0.5], "per_cell": 1} | bad
    with pytest.raises(ValueError, match=message):
        suites.passkey(words, **arguments)
    with pytest.raises(ValueError, match="unknown suite"):
        suites.build("trivia", words, [200], [0.5])


@pytest.mark.parametrize(
    ("hits", "total", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_known_values(hits: int, total: int, low: float, high: float) -> None:
    assert report.wilson_interval(hits, total) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_rejects_impossible_counts() -> None:
    assert report.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="hits"):
        report.wilson_interval(3, 2)


def test_parse_setting_presets_overrides_and_tail() -> None:
    setting = runner.parse_setting("paper:inner=false,beta_outer=2,outer_target=attention,tail=question")
    assert setting.config == SRAConfig(inner=False, beta_outer=2.0, outer_target="attention", tail="question")
    assert runner.parse_setting("paper").config == SRAConfig() and runner.parse_setting("paper").config.tail == "fixed"
    layered = runner.parse_setting("paper:outer_layers=0.5/1,renormalize=true").config
    assert layered.outer_layers == (0.5, 1.0) and layered.renormalize
    assert runner.parse_setting("off").is_baseline
    assert runner.parse_setting("off:tail=question").is_baseline  # a tail mode does not turn SRA on
    settings = runner.parse_settings(["paper", "paper", "demo"])
    assert [s.name for s in settings] == ["off", "paper", "demo"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "non-empty"),
        ("best", "unknown SRA preset"),
        ("paper:gamma=2", "unknown SRA setting 'gamma'"),
        ("paper:inner=maybe", "true or false"),
        ("paper:beta_outer=-1", "not a valid SRAConfig"),
        ("paper:tail=half", "(?s)not a valid SRAConfig.*'fixed' or 'question'"),
        ("paper:beta_outer", "expected key=value"),
        ("paper:outer_layers=0.7/0.2", "not a valid SRAConfig"),
    ],
)
def test_parse_setting_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.parse_setting(spec)


def fake_records() -> list[Record]:
    """Two settings on four passkey prompts: ``off`` finds 2 of 4, ``paper`` 3 of 4 and is twice as slow."""
    records = []
    for index, depth in enumerate([0.0, 0.3, 0.6, 1.0]):
        for setting, hit, seconds in [("off", index < 2, 1.0), ("paper", index < 3, 2.0)]:
            records.append(
                Record(
                    "passkey", f"p{index}", setting, 1024, depth, 1040, "out", [hit], [depth], seconds, seconds + 0.1
                )
            )
    return records


def test_likelihood_table_pairs_each_prompt_with_its_baseline(tmp_path: Path) -> None:
    records = fake_records()
    assert report.likelihood_table(records) == ""  # nothing measured
    # paper moves the answer's log-probability by +1, +1, +1 and -1 nats on the four prompts
    for record in records:
        index = int(record.example_id[1:])
        record.answer_logprob = -5.0 - index + (0.0 if record.setting == "off" else (1.0 if index < 3 else -1.0))
    table = report.likelihood_table(records)
    half = report.Z_95 * statistics.stdev([1, 1, 1, -1]) / 2
    assert f"| passkey | 1024 | +0.50 [{0.5 - half:+.2f}, {0.5 + half:+.2f}] 3/4 |" in table
    assert table in report.write_report(records, tmp_path, plots=False).read_text()


def test_paired_table_counts_answers_gained_and_lost(tmp_path: Path) -> None:
    records = fake_records()  # paper gains prompt p2 (0 -> 1) and matches off on the other three
    records[5].output = "another reply"  # p2 under paper
    table = report.paired_table(records)
    bound = 100 * report.wilson_interval(0, 4)[1]
    assert f"| passkey | 1024 | +25: +1 -0 of 4 (lost <= {bound:.0f}%); 1 differ |" in table
    records[3].hits = [False]  # paper now also loses p1
    assert "| passkey | 1024 | +0: +1 -1 of 4 (lost <= 70%); 1 differ |" in report.paired_table(records)
    assert report.paired_table(records) in report.write_report(records, tmp_path, plots=False).read_text()
    assert report.paired_table([record for record in records if record.setting == "off"]) == ""


def test_scores_table_and_ratios() -> None:
    records = fake_records()
    table = report.scores(records)
    assert table[("passkey", "off", 1024)] == report.Score(2, 4)
    assert table[("passkey", "paper", 1024)].accuracy == 0.75
    by_position = report.scores(records, by_position=True)
    assert by_position[("passkey", "paper", 1024, 0.9)] == report.Score(0, 1)
    assert report.prefill_ratios(records, "off") == {"off": 1.0, "paper": 2.0}
    markdown = report.markdown_table(records)
    assert "| passkey | 1024 (1040) | 4 | 50 [15-85] | 75 [30-95] (+25) |" in markdown
    assert "`paper` 2.00x" in markdown


def test_write_report_writes_table_json_and_plots(tmp_path: Path) -> None:
    path = report.write_report(fake_records(), tmp_path)
    assert path.read_text().startswith("# SRA evaluation")
    assert len(json.loads((tmp_path / "results.json").read_text())) == 8
    assert report.load_records(tmp_path / "results.json") == fake_records()
    for name in ["heatmap_passkey.png", "positions_passkey.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in path.read_text()


def test_rank_puts_the_safest_setting_first() -> None:
    records = fake_records()
    for record in [r for r in records if r.setting == "paper"]:
        records.append(Record(**(record.to_dict() | {"setting": "harmful", "hits": [False]})))
    ranking = tune.rank(records)
    assert [r.setting for r in ranking] == ["paper", "harmful"]
    assert ranking[0].mean_gain == pytest.approx(25.0) and ranking[0].cost == pytest.approx(2.0)
    assert ranking[1].worst_gain == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="no baseline"):
        tune.rank(records, baseline="stock")


def test_search_space_candidates_are_valid_and_distinct() -> None:
    specs = tune.candidates()
    assert len(specs) == len(set(specs))
    # Outer-only and both: every dimension; inner-only: no outer target and no layer band.
    assert len(specs) == 2 * (2 * 3 * 3 * 2 * 2 * 3) + 2 * 3 * 3 * 2
    assert all(runner.parse_setting(spec).config.enabled for spec in specs)
    assert tune.candidates(5, seed=1) == tune.candidates(5, seed=1) != tune.candidates(5, seed=2)


def test_dev_and_test_splits_share_no_prompt() -> None:
    class Counter:
        count_tokens = staticmethod(words)

    dev = tune._examples(Counter(), ["passkey", "qa"], [300], [0.0, 1.0], 2, seed=0)
    test = tune._examples(Counter(), ["passkey", "qa"], [300], [0.0, 1.0], 2, seed=tune.TEST_SEED_OFFSET)
    assert len(dev) == len(test) == 8
    assert not {a.text for e in dev for a in e.answers} & {a.text for e in test for a in e.answers}


def test_recommended_preset_is_a_valid_config() -> None:
    config = SRAConfig.preset("recommended")
    assert isinstance(config, SRAConfig)
    assert config == SRAConfig(**config.model_dump())
    assert config.enabled and config != SRAConfig.preset("paper")
    # The preset carries its question-aware tail itself: the harness, the reader and the CLI run it alike.
    assert runner.parse_setting("recommended").config == config and config.tail == "question"


def test_eval_module_reexports_the_evaluation_api() -> None:
    import sra_rag.eval

    import sra_rag.evaluation

    assert sra_rag.eval.wilson_interval is sra_rag.evaluation.wilson_interval
    assert set(sra_rag.evaluation.__all__) <= set(dir(sra_rag.eval))


@pytest.mark.slow
def test_cli_eval_quick_runs_end_to_end(embedded_engine, tmp_path: Path) -> None:
    from sra_rag.cli import build_app

    out = tmp_path / "eval"
    arguments = ["eval", "off", "paper:inner=false,beta_outer=2,tail=question", "--suite", "passkey", "--suite", "qa"]
    arguments += ["--length", "200", "--depth", "0.5", "-n", "1", "--quick", "--out", str(out), "--no-progress"]
    arguments += ["--likelihood"]
    result = CliRunner().invoke(build_app(), arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = report.load_records(out / "results.json")
    assert report.load_records(out / "records.jsonl") == records  # written as the run went
    assert {(r.suite, r.setting) for r in records} == {
        (suite, setting)
        for suite in ["passkey", "qa"]
        for setting in ["off", "paper:inner=false,beta_outer=2,tail=question"]
    }
    assert all(r.prompt_tokens > 200 and r.output for r in records)
    assert all(r.answer_logprob is not None and r.answer_logprob < 0 for r in records)
    assert "Change of the answer's log-probability" in result.output
    # A 200-token haystack is easy: stock attention finds the pass key.
    assert next(r for r in records if r.suite == "passkey" and r.setting == "off").hits == [True]
    assert "| passkey | 200 (" in result.output
    assert (out / "heatmap_qa.png").exists() and (out / "positions_passkey.png").exists()


@pytest.mark.slow
def test_cli_eval_runs_the_reader_suite_on_the_embedded_model(embedded_engine, tmp_path: Path) -> None:
    from sra_rag.cli import build_app

    arguments = ["eval", "recommended", "--suite", "reader", "--documents", "1", "--documents", "3"]
    arguments += ["--depth", "1", "-n", "1", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    result = CliRunner().invoke(build_app(), arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = report.load_records(tmp_path / "results.json")
    assert sorted((r.length, r.setting) for r in records) == [
        (1, "off"),
        (1, "recommended"),
        (3, "off"),
        (3, "recommended"),
    ]
    one, three = (next(r for r in records if r.length == n and r.setting == "off") for n in (1, 3))
    assert 0 < one.prompt_tokens < three.prompt_tokens and all(isinstance(r.cited, bool) for r in records)
    assert "| reader | 3 docs (" in result.output and "Replies citing the gold source" in result.output


@pytest.mark.slow
def test_cli_tune_quick_runs_end_to_end(embedded_engine, tmp_path: Path) -> None:
    from sra_rag.cli import build_app

    arguments = ["tune", "--suite", "passkey", "--length", "200", "--depth", "0.5", "--candidates", "1"]
    arguments += ["--test-examples", "1", "--top-k", "1", "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(build_app(), arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dev = report.load_records(tmp_path / "tune_dev.json")
    test = report.load_records(tmp_path / "tune_test.json")
    assert len(dev) == 2 and {r.setting for r in dev} >= {"off"}
    finalist = next(r.setting for r in dev if r.setting != "off")
    assert {r.setting for r in test} == {"off", finalist, *tune.REFERENCE}
    assert all(r.output for r in dev + test)
    assert "Best on test" in (tmp_path / "tune.md").read_text()
    assert (tmp_path / "tune_gain_cost.png").exists()


def test_cli_rejects_unknown_suite_and_setting(tmp_path: Path) -> None:
    from sra_rag.cli import build_app

    result = CliRunner().invoke(build_app(), ["eval", "paper:gamma=1", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "gamma" in result.output
    result = CliRunner().invoke(build_app(), ["eval", "--suite", "trivia", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "trivia" in result.output
    result = CliRunner().invoke(build_app(), ["tune", "--reference", "paper:gamma=1", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "gamma" in result.output
