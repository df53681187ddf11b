"""Prefill time, peak memory and decode speed of SRA against stock SDPA, on the same model in the same run.

Run ``python -m sra_rag.benchmark`` (``make bench``). Every figure is also given as a ratio to SDPA
measured in the same run. Time: median of interleaved repeats (SDPA and SRA alternate, so drifting
machine load hits both alike). Memory: each (implementation, length) runs in a fresh process whose
large allocations are returned to the OS at once (``MALLOC_MMAP_THRESHOLD_``), and a sampler thread
reads the resident set every millisecond; the figure is the peak above the resident set before the
prefill (the model's own weights excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from sra_rag.config import SRAConfig
from sra_rag.engine import SRAEngine

IMPLEMENTATIONS = ("sdpa", "sra", "sra_reference")
WORDS = [
    "river",
    "harbour",
    "lantern",
    "archive",
    "quarry",
    "meadow",
    "signal",
    "copper",
    "orchard",
    "ledger",
    "beacon",
    "thistle",
    "granite",
    "compass",
    "willow",
    "parcel",
    "furnace",
    "cellar",
    "glacier",
    "pigeon",
    "tower",
    "canal",
    "violet",
    "summit",
    "ember",
    "falcon",
]


def prompt_ids(engine: SRAEngine, length: int, seed: int = 0) -> torch.Tensor:
    """``(1, length)`` token ids of seeded pseudo-prose (real words, so attention looks like text's)."""
    rng = random.Random(seed)
    sentences = []
    while True:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".")
        ids = engine.tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            return torch.tensor([ids[:length]], device=engine.device)


def _prefill(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, config: SRAConfig) -> float:
    engine.model.set_attn_implementation(implementation)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        engine.model(input_ids, logits_to_keep=1, sra_config=config)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _decode(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, steps: int, config: SRAConfig) -> float:
    """Tokens per second of ``steps`` greedy decoding steps after a prefill (the engine's loop)."""
    engine.model.set_attn_implementation(implementation)
    with torch.inference_mode():
        cache = DynamicCache(config=engine.model.config)
        logits = engine.model(input_ids, cache=cache, use_cache=True, logits_to_keep=1, sra_config=config).logits
        start = time.perf_counter()
        for _ in range(steps):
            token = logits[:, -1].argmax(-1, keepdim=True)
            logits = engine.model(token, cache=cache, use_cache=True, sra_config=config).logits
        return steps / (time.perf_counter() - start)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_memory(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, config: SRAConfig) -> int:
    """Peak bytes above the pre-prefill level during one prefill."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _prefill(engine, implementation, input_ids, config)
        return torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _prefill(engine, implementation, input_ids, config)
    done.set()
    sampler.join()
    return max(peak, _rss_bytes()) - base


@dataclass
class Row:
    length: int
    implementation: str
    prefill_s: float
    peak_mib: float


def _load(model: str | None, device: str | None, dtype: str | None) -> SRAEngine:
    return SRAEngine.from_pretrained(model, device=device, dtype=dtype)


def memory_worker(args: argparse.Namespace) -> None:
    engine = _load(args.model, args.device, args.dtype)
    config = SRAConfig()
    warm = prompt_ids(engine, 64)
    input_ids = prompt_ids(engine, args.length)
    _prefill(engine, args.implementation, warm, config)
    print(json.dumps({"peak": _peak_memory(engine, args.implementation, input_ids, config)}))


def measure_memory(args: argparse.Namespace, implementation: str, length: int) -> float:
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        engine = _load(args.model, args.device, args.dtype)
        return _peak_memory(engine, implementation, prompt_ids(engine, length), SRAConfig()) / 2**20
    command = [sys.executable, "-m", "sra_rag.benchmark", "--memory-worker", implementation, "--lengths", str(length)]
    for flag in ("model", "device", "dtype"):
        if getattr(args, flag):
            command += [f"--{flag}", getattr(args, flag)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"] / 2**20


def run(args: argparse.Namespace) -> str:
    engine = _load(args.model, args.device, args.dtype)
    config = SRAConfig()
    implementations = [i for i in IMPLEMENTATIONS if i != "sra_reference" or not args.no_reference]
    rows: list[Row] = []
    for length in args.lengths:
        input_ids = prompt_ids(engine, length)
        times: dict[str, list[float]] = {i: [] for i in implementations}
        _prefill(engine, "sdpa", input_ids[:, :256], config)  # warm-up
        for repeat in range(args.repeats):
            for implementation in implementations:
                if implementation == "sra_reference" and repeat > 0:
                    continue  # the literal path is slow; one run tells its cost
                times[implementation].append(_prefill(engine, implementation, input_ids, config))
        for implementation in implementations:
            peak = measure_memory(args, implementation, length)
            rows.append(Row(length, implementation, statistics.median(times[implementation]), peak))
            print(f"  {length:>6} {implementation:<14} {rows[-1].prefill_s:8.2f} s {peak:9.1f} MiB", file=sys.stderr)

    decode_ids = prompt_ids(engine, args.decode_prompt)
    speeds: dict[str, list[float]] = {"sdpa": [], "sra": []}
    for implementation in speeds:  # warm-up
        _decode(engine, implementation, decode_ids[:, :64], 4, config)
    for _ in range(args.repeats):
        for implementation in speeds:
            speeds[implementation].append(_decode(engine, implementation, decode_ids, args.decode_tokens, config))
    engine.model.set_attn_implementation("sra")
    return format_table(rows, {k: statistics.median(v) for k, v in speeds.items()}, engine, args)


def format_table(rows: list[Row], decode: dict[str, float], engine: SRAEngine, args: argparse.Namespace) -> str:
    stock = {(r.length, r.implementation): r for r in rows if r.implementation == "sdpa"}
    lines = [
        f"Model: {engine.name}, {engine.model.dtype}, {engine.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; SRA settings: spec defaults; median of {args.repeats} interleaved runs.",
        "",
        "| tokens | implementation | prefill (s) | time / SDPA | peak extra memory (MiB) | memory / SDPA |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = stock[(row.length, "sdpa")]
        lines.append(
            f"| {row.length} | {row.implementation} | {row.prefill_s:.2f} | {row.prefill_s / base.prefill_s:.3f} "
            f"| {row.peak_mib:.1f} | {row.peak_mib / base.peak_mib:.3f} |"
        )
    lines += [
        "",
        f"Decode after a {args.decode_prompt}-token SRA prefill, {args.decode_tokens} greedy steps: "
        f"SDPA {decode['sdpa']:.1f} tok/s, SRA {decode['sra']:.1f} tok/s, "
        f"SRA / SDPA = {decode['sra'] / decode['sdpa']:.3f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="hub id, folder, .gguf or smollm2-135m / qwen2.5-coder-0.5b (default: the embedded model)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-prompt", type=int, default=1024)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--no-reference", action="store_true", help="skip the literal O(n^2) reference")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--memory-worker", dest="implementation", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.implementation:
        args.length = args.lengths[0]
        memory_worker(args)
        return
    table = run(args)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
