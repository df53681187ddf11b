"""Probe: every attention head of Qwen2.5-Coder-0.5B as a re-ranker on NQ-Open (not shipped).

For each example, the reader's prompt (as sra_rag.evaluation.nq_run builds it) is read once with eager
attention; for every (layer, head), the mean over the question's rows (the question to the end of the
prompt) of the attention mass on each passage is stored, one JSON line per example.

    python nq_heads.py SPLIT FIRST_QUESTION LAST_QUESTION OUT.jsonl
"""

import json
import sys
from pathlib import Path

import torch

from sra_rag.engine import SRAEngine
from sra_rag.evaluation.nq import load
from sra_rag.evaluation.nq_run import MAX_NEW_TOKENS, PassageRetriever
from sra_rag.rag.stuffing import stuff_prompt

split, first, last, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(2)
engine = SRAEngine.from_pretrained("qwen2.5-coder-0.5b")
engine.model.set_attn_implementation("eager")
done = {json.loads(line)["id"] for line in out.read_text().splitlines()} if out.exists() else set()
examples = load(split)
questions = sorted({example.question_id for example in examples}, key=[e.question_id for e in examples].index)
chosen = set(questions[first:last])
with out.open("a") as sink:
    for example in examples:
        if example.question_id not in chosen or example.id in done:
            continue
        chunks = PassageRetriever(example).chunks
        stuffed = stuff_prompt(engine, example.question, chunks, max_new_tokens=MAX_NEW_TOKENS)
        prepared = engine.prepare(stuffed.messages, layout=stuffed.layout)
        layout = prepared.layout
        start = layout.question_start
        with torch.inference_mode():
            attentions = engine.model(prepared.input_ids, output_attentions=True, use_cache=False).attentions
        mass = []
        for attention in attentions:  # (1, heads, n, n)
            rows = attention[0, :, start:, :].float().mean(dim=1)  # (heads, n)
            mass.append([[float(rows[head, a:b].sum()) for a, b in layout.documents] for head in range(rows.shape[0])])
        record = {
            "id": example.id,
            "question_id": example.question_id,
            "gold_index": example.gold_index,
            "lengths": [b - a for a, b in layout.documents],
            "mass": mass,
        }
        sink.write(json.dumps(record) + "\n")
        sink.flush()
        print(example.id, len(layout.documents), prepared.num_tokens, flush=True)
