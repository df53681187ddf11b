"""The example scripts, end to end in subprocesses on the embedded models, with small inputs (a
pre-ingested sample store, short answers) to stay fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled samples ingested once, so each script only checks that nothing changed."""
    from sra_rag.rag.ingest import ingest
    from sra_rag.rag.samples import samples_path
    from sra_rag.rag.store import ChromaStore

    path = tmp_path_factory.mktemp("examples") / "store"
    ingest(ChromaStore.open(path), samples_path(), progress=False)
    return path


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def answer_and_sources(stdout: str) -> tuple[str, list[str]]:
    before, sources = stdout.split("\nSources:\n")
    return before, sources.split()


@pytest.mark.parametrize(
    ("script", "requires"),
    [
        ("chroma_reader.py", None),
        ("llamaindex_reader.py", "llama_index.llms.sra"),
        ("langchain_reader.py", "langchain_sra"),
    ],
)
def test_reader_examples_answer_with_numbered_sources(script: str, requires: str | None, sample_store: Path) -> None:
    if requires:
        pytest.importorskip(requires, reason=f"install the adapter: pip install -e integrations/... ({requires})")
    question = "When does the ferry to Skelda leave?"
    result = run_example(script, question, "--store", str(sample_store), "--top-k", "2", "--max-new-tokens", "3")
    before, sources = answer_and_sources(result.stdout)
    assert "11 unchanged" in before and "0 chunks added" in before  # re-ingest embedded nothing
    assert sources[0] == "[1]" and "samples/marrowick_transport.md" in sources


def test_summarize_example_reads_a_file_in_one_pass(tmp_path: Path) -> None:
    document = tmp_path / "note.md"
    document.write_text("The Stormglass S4 barometer has an e-ink display and costs 289 crowns. It replaced the S3.")
    result = run_example("summarize.py", str(document), "--max-new-tokens", "4")
    summary, _, footer = result.stdout.rpartition("\n\n[")
    assert summary.strip()
    assert footer.startswith("one pass:") and "document tokens" in footer


@pytest.mark.parametrize(
    ("script", "requires", "built"),
    [
        ("llamaindex_index.py", "llama_index.llms.sra", "Indexed 11 documents."),
        ("langchain_vector_store.py", "langchain_sra", "Embedded "),
    ],
)
def test_framework_native_examples_embed_with_the_shipped_model(script: str, requires: str, built: str) -> None:
    pytest.importorskip(requires, reason=f"install the adapter: pip install -e integrations/... ({requires})")
    result = run_example(script, "When does the ferry to Skelda leave?", "--top-k", "2", "--max-new-tokens", "3")
    before, sources = answer_and_sources(result.stdout)
    assert before.startswith(built)
    assert sources[0] == "[1]" and any(source.endswith("marrowick_transport.md") for source in sources)
