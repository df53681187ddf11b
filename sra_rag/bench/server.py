"""Throughput and latency through the HTTP server against in-process calls, same engine, same run.

Run ``python -m sra_rag.bench.server`` (part of ``make bench``; ``--quick`` for a reduced run of a
couple of minutes). At each concurrency (1, 4, 8, 16 by default) the same short chat requests (greedy,
fixed ``max_tokens``) are sent

- **in-process**: ``async for`` over ``engine.stream(...)``, the path the server itself drives, and
- **over HTTP**: ``POST /v1/chat/completions`` with ``httpx`` to the app served by uvicorn in this
  process on a loopback port (a blocking reply; the client shares the process, as a sidecar would share
  the machine),

alternating the two paths for each repeat so that drifting machine load hits both alike. The figure
of merit is the server's own overhead: HTTP latency over in-process latency (median of per-request
latencies, median over repeats), target <= 1.10 at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import httpx
import torch

from sra_rag.server.app import create_app
from sra_rag.server.runner import serving
from sra_rag.server.settings import EngineSpec, ServerSettings

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

PATHS = ("in-process", "http")
TOPICS = (
    "a lighthouse",
    "a barometer",
    "a ferry",
    "a harbour",
    "a tide table",
    "a weather vane",
    "a compass",
    "a mast",
)


@dataclass
class Run:
    """One batch of requests at one concurrency through one path."""

    path: str
    concurrency: int
    seconds: float
    latencies: list[float]
    completion_tokens: int

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds

    def latency(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


@dataclass
class Row:
    """The median over repeats of one (concurrency, path) cell."""

    concurrency: int
    path: str
    requests_per_second: float
    tokens_per_second: float
    p50_s: float
    p95_s: float


def requests(count: int) -> list[list[dict[str, str]]]:
    """``count`` distinct short chat requests."""
    return [
        [{"role": "user", "content": f"In one sentence, what is {TOPICS[i % len(TOPICS)]} for? (request {i})"}]
        for i in range(count)
    ]


async def in_process(engine: SRAEngine, batch: list, concurrency: int, max_tokens: int) -> Run:
    gate = asyncio.Semaphore(concurrency)

    async def one(messages: list[dict[str, str]]) -> tuple[float, int]:
        async with gate:
            start = time.perf_counter()
            stream = engine.stream(messages, max_new_tokens=max_tokens, temperature=0.0)
            async for _ in stream:
                pass
            return time.perf_counter() - start, stream.completion_tokens

    return await _timed("in-process", concurrency, [one(messages) for messages in batch])


async def over_http(url: str, model: str, batch: list, concurrency: int, max_tokens: int) -> Run:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(messages: list[dict[str, str]]) -> tuple[float, int]:
            async with gate:
                body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
                start = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=body)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                return elapsed, int(response.json()["usage"]["completion_tokens"])

        return await _timed("http", concurrency, [one(messages) for messages in batch])


async def _timed(path: str, concurrency: int, calls: list) -> Run:
    start = time.perf_counter()
    results = await asyncio.gather(*calls)
    seconds = time.perf_counter() - start
    return Run(path, concurrency, seconds, [latency for latency, _ in results], sum(tokens for _, tokens in results))


def measure(engine: SRAEngine, levels: list[int], count: int, max_tokens: int, repeats: int) -> list[Run]:
    """Every (concurrency, path) ``repeats`` times, the two paths alternating which goes first."""
    settings = ServerSettings(max_batch=max(levels), queue_size=count, timeout=3600)
    runs: list[Run] = []
    with serving(create_app(engine, settings)) as url:

        async def measure_all() -> None:
            warm = requests(1)
            await in_process(engine, warm, 1, max_tokens)
            await over_http(url, engine.name, warm, 1, max_tokens)
            for concurrency in levels:
                batch = requests(count)
                for repeat in range(repeats):
                    order = PATHS if repeat % 2 == 0 else PATHS[::-1]
                    for path in order:
                        if path == "http":
                            run = await over_http(url, engine.name, batch, concurrency, max_tokens)
                        else:
                            run = await in_process(engine, batch, concurrency, max_tokens)
                        runs.append(run)
                        print(
                            f"  concurrency {concurrency:>2} {path:<10} {run.requests_per_second:6.2f} req/s "
                            f"p50 {run.latency(0.5):6.2f} s",
                            file=sys.stderr,
                        )

        asyncio.run(measure_all())
    return runs


def summarize(runs: list[Run]) -> list[Row]:
    rows = []
    for concurrency in dict.fromkeys(run.concurrency for run in runs):
        for path in PATHS:
            cell = [run for run in runs if run.concurrency == concurrency and run.path == path]
            rows.append(
                Row(
                    concurrency,
                    path,
                    statistics.median(run.requests_per_second for run in cell),
                    statistics.median(run.tokens_per_second for run in cell),
                    statistics.median(run.latency(0.5) for run in cell),
                    statistics.median(run.latency(0.95) for run in cell),
                )
            )
    return rows


def format_table(rows: list[Row], engine: SRAEngine, args: argparse.Namespace) -> str:
    base = {row.concurrency: row for row in rows if row.path == "in-process"}
    lines = [
        f"Model: {engine.name}, {engine.model.dtype}, {engine.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; SRA preset {args.preset}; {args.requests} short chat requests "
        f"per cell, {args.max_tokens} greedy tokens each; median of {args.repeats} interleaved runs.",
        "",
        "| concurrency | path | requests/s | generated tok/s | p50 latency (s) | p95 latency (s) "
        "| latency / in-process |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.p50_s / base[row.concurrency].p50_s
        lines.append(
            f"| {row.concurrency} | {row.path} | {row.requests_per_second:.2f} | {row.tokens_per_second:.1f} "
            f"| {row.p50_s:.3f} | {row.p95_s:.3f} | {ratio:.3f} |"
        )
    single = [row for row in rows if row.concurrency == 1 and row.path == "http"]
    if single:
        overhead = single[0].p50_s / base[1].p50_s
        verdict = "meets" if overhead <= 1.10 else "misses"
        lines += [
            "",
            f"Server overhead at concurrency 1: {overhead:.3f}x in-process latency ({verdict} the 1.10x target).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="as for sra-rag serve (default: smollm2-135m)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--preset", default="recommended", help="the SRA preset of every request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per cell")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a reduced run: concurrency 1 and 4, 8 requests, 1 repeat")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--json", default=None, help="also write every run to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.max_tokens, args.repeats = [1, 4], 8, 8, 1

    engine = EngineSpec(model=args.model, preset=args.preset, device=args.device).load(max(args.concurrency))
    runs = measure(engine, args.concurrency, args.requests, args.max_tokens, args.repeats)
    table = format_table(summarize(runs), engine, args)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(run) for run in runs], handle, indent=1)


if __name__ == "__main__":
    main()
