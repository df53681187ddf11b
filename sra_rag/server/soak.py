"""A soak of the server under mixed, partly hostile traffic (a script, not a test):
``python -m sra_rag.server.soak [--random] [--requests 200] [--concurrency 16]``.

The app runs in this process under uvicorn on a free loopback port, on the embedded SmolLM2-135M
(or, with ``--random``, a random 2-layer model with its tokenizer, for speed). Requests are a fixed,
seeded mix: blocking and streamed chat, documents, tool calls (``required`` and ``auto``) and text
completions; 10% are malformed (broken JSON, unknown fields, wrong types, a setting that would
overflow, a body over the size limit) and 10% are abandoned early (a stream closed after its first
event, a blocking call given up after a moment). It reports the 5xx responses, streams that ended
without ``[DONE]`` or without a last chunk or an error event (dropped), slots still held when the
traffic is over (the admission queue's counters, ``/health`` and ``/metrics``, and the engine's
running batch), and the resident memory at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from sra_rag.server.app import create_app
from sra_rag.server.runner import serving
from sra_rag.server.settings import EngineSpec, ServerSettings

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

DOCUMENTS = [
    {"text": "The ferry to Skelda leaves Pier 3 at 08:30 and 16:00.", "source": "ferry.txt"},
    {"text": "Leave in October needs approval from Imelda Farrow.", "source": "handbook.md"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a town.",
        "parameters": {
            "type": "object",
            "properties": {"town": {"type": "string", "enum": ["Oslo", "Rome", "Skelda"]}},
            "required": ["town"],
        },
    },
}
QUESTIONS = ["When does the ferry leave?", "Who approves leave?", "Name a colour.", "What is the weather in Oslo?"]
KINDS = ("chat", "chat-stream", "documents", "documents-stream", "tools", "tools-stream", "completion")


@dataclass
class Tally:
    """What the traffic got."""

    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    dropped: list[str] = field(default_factory=list)
    stream_errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def random_engine(max_batch_size: int) -> SRAEngine:
    """A random 2-layer Llama with the embedded model's tokenizer (its vocabulary and chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sra_rag.engine import SRAEngine
    from sra_rag.models import embedded_source, load_tokenizer

    tokenizer = load_tokenizer(embedded_source())
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
    )
    return SRAEngine(LlamaForCausalLM(config), tokenizer, name="random-llama", max_batch_size=max_batch_size)


def plan(count: int, seed: int) -> list[tuple[str, str]]:
    """``(kind, fate)`` per request: fate ``"malformed"``, ``"abandoned"`` (10% each) or ``"normal"``."""
    rng = random.Random(seed)
    fates = ["malformed"] * (count // 10) + ["abandoned"] * (count // 10)
    fates += ["normal"] * (count - len(fates))
    rng.shuffle(fates)
    return [(KINDS[index % len(KINDS)], fate) for index, fate in enumerate(fates)]


def body(kind: str, model: str, max_tokens: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of one request of ``kind``."""
    question = rng.choice(QUESTIONS)
    common: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": rng.choice([0, 0.7])}
    if kind.endswith("-stream"):
        common.update(stream=True, stream_options={"include_usage": True})
    messages = [{"role": "user", "content": question}]
    if kind.startswith("documents"):
        return "/v1/chat/completions", {**common, "messages": messages, "documents": DOCUMENTS}
    if kind.startswith("tools"):
        choice = rng.choice(["required", "auto"])
        return "/v1/chat/completions", {**common, "messages": messages, "tools": [WEATHER], "tool_choice": choice}
    if kind == "completion":
        return "/v1/completions", {**common, "prompt": f"Q: {question}\nA:"}
    return "/v1/chat/completions", {**common, "messages": messages}


def malformed(index: int, model: str, limit: int) -> tuple[bytes, int]:
    """A broken body and the status it must get."""
    good = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    variants: list[tuple[Any, int]] = [
        (b'{"model": "', 400),
        ({**good, "max_token": 4}, 400),
        ({**good, "max_tokens": True}, 400),
        ({**good, "repetition_penalty": 1e-300}, 400),
        ({**good, "messages": [{"role": "user", "content": "x" * (limit + 1)}]}, 413),
        ({**good, "messages": [{"role": "tool", "content": "no id"}]}, 400),
    ]
    payload, status = variants[index % len(variants)]
    return (payload if isinstance(payload, bytes) else json.dumps(payload).encode()), status


async def one(
    client: httpx.AsyncClient, index: int, kind: str, fate: str, model: str, tally: Tally, limit: int, max_tokens: int
) -> None:
    rng = random.Random(index)
    if fate == "malformed":
        content, expected = malformed(index, model, limit)
        response = await client.post("/v1/chat/completions", content=content)
        tally.statuses[response.status_code] += 1
        tally.kinds["malformed"] += 1
        if response.status_code != expected or "error" not in response.json():
            tally.unexpected.append(f"malformed #{index}: {response.status_code} {response.text[:120]}")
        return
    path, payload = body(kind, model, max_tokens, rng)
    tally.kinds[f"{kind} ({fate})" if fate == "abandoned" else kind] += 1
    if payload.get("stream"):
        await stream(client, index, path, payload, fate == "abandoned", tally)
        return
    if fate == "abandoned":
        try:
            await asyncio.wait_for(client.post(path, json=payload), timeout=rng.uniform(0.05, 0.5))
        except (asyncio.TimeoutError, httpx.TransportError):
            tally.statuses[499] += 1  # given up: no status
            return
    response = await client.post(path, json=payload)
    tally.statuses[response.status_code] += 1
    if response.status_code != 200:
        tally.unexpected.append(f"{kind} #{index}: {response.status_code} {response.text[:120]}")


async def stream(
    client: httpx.AsyncClient, index: int, path: str, payload: dict[str, Any], abandon: bool, tally: Tally
) -> None:
    events: list[str] = []
    async with client.stream("POST", path, json=payload) as response:
        tally.statuses[response.status_code] += 1
        if response.status_code != 200:
            await response.aread()
            tally.unexpected.append(f"stream #{index}: {response.status_code} {response.text[:120]}")
            return
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                if abandon:
                    return  # leaving the block closes the connection mid-stream
    if abandon:
        return
    decoded = [json.loads(event) for event in events if event != "[DONE]"]
    errors = [event["error"] for event in decoded if "error" in event]
    for error in errors:
        tally.stream_errors[str(error.get("code"))] += 1
    finished = any(choice.get("finish_reason") for event in decoded for choice in event.get("choices", ()))
    if not events or events[-1] != "[DONE]" or not (finished or errors):
        tally.dropped.append(f"stream #{index}: {len(events)} events, last {events[-1] if events else None!r}")


def rss_mib() -> float:
    """This process's resident memory (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def traffic(
    url: str, model: str, count: int, concurrency: int, seed: int, limit: int, max_tokens: int, *, warm: bool = False
) -> Tally:
    """Send ``count`` requests of :func:`plan`, ``concurrency`` at a time (``warm``: each kind
    once, normal and malformed, none abandoned)."""
    tally = Tally()
    gate = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(600.0)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def guarded(index: int, kind: str, fate: str) -> None:
            async with gate:
                try:
                    await one(client, index, kind, fate, model, tally, limit, max_tokens)
                except Exception as error:  # a transport failure the server caused: count it
                    tally.unexpected.append(f"#{index} {kind}/{fate}: {type(error).__name__}: {error}")

        started = time.monotonic()
        mix = plan(count, seed)
        if warm:
            mix = [(kind, "normal") for kind in KINDS] + [(KINDS[0], "malformed")] * len(KINDS)
        await asyncio.gather(*(guarded(index, kind, fate) for index, (kind, fate) in enumerate(mix)))
        tally.seconds = time.monotonic() - started
    return tally


def leaked(url: str, engine: SRAEngine, wait: float = 30.0) -> dict[str, float]:
    """The admission counters and the engine's running batch once the traffic is over (waiting up to
    ``wait`` seconds for cancelled requests to leave the batch)."""
    deadline = time.monotonic() + wait
    while True:
        health = httpx.get(url + "/health").json()
        counts = {"running": health["running"], "waiting": health["waiting"], "engine": engine.scheduler.running}
        if not any(counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    metrics = httpx.get(url + "/metrics").text
    for line in metrics.splitlines():
        if line.startswith(("sra_rag_requests_running ", "sra_rag_queue_depth ")):
            name, value = line.split()
            counts[name] = float(value)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", action="store_true", help="A random 2-layer model instead of SmolLM2-135M.")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24, help="Tokens per reply (a tool call needs about 20).")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    settings = ServerSettings(max_batch=args.max_batch, queue_size=64, default_max_tokens=args.max_tokens)
    engine = random_engine(args.max_batch) if args.random else EngineSpec().load(max_batch_size=args.max_batch)
    app = create_app(engine, settings)
    model = app.state.server.model_name
    with serving(app) as url:
        # Warm every path once (tool grammars compiled, threads started, buffers grown), so that
        # the memory measured afterwards is the steady state the traffic must come back to.
        limit = settings.max_body_bytes
        warm = asyncio.run(traffic(url, model, 0, args.concurrency, args.seed, limit, args.max_tokens, warm=True))
        if warm.server_errors or warm.unexpected:
            print(f"warm-up failed: {warm.statuses} {warm.unexpected}", file=sys.stderr)
            return 1
        gc.collect()
        rss_start = rss_mib()
        tally = asyncio.run(traffic(url, model, args.requests, args.concurrency, args.seed, limit, args.max_tokens))
        slots = leaked(url, engine)
        gc.collect()
        rss_end = rss_mib()

    print(f"soak: {args.requests} requests at concurrency {args.concurrency} on {model}, {tally.seconds:.1f} s")
    print(f"  mix: {dict(sorted(tally.kinds.items()))}")
    print(f"  statuses: {dict(sorted(tally.statuses.items()))} (499: given up by the client)")
    print(f"  5xx responses: {tally.server_errors}")
    print(f"  stream error events: {dict(tally.stream_errors) or 0}")
    print(f"  dropped streams (no [DONE], or no last chunk nor error event): {len(tally.dropped)}")
    print(f"  slots held afterwards: {slots}")
    print(f"  RSS: {rss_start:.0f} MiB at the start, {rss_end:.0f} MiB at the end ({rss_end / rss_start - 1:+.1%})")
    for problem in tally.dropped + tally.unexpected:
        print(f"  ! {problem}")
    failed = tally.server_errors or tally.dropped or tally.unexpected or any(slots.values())
    return 1 if failed or rss_end > 1.1 * rss_start else 0


if __name__ == "__main__":
    sys.exit(main())
