"""Dev experiment: per-head readout on paraphrase questions. Which (layer, head) ranks the gold first?"""
import sys, random, json
import numpy as np, torch
torch.set_num_threads(2)
from sra_rag.engine import SRAEngine
from sra_rag.evaluation.readout import build_prompt

model_name, length, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = sys.argv[4] if len(sys.argv) > 4 else "dev-7"
kinds = sys.argv[5].split(",") if len(sys.argv) > 5 else ["paraphrase", "name", "absent"]
engine = SRAEngine.from_pretrained(model_name)
model = engine.model
model.set_attn_implementation("eager")
rng = random.Random(f"heads-{seed}-{length}")
records = []
for i in range(count):
    kind = kinds[i % len(kinds)]
    depth = None if kind == "absent" else (i // len(kinds)) % 5 / 4
    prompt = build_prompt(engine, rng, length, kind, depth)
    prepared = engine.prepare(prompt.stuffed.messages, layout=prompt.stuffed.layout)
    lay = prepared.layout
    with torch.no_grad():
        out = model(prepared.input_ids, output_attentions=True, use_cache=False)
    q0 = lay.question_start
    mass = []
    for att in out.attentions:  # (1, heads, n, n)
        rows = att[0, :, q0:, :].float().mean(dim=1)  # heads, n
        mass.append([[float(rows[h, a:b].sum()) for a, b in lay.documents] for h in range(rows.shape[0])])
    lengths = [b - a for a, b in lay.documents]
    pos = [((a + b) / 2 - lay.documents[0][0]) / (lay.documents[-1][1] - lay.documents[0][0]) for a, b in lay.documents]
    records.append(dict(kind=kind, gold=prompt.gold, mass=mass, lengths=lengths, pos=pos))
    print(i, kind, prompt.gold, len(lay.documents), flush=True)
json.dump(records, open(f"heads-{model_name}-{length}-{seed}.json", "w"))
