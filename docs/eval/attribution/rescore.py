"""Run from the repository root:
python docs/eval/attribution/rescore.py MODEL SEED FOLDER [DOCUMENTS ...]

Re-score a stored attribution run's answers with the citation markers taken out of the answer text
("Document [2]", "[2]", "(Document [2])") before the answer's read-only pass, so the answer's readout
rows are its words only: the model's own "Document [n]" tokens attend to the prompt's "Document [n]"
header and pull the readout toward the number the answer cites, right or wrong. Compares, against the
source whose town the answer names: the stored answer readout's top source and the stripped one's, and
citation_to_check's flags under each."""

import json
import re
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)

from sra_rag.config import SRAConfig  # noqa: E402
from sra_rag.engine import SRAEngine  # noqa: E402
from sra_rag.evaluation import suites  # noqa: E402
from sra_rag.evaluation.attribution import DEPTHS  # noqa: E402
from sra_rag.evaluation.runner import RankedRetriever  # noqa: E402
from sra_rag.rag.citing import citation_to_check, cited_numbers, most_read  # noqa: E402
from sra_rag.rag.reader import Reader  # noqa: E402

# "Document [2]", "[1, 3]", " (Document [2])": the markers an answer cites sources with.
MARKER = re.compile(r"\s*\(?(?:\b(?:Documents?|Sources?)\s*)?\[\d+(?:\s*[,;]\s*\d+)*\]\)?", re.IGNORECASE)


def without_citations(text: str) -> str:
    return MARKER.sub("", text).strip()


model, seed, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
documents = [int(d) for d in sys.argv[4:]] or [5, 10, 20]
engine = SRAEngine.from_pretrained(model)
stored = json.loads((folder / "outcomes.json").read_text())
examples = suites.reader(engine.count_tokens, documents, list(DEPTHS), per_cell=2, seed=seed)
assert [e.id for e in examples] == [o["id"] for o in stored], "the stored run has other prompts"
rows = []
start = time.perf_counter()
for example, outcome in zip(examples, stored, strict=True):
    chunks = list(example.chunks)
    reader = Reader(engine, RankedRetriever(chunks), top_k=len(chunks), sra=SRAConfig.preset("recommended"))
    stuffed = reader.stuff(example.question, reader.retrieve(example.question))
    reply = outcome["reply"]
    stripped = without_citations(reply)
    scores = list(engine.attribute(stuffed.messages, stripped, layout=stuffed.layout, sra=reader.sra).scores)
    old_scores = outcome["answer_scores"]
    rows.append(
        {
            "id": outcome["id"],
            "named": outcome["named"],
            "cited": cited_numbers(reply, len(chunks)),
            "appended": outcome["appended"],
            "old_top": most_read(old_scores),
            "new_top": most_read(scores),
            "old_check": citation_to_check(reply, old_scores),
            "new_check": citation_to_check(reply, scores),
            "stripped": stripped,
        }
    )
    print(len(rows), rows[-1], f"{time.perf_counter() - start:.0f}s", flush=True)


def summary(key_top: str, key_check: str) -> dict:
    naming = [r for r in rows if r["named"] is not None]
    own = [r for r in naming if r["cited"] and not r["appended"]]
    wrong = [r for r in own if r["named"] not in r["cited"]]
    flagged = [r for r in own if r[key_check] is not None]
    return {
        "answer_top_is_named": f"{sum(r[key_top] == r['named'] for r in naming)}/{len(naming)}",
        "own_citations": len(own),
        "wrong_citations": len(wrong),
        "flagged": len(flagged),
        "wrong_of_flagged": sum(r["named"] not in r["cited"] for r in flagged),
        "wrong_flagged": sum(r[key_check] is not None for r in wrong),
    }


result = {"with_citations": summary("old_top", "old_check"), "without_citations": summary("new_top", "new_check")}
print(json.dumps(result))
(folder / "rescore.json").write_text(json.dumps({"summary": result, "rows": rows}, indent=1) + "\n")
