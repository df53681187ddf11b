"""Held-out check of heads chosen on the dev run: Recall@1 of the calibrated single head and of the layer band."""
import json, sys, numpy as np
recs = json.load(open(sys.argv[1]))
heads = [tuple(map(int, h.split(":"))) for h in sys.argv[2:]]
absent = [r for r in recs if r["kind"] == "absent"]
def score(r):
    m = np.log(np.clip(np.array(r["mass"]), 1e-12, None)); return m - np.log(np.array(r["lengths"])).mean()
P = np.concatenate([r["pos"] for r in absent]); S = np.concatenate([score(r) for r in absent], axis=2)
def bias(pos):
    w = np.exp(-0.5 * ((pos[:, None] - P[None]) / 0.08) ** 2); return (S @ w.T) / w.sum(1)
items = [r for r in recs if r["kind"] != "absent"]
for kind in sorted({r["kind"] for r in items}):
    rs = [r for r in items if r["kind"] == kind]
    for (l, h) in heads:
        raw = sum(score(r)[l, h].argmax() == r["gold"] for r in rs)
        cal = sum((score(r) - bias(np.array(r["pos"])))[l, h].argmax() == r["gold"] for r in rs)
        print(f"{kind}: head {l}:{h} raw {raw}/{len(rs)} calibrated {cal}/{len(rs)}")
    band = sum((score(r) - bias(np.array(r["pos"])))[17:19].mean(axis=(0, 1)).argmax() == r["gold"] for r in rs)
    print(f"{kind}: layers 17-18 all heads calibrated {band}/{len(rs)}  documents per prompt {len(rs[0]['lengths'])}")
