"""The ``sra-rag`` command line, end to end on the embedded models (in-process with typer's
CliRunner, so the engine loaded by the session fixture is reused)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sra_rag.cli import build_app
from sra_rag.rag.citing import cited_numbers

pytestmark = pytest.mark.slow

LEAVE = (
    "Every full-time employee of Quillfeather receives 27 days of paid leave per year. "
    "Leave in the Storm Fortnight needs approval from Imelda Farrow."
)
FERRY = "The ferry to Skelda leaves Pier 3 at 08:30 and 16:00."


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "leave.md").write_text(LEAVE)
    (folder / "ferry.txt").write_text(FERRY)
    (folder / "broken.txt").write_bytes(b"\x00\x01\x02 binary")
    return folder


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(build_app(), list(args), catch_exceptions=False)


def test_ingest_ask_and_reingest(runner: CliRunner, docs: Path, tmp_path: Path, embedded_engine) -> None:
    store = str(tmp_path / "store")
    first = invoke(runner, "ingest", str(docs), "--store", store, "--no-progress")
    assert first.exit_code == 0, first.output
    assert "2 new" in first.stderr and "2 chunks added" in first.stderr
    assert "Skipped" in first.stderr and "broken.txt: looks binary" in first.stderr

    again = invoke(runner, "ingest", str(docs), "--store", store, "--no-progress")
    assert again.exit_code == 0 and "2 unchanged" in again.stderr and "0 chunks added" in again.stderr

    asked = invoke(
        runner, "ask", "When does the ferry leave?", "--store", store, "--top-k", "2", "--max-new-tokens", "4",
        "--preset", "demo", "--beta-outer", "2",
    )  # fmt: skip
    assert asked.exit_code == 0, asked.output
    answer, sources = asked.stdout.split("\nSources:")
    assert answer.strip()  # the streamed answer comes first
    heading, *lines = sources.splitlines()
    assert "how much the question read each source" in heading
    # Each source with its attention score beside it.
    assert [re.fullmatch(r"[+-]\d+\.\d\d  (.*)", line.strip()).group(1) for line in lines] == [
        "[1] docs/ferry.txt#0",
        "[2] docs/leave.md#0",
    ]
    assert "2 chunks in one prompt" in asked.stderr and "0 dropped" in asked.stderr

    ordered = invoke(
        runner, "ask", "When does the ferry leave?", "--store", store, "--max-new-tokens", "2", "--order", "last"
    )
    assert ordered.exit_code == 0, ordered.output
    scores = [float(line.split()[0]) for line in ordered.stdout.split("\nSources:")[1].splitlines()[1:]]
    assert len(scores) == 2 and "2 chunks in one prompt" in ordered.stderr  # both sources kept, re-numbered
    grouped = invoke(
        runner, "ask", "When does the ferry leave?", "--store", store, "--max-new-tokens", "2", "--group-by-source"
    )
    assert grouped.exit_code == 0 and "[2] docs/" in grouped.stdout, grouped.output

    attributed = invoke(
        runner, "ask", "When does the ferry leave?", "--store", store, "--max-new-tokens", "6", "--attribute"
    )
    assert attributed.exit_code == 0, attributed.output
    heading, *lines = attributed.stdout.split("\nSources:")[1].splitlines()
    assert "the question, then the answer" in heading
    rows = [re.fullmatch(r"([+-]\d+\.\d\d) +([+-]\d+\.\d\d)  \[(\d)\] .*", line.strip()) for line in lines[:2]]
    assert all(rows), lines
    question_top, answer_top = (max(rows, key=lambda row: float(row.group(col))).group(3) for col in (1, 2))
    assert ("Check the answer" in attributed.stdout) is (question_top != answer_top)

    # Room to end the answer: one that cites no source gets the model's pick appended, unless --cite off.
    ask = ("ask", "When does the ferry leave?", "--store", store, "--max-new-tokens", "48")
    cited, plain = invoke(runner, *ask), invoke(runner, *ask, "--cite", "off")
    assert cited.exit_code == plain.exit_code == 0, cited.output + plain.output
    cited_text, plain_text = (result.stdout.split("\nSources:")[0] for result in (cited, plain))
    assert cited_text.startswith(plain_text.rstrip("\n")) and cited_numbers(cited_text, 2)
    assert cited_text == plain_text or re.fullmatch(r" \(Document \[[12]\]\)\n", cited_text[len(plain_text) - 1 :])

    no_sra = invoke(runner, "ask", "Who approves leave?", "--store", store, "--max-new-tokens", "2", "--no-sra")
    assert no_sra.exit_code == 0 and "[1] docs/leave.md" in no_sra.stdout

    sampled = invoke(
        runner, "ask", "Who approves leave?", "--store", store, "--max-new-tokens", "3", "--temperature", "0.7",
        "--top-p", "0.9", "--top-k-tokens", "20", "--min-p", "0.05", "--repetition-penalty", "1.1", "--seed", "4",
    )  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    bad = invoke(runner, "ask", "Who approves leave?", "--store", store, "--top-p", "nan")
    assert bad.exit_code == 1 and "top_p=nan" in bad.stderr and "Traceback" not in bad.output


def test_ask_errors_are_messages_not_tracebacks(runner: CliRunner, tmp_path: Path, docs: Path) -> None:
    missing = invoke(runner, "ask", "Anything?", "--store", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "Error: No document store" in missing.stderr
    assert not (tmp_path / "nowhere").exists()

    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    store = str(tmp_path / "store")
    assert invoke(runner, "ingest", str(empty_folder), "--store", store, "--no-progress").exit_code == 1
    empty = invoke(runner, "ask", "Anything?", "--store", store)
    assert empty.exit_code == 1 and "is empty" in empty.stderr

    bad_order = invoke(runner, "ask", "Anything?", "--store", store, "--order", "middle")
    assert bad_order.exit_code == 1 and "--order must be one of retrieved, first, last, ends" in bad_order.stderr
    bad_preset = invoke(runner, "ask", "Anything?", "--store", store, "--preset", "nope")
    assert bad_preset.exit_code == 1 and "unknown SRA preset 'nope'" in bad_preset.stderr
    bad_value = invoke(runner, "ask", "Anything?", "--store", store, "--alpha-outer", "-1")
    assert bad_value.exit_code == 1 and "alpha_outer" in bad_value.stderr

    assert invoke(runner, "ingest", str(tmp_path / "missing"), "--store", store).exit_code == 1


def test_ask_too_long_for_the_window_gives_the_numbers(
    runner: CliRunner, docs: Path, tmp_path: Path, embedded_engine
) -> None:
    store = str(tmp_path / "store")
    assert invoke(runner, "ingest", str(docs), "--store", store, "--no-progress").exit_code == 0
    window = embedded_engine.context_window
    result = invoke(runner, "ask", "Who approves leave?", "--store", store, "--max-new-tokens", str(window - 50))
    assert result.exit_code == 1
    assert f"context window of {window}" in result.stderr and "Not even one of the 2 chunks fits" in result.stderr


def test_summarize_one_pass(runner: CliRunner, docs: Path) -> None:
    result = invoke(runner, "summarize", str(docs / "leave.md"), "--max-new-tokens", "4", "--preset", "demo")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert "[one pass; document" in result.stderr
    missing = invoke(runner, "summarize", str(docs / "nope.md"))
    assert missing.exit_code == 1 and "No such file" in missing.stderr


def test_demo_ingests_samples_and_answers_with_sources(runner: CliRunner, tmp_path: Path, embedded_engine) -> None:
    store = str(tmp_path / "store")
    result = invoke(runner, "demo", "--store", store, "--max-new-tokens", "2", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Sources:") == 2 and "[1] samples/" in result.stdout
    assert "11 new" in result.stderr
    again = invoke(runner, "demo", "--store", store, "--max-new-tokens", "1", "--top-k", "1")
    assert again.exit_code == 0 and "11 unchanged" in again.stderr and "0 chunks added" in again.stderr


def test_ingest_names_links_out_of_the_folder_and_follows_them_only_when_asked(
    runner: CliRunner, docs: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "accounts.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash")
    (docs / "accounts.txt").symlink_to(secret)
    kept = invoke(runner, "ingest", str(docs), "--store", str(tmp_path / "store"), "--no-progress")
    assert kept.exit_code == 0
    assert f"Skipped {docs / 'accounts.txt'}: is a symbolic link to {secret}, outside {docs}" in kept.stderr
    assert "2 new" in kept.stderr
    followed = invoke(
        runner, "ingest", str(docs), "--store", str(tmp_path / "other"), "--no-progress", "--follow-symlinks"
    )
    assert followed.exit_code == 0 and "outside" not in followed.stderr and "3 new" in followed.stderr
