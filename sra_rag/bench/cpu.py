"""Answers in seconds on a CPU: the prefix cache and the weight formats, each against its baseline
in the same run (``make bench`` runs both; figures in docs/bench/cpu-prefix.md and cpu-weights.md).

``python -m sra_rag.bench.cpu --chat``: a chat over one set of retrieved chunks (the bundled sample
documents, ~4k tokens), five questions in turn, on one model behind two engines, one with the
prefix cache and one without; for each question, the time to first token of both (interleaved: the
uncached engine answers, then the cached one), their ratio and whether the greedy replies are equal.

``python -m sra_rag.bench.cpu --weights``: prompt tokens/s (a prefill) and decode tokens/s at batch 1
of the same model loaded with each weight format, interleaved repeats, and llama.cpp on the same
GGUF file where ``llama-cpp-python`` is installed; then how often each format's greedy answers
equal fp32's on held-out prompts and how many are right: ``--agreement reader`` (the synthetic reader
suite and the demo questions) or ``--agreement nq`` (the first NQ-Open test prompts, real questions
over 10 Wikipedia passages, through the reader as :mod:`sra_rag.evaluation.nq_run` answers them).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sra_rag.config import SRAConfig
from sra_rag.engine import SRAEngine
from sra_rag.generation.compute import in_passing_thread
from sra_rag.generation.request import Request, sampling_settings
from sra_rag.layout import TextLayout

CHAT_QUESTIONS = (
    "How many days of paid leave does a full-time Quillfeather employee get each year?",
    "Which radio band does the Windvane W2 use, and why was it chosen?",
    "Who approves expense claims, and by when must they be filed?",
    "What happened at the Gannet Point mast?",
    "Which festival does Marrowick hold in winter?",
)


def sample_chunks(engine: SRAEngine, tokens: int) -> list[str]:
    """The bundled sample documents in name order until about ``tokens`` tokens (the last one cut)."""
    from sra_rag.rag.samples import samples_path

    chunks: list[str] = []
    total = 0
    for path in sorted(Path(samples_path()).iterdir()):
        ids = engine.tokenizer(path.read_text().strip(), add_special_tokens=False)["input_ids"]
        text = engine.tokenizer.decode(ids[: tokens - total])
        chunks.append(f"[{len(chunks) + 1}] {path.name}\n{text}")
        total += min(len(ids), tokens - total)
        if total >= tokens:
            break
    return chunks


def chat_messages(question: str, chunks: list[str]) -> list[dict[str, str]]:
    sources = "\n\n".join(chunks)
    return [
        {"role": "system", "content": "Answer the question from the sources below; cite them like [1]."},
        {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
    ]


def _first_token(engine: SRAEngine, request: Request) -> tuple[float, str]:
    """Seconds from submitting ``request`` to its first generated text, and the whole greedy reply."""
    start = time.perf_counter()
    stream = engine.submit(request)
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, stream.text


def chat(model: str | None, tokens: int, new_tokens: int, preset: str, threads: int | None) -> list[dict[str, Any]]:
    """The chat-with-documents rows (see the module's docstring)."""
    cached = SRAEngine.from_pretrained(model, sra=SRAConfig.preset(preset), num_threads=threads, weights="fp32")
    uncached = SRAEngine(cached.model, cached.tokenizer, sra=cached.sra, name=cached.name, prefix_cache_bytes=0)
    chunks = sample_chunks(cached, tokens)
    rows = []
    stats = cached.prefix_cache_stats
    assert stats is not None
    for index, question in enumerate(CHAT_QUESTIONS):
        settings = dict(max_new_tokens=new_tokens, layout=TextLayout(question=question, documents=tuple(chunks)))
        request = cached.request(chat_messages(question, chunks), **settings)
        before = stats.cached_tokens
        cold, cold_text = _first_token(uncached, request)
        warm, warm_text = _first_token(cached, request)
        rows.append(
            {
                "question": index + 1,
                "prompt_tokens": request.num_prompt_tokens,
                "cached_tokens": stats.cached_tokens - before,
                "ttft_uncached_s": cold,
                "ttft_cached_s": warm,
                "ratio": warm / cold,
                "same_reply": warm_text == cold_text,
                "cache_mib": stats.bytes / 2**20,
            }
        )
        print(rows[-1], flush=True)
    uncached.close()
    cached.close()
    return rows


def _prompt(engine: SRAEngine, length: int) -> tuple[int, ...]:
    from sra_rag.bench.engine import prompt_ids

    return tuple(prompt_ids(engine, length)[0].tolist())


def _speed(engine: SRAEngine, ids: tuple[int, ...], new_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s of the prefill, decode tokens/s after it) of one greedy request."""
    request = Request(ids, SRAConfig.preset("off"), sampling_settings(max_new_tokens=new_tokens + 1))
    start = time.perf_counter()
    stream = engine.submit(request)
    for _ in stream:
        pass
    total = time.perf_counter() - start
    prefill = stream.prefill_seconds or 0.0
    return len(ids) / prefill, max(stream.completion_tokens - 1, 1) / (total - prefill)


def _llama_cpp(gguf: Path, ids: tuple[int, ...], new_tokens: int, threads: int) -> tuple[float, float] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    context = len(ids) + new_tokens + 8
    # One batch holds the whole context, so the scores of the last token evaluated are at its index.
    llm = in_passing_thread(
        Llama, model_path=str(gguf), n_ctx=context, n_batch=context, n_threads=threads, verbose=False
    )

    def run() -> tuple[float, float]:
        # llama.cpp's kernels run on OpenMP too: in a passing thread, its threads end with each run
        # and leave the engines' workers the only pool (sra_rag.generation.compute)
        return in_passing_thread(timed)

    def timed() -> tuple[float, float]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(list(ids))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(torch.tensor(llm.scores[llm.n_tokens - 1]).argmax())
            llm.eval([token])
        return len(ids) / prefill, new_tokens / (time.perf_counter() - start)

    return run  # type: ignore[return-value]


def weights(
    model: str, formats: list[str], prompt: int, new_tokens: int, repeats: int, threads: int
) -> list[dict[str, Any]]:
    """Prompt and decode tokens/s per weight format (and llama.cpp), interleaved repeats."""
    from sra_rag.models import resolve_source

    engines = {  # no prefix cache: every repeat prefills the whole prompt
        name: SRAEngine.from_pretrained(model, weights=name, num_threads=threads, prefix_cache_bytes=0)  # type: ignore[arg-type]
        for name in formats
    }
    ids = _prompt(next(iter(engines.values())), prompt)
    runners: dict[str, Any] = {name: (lambda e=engine: _speed(e, ids, new_tokens)) for name, engine in engines.items()}
    source = resolve_source(model)
    if source.gguf_file is not None:
        llama = _llama_cpp(Path(source.path) / source.gguf_file, ids, new_tokens, threads)
        if llama is not None:
            runners["llama.cpp (same GGUF)"] = llama
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in runners.items():
            results[name].append(run())
    base = statistics.median(decode for _, decode in results[formats[0]])
    rows = []
    for name, values in results.items():
        prompt_speed = statistics.median(p for p, _ in values)
        decode = statistics.median(d for _, d in values)
        rows.append({"weights": name, "prompt_tok_s": prompt_speed, "decode_tok_s": decode, "decode_x": decode / base})
        print(rows[-1], flush=True)
    for engine in engines.values():
        engine.close()
    return rows


def _against_fp32(
    model: str, formats: list[str], threads: int, respond: Callable[[SRAEngine], tuple[list[str], int]], right: str
) -> list[dict[str, Any]]:
    """Load ``model`` in each format in turn, get ``respond(engine)`` (its greedy replies and how many
    are right, out of ``right``) and compare every format's replies with the first format's."""
    replies: dict[str, list[str]] = {}
    correct: dict[str, int] = {}
    for name in formats:
        engine = SRAEngine.from_pretrained(model, weights=name, num_threads=threads)  # type: ignore[arg-type]
        replies[name], correct[name] = respond(engine)
        engine.close()
        del engine
        gc.collect()
    rows = []
    for name in formats:
        same = sum(a == b for a, b in zip(replies[name], replies[formats[0]], strict=True))
        rows.append(
            {"weights": name, "same_as_fp32": f"{same}/{len(replies[name])}", "right": f"{correct[name]}/{right}"}
        )
        print(rows[-1], flush=True)
    return rows


def agreement(model: str, formats: list[str], examples: int, threads: int) -> list[dict[str, Any]]:
    """Greedy answers of each format against fp32's on held-out prompts: the reader suite (``examples``
    prompts of 3 to 8 retrieved biographies; ``right``: the reader answers) and the demo questions over
    the bundled samples."""
    from sra_rag.evaluation.runner import Setting, run_one
    from sra_rag.evaluation.suites import reader

    def respond(engine: SRAEngine) -> tuple[list[str], int]:
        cases = reader(engine.count_tokens, [3, 5, 8], [0.0, 0.5, 1.0], per_cell=3, seed=28)[:examples]
        setting = Setting("recommended", SRAConfig.preset("recommended"))
        records = [run_one(engine, example, setting) for example in cases]
        chunks = sample_chunks(engine, 4000)
        demo = [
            engine.generate(chat_messages(question, chunks), max_new_tokens=48, tail_from=question)
            for question in CHAT_QUESTIONS[:2]
        ]
        return [record.output for record in records] + demo, sum(all(record.hits) for record in records)

    return _against_fp32(model, formats, threads, respond, str(examples))


def nq_agreement(model: str, formats: list[str], examples: int, threads: int) -> list[dict[str, Any]]:
    """Greedy answers of each format against fp32's on the first ``examples`` NQ-Open test prompts
    (the model's default SRA settings, the runs' decoding), and how many each gets right."""
    from sra_rag.evaluation.nq import load
    from sra_rag.evaluation.nq_run import answer

    prompts = load("test")[:examples]

    def respond(engine: SRAEngine) -> tuple[list[str], int]:
        records = [answer(engine, example, engine.defaults.preset) for example in prompts]
        return [record.reply for record in records], sum(record.correct for record in records)

    return _against_fp32(model, formats, threads, respond, str(len(prompts)))


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows``."""
    keys = list(rows[0])

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[key]) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chat", action="store_true", help="prefix cache: five questions over the same chunks")
    parser.add_argument("--weights", action="store_true", help="tokens/s and agreement per weight format")
    parser.add_argument("--chat-model", default="smollm2-135m", help="model of --chat (default: smollm2-135m)")
    parser.add_argument("--chat-tokens", type=int, default=3900)
    parser.add_argument("--preset", default="recommended")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="model of --weights")
    parser.add_argument("--formats", nargs="+", default=["fp32", "bf16", "int8", "int4"])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=20, help="prompts of the agreement check")
    parser.add_argument("--agreement", choices=["reader", "nq", "none"], default="reader", help="agreement prompts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.chat and not args.weights:
        args.chat = args.weights = True
    if args.chat:
        print(table(chat(args.chat_model, args.chat_tokens, args.new_tokens, args.preset, args.threads)))
    if args.weights:
        print(table(weights(args.model, args.formats, args.prompt, args.new_tokens, args.repeats, args.threads)))
        if args.agreement == "reader":
            print(table(agreement(args.model, args.formats, args.examples, args.threads)))
        elif args.agreement == "nq":
            print(table(nq_agreement(args.model, args.formats, args.examples, args.threads)))


if __name__ == "__main__":
    main()
