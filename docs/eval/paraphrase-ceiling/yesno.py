"""Run from the repository root: python docs/eval/paraphrase-ceiling/yesno.py MODEL [control].

The paraphrase mapping as yes/no questions, which small models handle better than a 12-way list:
for each of the readout suite's paraphrases and each of the suite's professions, "Someone
{description}. Were they a {profession}? Answer yes or no.", scored by log P("Yes") - log P("No").
Reports how often the paraphrased profession scores highest of the 12 (chance 1/12), and the pairwise
accuracy: the share of (right, wrong) profession pairs where the right one scores higher (chance 50%).
``control`` names the profession instead of paraphrasing it ("worked as a bookbinder")."""

import json
import sys
import time

import torch

torch.set_num_threads(2)

from sra_rag.engine import SRAEngine  # noqa: E402
from sra_rag.evaluation.readout import PARAPHRASES  # noqa: E402
from sra_rag.evaluation.suites import _PROFESSIONS  # noqa: E402

model = sys.argv[1]
control = sys.argv[2:] == ["control"]
engine = SRAEngine.from_pretrained(model)
start = time.perf_counter()
rows = []
for profession, paraphrase in PARAPHRASES.items():
    description = f"worked as a {profession}" if control else paraphrase
    scores = {}
    for job in _PROFESSIONS:
        prompt = f"Someone {description}. Were they a {job}? Answer yes or no."
        scores[job] = engine.log_likelihood(prompt, "Yes") - engine.log_likelihood(prompt, "No")
    wrong = [job for job in _PROFESSIONS if job != profession]
    rows.append(
        {
            "profession": profession,
            "top": max(scores, key=scores.__getitem__),
            "pairs_right": sum(scores[profession] > scores[job] for job in wrong),
            "pairs": len(wrong),
            "scores": {job: round(value, 3) for job, value in scores.items()},
        }
    )
    print(rows[-1]["profession"], rows[-1]["top"], rows[-1]["pairs_right"], flush=True)
summary = {
    "model": engine.name,
    "questions": "control: the profession named" if control else "paraphrased",
    "top1": f"{sum(row['top'] == row['profession'] for row in rows)}/{len(rows)}",
    "pairwise": f"{sum(row['pairs_right'] for row in rows)}/{sum(row['pairs'] for row in rows)}",
    "seconds": round(time.perf_counter() - start, 1),
}
print(json.dumps(summary))
with open(f"docs/eval/paraphrase-ceiling/yesno-{model}{'-control' if control else ''}.json", "w") as handle:
    json.dump({"summary": summary, "rows": rows}, handle, indent=1)
