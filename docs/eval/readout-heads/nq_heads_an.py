"""Choose heads on dev records of nq_heads.py, report them on test records (not shipped).

    python nq_heads_an.py DEV.jsonl TEST.jsonl

Scores per passage and head: log of the question's mass on the passage, minus the head's mean log mass
at that passage's position over the dev prompts (a position bias fitted without labels). A head set is
scored by the sum of its heads' standardised scores. Chosen on dev: the set size k among the best heads
by dev Recall@1; reported on test beside MiniLM and BM25 on the same prompts.
"""

import json
import sys

import numpy as np

from sra_rag.evaluation.nq import load
from sra_rag.evaluation.nq_report import bm25_scores, minilm_scores


def read(path):
    records = [json.loads(line) for line in open(path)]
    mass = np.array([r["mass"] for r in records])  # (prompts, layers, heads, passages)
    gold = np.array([r["gold_index"] for r in records])
    return records, np.log(np.maximum(mass, 1e-12)), gold


def recall_at_1(scores, gold):  # scores (prompts, passages)
    return int((scores.argmax(-1) == gold).sum())


dev_records, dev, dev_gold = read(sys.argv[1])
test_records, test, test_gold = read(sys.argv[2])
bias = dev.mean(axis=0)  # (layers, heads, passages): mean log mass per position, no labels
spread = (dev - bias).std(axis=(0, 3))  # (layers, heads)


def calibrated(logs):
    return (logs - bias) / spread[None, :, :, None]


layers, heads = dev.shape[1:3]
cal_dev, cal_test = calibrated(dev), calibrated(test)
per_head = np.array([[recall_at_1(cal_dev[:, l, h], dev_gold) for h in range(heads)] for l in range(layers)])
raw_head = np.array([[recall_at_1(dev[:, l, h], dev_gold) for h in range(heads)] for l in range(layers)])
order = np.dstack(np.unravel_index(np.argsort(-per_head, axis=None), per_head.shape))[0]
print(f"dev prompts {len(dev_gold)}, test prompts {len(test_gold)}")
print("best heads on dev (calibrated R@1, raw R@1):", [(int(l), int(h), int(per_head[l, h]), int(raw_head[l, h])) for l, h in order[:12]])
best_k, best = None, -1
for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
    chosen = order[:k]
    dev_score = sum(cal_dev[:, l, h] for l, h in chosen)
    r = recall_at_1(dev_score, dev_gold)
    print(f"k={k}: dev R@1 {r}/{len(dev_gold)}")
    if r > best:
        best_k, best = k, r
all_heads = cal_dev.sum(axis=(1, 2))
print(f"all heads, calibrated: dev R@1 {recall_at_1(all_heads, dev_gold)}/{len(dev_gold)}")
print(f"chosen k={best_k}")
chosen = order[:best_k]
test_score = sum(cal_test[:, l, h] for l, h in chosen)
examples = {e.id: e for e in load("test")}
prompts = [examples[r["id"]] for r in test_records]
minilm = np.array(minilm_scores(prompts))
bm25 = np.array(bm25_scores(prompts))
print(f"TEST R@1: heads(k={best_k}) {recall_at_1(test_score, test_gold)}/{len(test_gold)}, "
      f"all heads {recall_at_1(cal_test.sum(axis=(1, 2)), test_gold)}, "
      f"MiniLM {recall_at_1(minilm, test_gold)}, BM25 {recall_at_1(bm25, test_gold)}")
def r3(s, g):
    return int(sum(g[i] in np.argsort(-s[i])[:3] for i in range(len(g))))
print(f"TEST R@3: heads {r3(test_score, test_gold)}, MiniLM {r3(minilm, test_gold)}, BM25 {r3(bm25, test_gold)}")
for pos in sorted(set(test_gold)):
    m = test_gold == pos
    print(f"  gold at {pos + 1}: heads {recall_at_1(test_score[m], test_gold[m])}/{m.sum()}, MiniLM {recall_at_1(minilm[m], test_gold[m])}, BM25 {recall_at_1(bm25[m], test_gold[m])}")
