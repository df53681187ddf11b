"""Run from the repository root: python docs/eval/paraphrase-ceiling/rerank.py MODEL SEED LENGTH COUNT.

A lead, not shipped: the reader model as its own pointwise judge of relevance. Each retrieved
document of the readout suite's prompts is put to the model alone with the question ("Is this text
about the person the question asks about? Answer yes or no.") and scored by log P("Yes") - log P("No");
the documents are ranked by that score. Each document is read once, on its own, so the cost is about
one prefill of the context (plus the question per document) instead of one over the whole prompt.
Compared, on the same prompts, with the calibrated attention readout's rank stored by the documents
harness (``docs/eval/documents/<model>-<length>-order/outcomes.json``)."""

import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)

from sra_rag.engine import SRAEngine  # noqa: E402
from sra_rag.evaluation.readout import prompts  # noqa: E402

TEMPLATE = "{text}\n\nQuestion: {question}\nIs this text about the person the question asks about? Answer yes or no."
STORED = {
    ("qwen2.5-coder-0.5b", 2048): "docs/eval/documents/qwen-2k-order/outcomes.json",
    ("qwen2.5-coder-0.5b", 4096): "docs/eval/documents/qwen-4k-order/outcomes.json",
    ("smollm2-135m", 2048): "docs/eval/documents/smol-2k-order/outcomes.json",
    ("smollm2-135m", 4096): "docs/eval/documents/smol-4k-order/outcomes.json",
}

model, seed, length, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = SRAEngine.from_pretrained(model)
stored = json.loads(Path(STORED[(model, length)]).read_text()) if seed == 11 else None
rows = []
start = time.perf_counter()
for index, prompt in enumerate(prompts(engine, seed, [length], count, ("name", "paraphrase"))):
    question = prompt.stuffed.tail_from.split("\n")[0].removeprefix("Question: ")
    scores = []
    for chunk in prompt.stuffed.chunks:
        judged = TEMPLATE.format(text=chunk.text, question=question)
        scores.append(engine.log_likelihood(judged, "Yes") - engine.log_likelihood(judged, "No"))
    rank = sorted(range(len(scores)), key=lambda i: -scores[i]).index(prompt.gold)
    row = {"index": index, "kind": prompt.kind, "gold": prompt.gold, "documents": len(scores), "judge_rank": rank}
    if stored is not None:
        assert stored[index]["gold"] == prompt.gold and stored[index]["answer"] == prompt.answer
        row["readout_rank"] = stored[index]["calibrated_rank"]
    rows.append(row)
    print(row, f"{time.perf_counter() - start:.0f}s", flush=True)
summary = {"model": engine.name, "seed": seed, "length": length, "template": TEMPLATE}
for kind in ("name", "paraphrase"):
    mine = [row for row in rows if row["kind"] == kind]
    summary[kind] = {
        "prompts": len(mine),
        "judge_recall_at_1": sum(row["judge_rank"] == 0 for row in mine),
        "readout_recall_at_1": sum(row.get("readout_rank") == 0 for row in mine) if stored is not None else None,
    }
print(json.dumps(summary))
out = Path(f"docs/eval/paraphrase-ceiling/rerank-{model}-{length}-seed{seed}.json")
out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
