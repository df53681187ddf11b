"""The throughput benchmark's measurement and table on a tiny engine (the real run is ``make bench``)."""

from __future__ import annotations

import argparse
import os

import pytest

from sra_rag import SRAConfig
from sra_rag.bench.engine import (
    _percentile,
    format_throughput,
    prompt_ids,
    random_engine,
    run_load,
    workload_requests,
)


def test_concurrent_loads_are_measured_against_the_sequential_run(tiny_engine) -> None:
    args = argparse.Namespace(requests=4, new_tokens=6, rag_tokens=120)
    loads = []
    for workload in ("chat", "rag"):
        requests = workload_requests(tiny_engine, workload, 4, 6, 120, SRAConfig.preset("recommended"))
        assert len({request.prompt_ids for request in requests}) == 4
        if workload == "rag":
            assert all(115 <= request.num_prompt_tokens <= 125 for request in requests)
            assert all(request.layout.question is not None for request in requests)
        loads += [run_load(tiny_engine, requests, concurrency, workload, "recommended") for concurrency in (1, 4)]
    sequential, batched = loads[0], loads[1]
    assert sequential.rows_per_step == 1.0 and batched.rows_per_step > 1.0
    assert batched.texts == sequential.texts and batched.tokens == sequential.tokens == 4 * 6  # exactly 6 each
    assert len(batched.latencies) == len(batched.first_pieces) == 4
    table = format_throughput(loads, tiny_engine, args)
    rows = [line for line in table.splitlines() if line.startswith("| chat") or line.startswith("| rag")]
    assert len(rows) == 4 and all(row.endswith("| 4/4 |") for row in rows)
    assert rows[0].split(" | ")[5] == "1.00"  # the sequential run is its own baseline


def test_nearest_rank_percentiles() -> None:
    values = [float(value) for value in range(1, 21)]
    assert (_percentile(values, 0.5), _percentile(values, 0.95), _percentile([3.0], 0.95)) == (10.0, 19.0, 3.0)


def test_the_layout_rows_prefill_with_a_readout(tiny_engine) -> None:
    from sra_rag.bench.engine import LAYOUT_VARIANTS, _prefill, benchmark_layout, prompt_ids

    layout = benchmark_layout(200)
    assert len(layout.documents) == 10 and layout.documents[0][0] == 16 and layout.documents[-1][1] == 160
    assert layout.question == (160, 170)
    input_ids = prompt_ids(tiny_engine, 200)
    try:
        for implementation in ("sdpa", *LAYOUT_VARIANTS):
            assert _prefill(tiny_engine, implementation, input_ids, SRAConfig()) > 0
    finally:
        tiny_engine.model.set_attn_implementation("sra")


def test_random_models_need_no_files() -> None:
    engine = random_engine("llama-tiny", "cpu", None, max_batch_size=4)
    assert engine.model.config.num_hidden_layers == 4 and engine.scheduler.max_batch_size == 4
    input_ids = prompt_ids(engine, 300)
    assert input_ids.shape == (1, 300) and int(input_ids.max()) < engine.model.config.vocab_size
    assert engine.complete("Quarry signal.", max_new_tokens=3).completion_tokens <= 3
    with pytest.raises(ValueError, match="llama-1b"):
        random_engine("gpt-2", "cpu", None)


def test_kernel_rows_run_each_fast_path_row_per_kernel(tiny_engine, monkeypatch) -> None:
    from sra_rag.bench.engine import _prefill, implementation_rows, kernel_setting

    rows = implementation_rows(argparse.Namespace(no_reference=False, kernels=["torch", "triton"]))
    assert rows[:4] == ["sdpa", "sra@torch", "sra@triton", "sra_reference"]
    assert "sra+documents@triton" in rows and len(rows) == 2 + 2 * 4
    assert implementation_rows(argparse.Namespace(no_reference=True, kernels=None))[:2] == ["sdpa", "sra"]
    monkeypatch.setenv("SRA_RAG_KERNEL", "auto")
    with kernel_setting("torch"):
        assert os.environ["SRA_RAG_KERNEL"] == "torch"
    assert os.environ["SRA_RAG_KERNEL"] == "auto"
    try:
        assert _prefill(tiny_engine, "sra@torch", prompt_ids(tiny_engine, 200), SRAConfig()) > 0
    finally:
        tiny_engine.model.set_attn_implementation("sra")
