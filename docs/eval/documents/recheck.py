"""Run from the repository root. Re-check a published documents run under the current readout (total mass, re-fitted profile):
read each held-out prompt, rank its sources under the published rule (old profile, per-token) and the
current one; where the arrangement differs, answer again with the current ranking and compare."""
import json, subprocess, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
from sra_rag.readout.calibration import ReadoutProfile
from sra_rag.config import SRAConfig
from sra_rag.engine import SRAEngine
from sra_rag.evaluation import documents
from sra_rag.evaluation.readout import prompts
from sra_rag.rag.ordering import arrange, probe

model, length, placement, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
engine = SRAEngine.from_pretrained(model)
key = {"smollm2-135m": "smollm2-135m", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b"}[model]
old_json = subprocess.run(["git", "show", f"c2b795f:sra_rag/data/readout/{key}.json"],
                          capture_output=True, text=True, check=True).stdout
old = ReadoutProfile.model_validate_json(old_json).model_copy(update={"length_exponent": 1.0})
new = engine.readout_profile
stored = json.loads((folder / "outcomes.json").read_text())
name = f"order-{placement}"
same = differ = changed = 0
gained = lost = 0
rows = []
t0 = time.perf_counter()
for index, prompt in enumerate(prompts(engine, 11, [length], len(stored), ("name", "paraphrase"))):
    record = stored[index]
    assert record["gold"] == prompt.gold and record["answer"] == prompt.answer, index
    attention, _ = probe(engine, prompt.stuffed, SRAConfig.preset("off"))
    a_old = arrange(old.score(attention.readout).ranking, placement)
    a_new = arrange(new.score(attention.readout).ranking, placement)
    if a_old == a_new:
        same += 1
        rows.append(dict(index=index, same_order=True))
    else:
        differ += 1
        current = new.score(attention.readout)
        reply, _, _ = documents._answer(engine, prompt, SRAConfig.preset("off"), placement, (current, 0.0))
        ok = prompt.answer.lower() in reply.lower()
        was = record["correct"][name]
        gained += ok and not was
        lost += was and not ok
        changed += reply != record["replies"][name]
        rows.append(dict(index=index, same_order=False, old=record["replies"][name], new=reply, was=was, now=ok,
                         top_same=a_old[0] == a_new[0]))
    print(index, rows[-1], f"{time.perf_counter() - t0:.0f}s", flush=True)
summary = dict(model=engine.name, length=length, setting=name, prompts=len(stored), same_arrangement=same,
               different_arrangement=differ, replies_changed=changed, now_right_was_wrong=gained, now_wrong_was_right=lost)
print(json.dumps(summary))
(folder / "recheck.json").write_text(json.dumps(dict(summary=summary, rows=rows), indent=1))
