"""What constrained decoding costs: per-token time of JSON-schema requests against plain ones, in the same run.

Run ``python -m sra_rag.bench.structured``. Both kinds of request share the prompt and decode up to
``--tokens`` tokens (a free-text field keeps the JSON open); the figure is the decoding time per token
(wall time minus the prefill, over the tokens generated), median of interleaved repeats, and its ratio
to the plain requests. ``--concurrency N`` runs N requests of a kind at once
(batched by the engine's scheduler). Also reported: the time to read the tokenizer for xgrammar (once
per engine), to compile the schema (once per schema) and to run the grammar processor for one token
(on its own, without the model).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from sra_rag.engine import SRAEngine

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "year": {"type": "integer", "minimum": 1000, "maximum": 2100},
        "story": {"type": "string"},
    },
    "required": ["title", "year", "story"],
}
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm, as JSON."}]


def per_token_seconds(engine: SRAEngine, tokens: int, concurrency: int, **kwargs: Any) -> float:
    """Decoding seconds per step of ``concurrency`` simultaneous requests of at most ``tokens`` tokens:
    the wall time after the prefill over the longest reply."""

    def one(_: int) -> tuple[float, float, int]:
        start = time.perf_counter()
        result = engine.complete(PROMPT, max_new_tokens=tokens, **kwargs)
        return time.perf_counter() - start, result.prefill_seconds, result.completion_tokens

    with ThreadPoolExecutor(concurrency) as pool:
        runs = list(pool.map(one, range(concurrency)))
    wall = max(total for total, _, _ in runs)
    prefill = max(prefill for _, prefill, _ in runs)
    return (wall - prefill) / max(count for _, _, count in runs)


def processor_seconds(engine: SRAEngine, steps: int) -> float:
    """Seconds per call of a fresh grammar processor fed a valid reply token by token (no model)."""
    compiler = engine.json_schemas
    text = '{"title": "The Keeper", "year": 1901, "story": "' + "The lamp burned all night. " * 40
    reply = engine.tokenizer(text, add_special_tokens=False)["input_ids"][:steps]
    prompt = engine.prepare(PROMPT).input_ids[0].tolist()
    vocab = compiler.vocabulary.info.vocab_size
    processor = compiler.processor(SCHEMA)
    steps_in = [(torch.tensor([prompt + reply[:index]]), torch.zeros(1, vocab)) for index in range(len(reply) + 1)]
    start = time.perf_counter()
    for input_ids, scores in steps_in:
        processor(input_ids, scores)
    return (time.perf_counter() - start) / len(steps_in)


def run(args: argparse.Namespace) -> str:
    engine = SRAEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    engine.json_schemas.vocabulary  # noqa: B018 -- reads the tokenizer for xgrammar (once per engine)
    read = time.perf_counter() - start
    start = time.perf_counter()
    engine.json_schemas.compile(SCHEMA)
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    engine.json_schemas.compile(SCHEMA)
    cached = time.perf_counter() - start
    per_call = processor_seconds(engine, args.tokens)
    engine.complete(PROMPT, max_new_tokens=4)  # warm-up
    plain: list[float] = []
    constrained: list[float] = []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        plain.append(per_token_seconds(engine, args.tokens, args.concurrency))
        constrained.append(per_token_seconds(engine, args.tokens, args.concurrency, json_schema=SCHEMA))
    plain_s, constrained_s = statistics.median(plain), statistics.median(constrained)
    return "\n".join(
        [
            f"Model: {engine.name}, {engine.model.dtype}, {engine.device}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; {args.tokens} tokens per request, {args.concurrency} at once, "
            f"median of {args.repeats} interleaved runs.",
            "",
            "| requests | decode ms / token | ratio to plain |",
            "|---|---:|---:|",
            f"| plain | {plain_s * 1000:.1f} | 1.000 |",
            f"| json_schema | {constrained_s * 1000:.1f} | {constrained_s / plain_s:.3f} |",
            "",
            f"Reading the tokenizer for xgrammar (once per engine): {read * 1000:.0f} ms; compiling the schema: "
            f"{compiled * 1000:.1f} ms (again, from the cache: {cached * 1000:.2f} ms); the grammar processor "
            f"alone: {per_call * 1000:.3f} ms per token.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model to load (default: smollm2-135m)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--tokens", type=int, default=64, help="tokens each request decodes")
    parser.add_argument("--concurrency", type=int, default=1, help="requests of a kind run at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    report = run(args)
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(report + "\n")


if __name__ == "__main__":
    main()
