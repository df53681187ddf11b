"""Dev experiment: per-head readout on paraphrase questions. Which (layer, head) ranks the gold first?"""
import sys, random, json
import numpy as np, torch
torch.set_num_threads(1)
from sra_rag.engine import SRAEngine
from sra_rag.evaluation.readout import build_prompt

model_name, length, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = SRAEngine.from_pretrained(model_name)
model = engine.model
model.set_attn_implementation("eager")
rng = random.Random(f"heads-dev-7-{length}")
records = []
for i in range(count):
    kind = ["paraphrase", "name", "absent"][i % 3]
    depth = None if kind == "absent" else (i // 3) % 5 / 4
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
json.dump(records, open(f"/tmp/s11/heads-{model_name}-{length}.json", "w"))
