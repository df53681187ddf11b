"""Run from the repository root: python docs/eval/paraphrase-ceiling/probe.py MODEL [SHUFFLES] [control].

Can the model map a paraphrased question's description to the profession it paraphrases at all?
Each of the readout suite's paraphrases ("sewed and glued volumes together") is put to the model with
the suite's professions as options, in SHUFFLES seeded orders, and the model picks one under
constrained decoding (``SRAEngine.choose``, greedy). No document is in the prompt: this is the mapping
the readout would need before any attention could find the gold biography. ``control`` puts the
profession's own name instead ("Someone worked as a bookbinder."): the same task as a string match."""

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
control = sys.argv[3:] == ["control"]
engine = SRAEngine.from_pretrained(model)
rng = random.Random("paraphrase-ceiling")
rows = []
start = time.perf_counter()
for profession, paraphrase in PARAPHRASES.items():
    description = f"worked as a {profession}" if control else paraphrase
    for _ in range(shuffles):
        options = list(_PROFESSIONS)
        rng.shuffle(options)
        prompt = f"Someone {description}. Which of these was their job: {', '.join(options)}? Answer with the job only."
        chosen = options[engine.choose(prompt, options, sra=None)]
        # The whole reply's likelihood, in total and per token: greedy decoding commits to a first
        # token, which favours short, frequent words.
        scores = {option: engine.log_likelihood(prompt, option) for option in options}
        lengths = {option: len(engine.tokenizer(option, add_special_tokens=False)["input_ids"]) for option in options}
        total = max(options, key=scores.__getitem__)
        per_token = max(options, key=lambda option: scores[option] / lengths[option])
        rows.append(
            {
                "profession": profession,
                "chosen": chosen,
                "right": chosen == profession,
                "likelihood": total,
                "likelihood_per_token": per_token,
                "options": options,
            }
        )
right = sum(row["right"] for row in rows)
per = {p: sum(r["right"] for r in rows if r["profession"] == p) for p in PARAPHRASES}
summary = {
    "model": engine.name,
    "questions": "control: the profession named" if control else "paraphrased",
    "prompts": len(rows),
    "right": right,
    "right_by_likelihood": sum(row["likelihood"] == row["profession"] for row in rows),
    "right_by_likelihood_per_token": sum(row["likelihood_per_token"] == row["profession"] for row in rows),
    "options": len(_PROFESSIONS),
    "chance": len(rows) / len(_PROFESSIONS),
    "per_profession": per,
    "seconds": round(time.perf_counter() - start, 1),
}
print(json.dumps(summary))
with open(f"docs/eval/paraphrase-ceiling/{model}{'-control' if control else ''}.json", "w") as handle:
    json.dump({"summary": summary, "rows": rows}, handle, indent=1)
