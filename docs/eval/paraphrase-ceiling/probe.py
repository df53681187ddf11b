"""Run from the repository root: python docs/eval/paraphrase-ceiling/probe.py MODEL [SHUFFLES].

Can the model map a paraphrased question's description to the profession it paraphrases at all?
Each of the readout suite's paraphrases ("sewed and glued volumes together") is put to the model with
the suite's professions as options, in SHUFFLES seeded orders, and the model picks one under
constrained decoding (``SRAEngine.choose``, greedy). No document is in the prompt: this is the mapping
the readout would need before any attention could find the gold biography."""

import json
import random
import sys
import time

import torch

torch.set_num_threads(2)

from sra_rag.engine import SRAEngine  # noqa: E402
from sra_rag.evaluation.readout import PARAPHRASES  # noqa: E402
from sra_rag.evaluation.suites import _PROFESSIONS  # noqa: E402

model = sys.argv[1]
shuffles = int(sys.argv[2]) if len(sys.argv) > 2 else 5
engine = SRAEngine.from_pretrained(model)
rng = random.Random("paraphrase-ceiling")
rows = []
start = time.perf_counter()
for profession, description in PARAPHRASES.items():
    for _ in range(shuffles):
        options = list(_PROFESSIONS)
        rng.shuffle(options)
        prompt = f"Someone {description}. Which of these was their job: {', '.join(options)}? Answer with the job only."
        chosen = options[engine.choose(prompt, options, sra=None)]
        rows.append({"profession": profession, "chosen": chosen, "right": chosen == profession, "options": options})
right = sum(row["right"] for row in rows)
per = {p: sum(r["right"] for r in rows if r["profession"] == p) for p in PARAPHRASES}
summary = {
    "model": engine.name,
    "prompts": len(rows),
    "right": right,
    "options": len(_PROFESSIONS),
    "chance": len(rows) / len(_PROFESSIONS),
    "per_profession": per,
    "seconds": round(time.perf_counter() - start, 1),
}
print(json.dumps(summary))
with open(f"docs/eval/paraphrase-ceiling/{model}.json", "w") as handle:
    json.dump({"summary": summary, "rows": rows}, handle, indent=1)
