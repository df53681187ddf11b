"""Speed and memory of the engine: SRA against stock SDPA, and batched serving against one request
at a time, each measured on the same model in the same run.

``python -m sra_rag.bench.engine`` (``make bench``): prefill time, peak memory and decode speed of SRA
against stock SDPA. Every figure is also given as a ratio to SDPA measured in the same run. Time:
median of interleaved repeats (SDPA and SRA alternate, so drifting machine load hits both alike).
Memory: each (implementation, length) runs in a fresh process whose large allocations are returned
to the OS at once (``MALLOC_MMAP_THRESHOLD_``), and a sampler thread reads the resident set every
millisecond; the figure is the peak above the resident set before the prefill (the model's own
weights excluded). Decoding goes through the engine's one generation path.

``--kernels torch triton`` runs every SRA row once per implementation of the edited rows
(``SRA_RAG_KERNEL``: the chunked torch path, the fused Triton kernels), labelled ``sra@torch``,
``sra@triton``, ...; on a CPU the kernels need Triton's interpreter (``TRITON_INTERPRET=1``), which only
checks that the comparison runs.

``python -m sra_rag.bench.engine --throughput``: requests per second, generated tokens per second,
latency and time to first token of concurrent requests (short chat requests and ~1k-token RAG-like
prompts, SRA on and off), as ratios to the same requests run one after another in the same run
(see :func:`throughput`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.logits_process import MinNewTokensLengthLogitsProcessor

from sra_rag.config import SRAConfig
from sra_rag.engine import SRAEngine, _torch_dtype
from sra_rag.generation.request import Request, sampling_settings
from sra_rag.generation.scheduler import DEFAULT_MAX_BATCH_SIZE
from sra_rag.kernels import KERNEL_ENV
from sra_rag.layout import PromptLayout, TextLayout
from sra_rag.readout.recorder import ReadoutComplete, ReadoutRecorder

IMPLEMENTATIONS = ("sdpa", "sra", "sra_reference", "sra+readout", "sra+documents", "sra+read")
# Rows of the prefill table that run the fast path with a prompt layout (10 equal documents, then a
# 10-token question and 30 more tokens): the readout alone under stock attention, and document
# reattention (the readout plus the boost). Their SRA settings are these presets, not the spec's.
LAYOUT_VARIANTS = {"sra+readout": "off", "sra+documents": "documents", "sra+read": "off"}
# The read-only pass of attention-ordered stuffing (SRAEngine.read): it stops at the readout band's end.
READ_ONLY = "sra+read"
LAYOUT_DOCUMENTS = 10
LAYOUT_TAIL = 40
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
    sentences: list[str] = []
    words = 0
    while True:
        # Every word is at least one token, so text of ``length`` words is long enough: tokenise then.
        while words < length:
            count = rng.randint(6, 14)
            sentences.append(" ".join(rng.choice(WORDS) for _ in range(count)).capitalize() + ".")
            words += count
        ids = engine.tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            return torch.tensor([ids[:length]], device=engine.device)
        words = length + len(ids)  # not reached with real tokenizers; grow and try again


def benchmark_layout(length: int) -> PromptLayout:
    """The layout of a ``length``-token benchmark prompt: :data:`LAYOUT_DOCUMENTS` equal documents
    after 16 leading tokens, then the question's 10 tokens and 30 more (the generation prompt)."""
    stop = length - LAYOUT_TAIL
    edges = [16 + (stop - 16) * index // LAYOUT_DOCUMENTS for index in range(LAYOUT_DOCUMENTS + 1)]
    return PromptLayout(length, question=(stop, stop + 10), documents=tuple(zip(edges, edges[1:], strict=False)))


@contextlib.contextmanager
def kernel_setting(kernel: str) -> Iterator[None]:
    """``SRA_RAG_KERNEL=kernel`` inside the block (as it was where ``kernel`` is empty)."""
    previous = os.environ.get(KERNEL_ENV)
    if kernel:
        os.environ[KERNEL_ENV] = kernel
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = previous


def implementation_rows(args: argparse.Namespace) -> list[str]:
    """The prefill table's rows: :data:`IMPLEMENTATIONS` (less the reference with ``--no-reference``),
    each fast-path row once per ``--kernels`` entry as ``"<row>@<kernel>"``."""
    rows = [i for i in IMPLEMENTATIONS if i != "sra_reference" or not args.no_reference]
    kernels = getattr(args, "kernels", None)
    if not kernels:
        return rows
    fast = [i for i in rows if i not in ("sdpa", "sra_reference")]
    return [f"{i}@{kernel}" if i in fast else i for i in rows for kernel in (kernels if i in fast else [""])]


def _prefill(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, config: SRAConfig) -> float:
    implementation, _, kernel = implementation.partition("@")
    with kernel_setting(kernel):
        return _prefill_once(engine, implementation, input_ids, config)


def _prefill_once(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, config: SRAConfig) -> float:
    extra: dict[str, object] = {}
    if implementation in LAYOUT_VARIANTS:
        layout = benchmark_layout(input_ids.shape[1])
        config = SRAConfig.preset(LAYOUT_VARIANTS[implementation])
        until = engine.readout_profile.layers[1] if implementation == READ_ONLY else None
        recorder = ReadoutRecorder(layout, profile=engine.readout_profile, until=until)
        extra = {"sra_layout": layout, "sra_readout": recorder}
        implementation = "sra"
    engine.model.set_attn_implementation(implementation)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), contextlib.suppress(ReadoutComplete):
        engine.model(input_ids, logits_to_keep=1, sra_config=config, **extra)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _decode(engine: SRAEngine, implementation: str, input_ids: torch.Tensor, steps: int, config: SRAConfig) -> float:
    """Tokens per second of up to ``steps`` greedy decoding steps after a prefill, through the
    engine's generation path (the prefill's time is left out)."""
    engine.model.set_attn_implementation(implementation)
    request = Request(tuple(input_ids[0].tolist()), config, sampling_settings(max_new_tokens=steps + 1))
    start = time.perf_counter()
    stream = engine.submit(request)
    for _ in stream:
        pass
    seconds = time.perf_counter() - start - (stream.prefill_seconds or 0.0)
    return max(stream.completion_tokens - 1, 1) / seconds


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


# Random-initialised models for speed and memory on hardware that has no model files (a GPU machine
# without network): the shapes of public checkpoints, random weights, and a word-level tokenizer over
# :data:`WORDS` (the benchmark's prompts are made of those words).
RANDOM_MODELS: dict[str, dict[str, Any]] = {
    # Llama 3.2 1B: 1.24B parameters, grouped heads (32 query, 8 key-value), 128k vocabulary.
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
    },
    # A few-megabyte stand-in with the same structure, for checking the benchmark itself on a CPU.
    "llama-tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 65536,
    },
}


def random_engine(
    name: str, device: str | None, dtype: str | None, seed: int = 0, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> SRAEngine:
    """An engine around a random-initialised :data:`RANDOM_MODELS` model (no files needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if name not in RANDOM_MODELS:
        raise ValueError(f"unknown random model {name!r}; choose one of {', '.join(RANDOM_MODELS)}")
    vocabulary = {"<unk>": 0, "</s>": 1, ".": 2}
    for word in WORDS:
        vocabulary.setdefault(word, len(vocabulary))
        vocabulary.setdefault(word.capitalize(), len(vocabulary))
    words = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    with target:
        model = LlamaForCausalLM(LlamaConfig(**RANDOM_MODELS[name], eos_token_id=1)).to(_torch_dtype(dtype, target))
    return SRAEngine(model, tokenizer, name=f"random {name}", max_batch_size=max_batch_size)


def _load(args: argparse.Namespace, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> SRAEngine:
    """The engine ``--random-model`` or ``--model`` names."""
    if args.random_model:
        return random_engine(args.random_model, args.device, args.dtype, max_batch_size=max_batch_size)
    return SRAEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype, max_batch_size=max_batch_size)


def memory_worker(args: argparse.Namespace) -> None:
    engine = _load(args)
    config = SRAConfig()
    warm = prompt_ids(engine, 256)  # long enough for benchmark_layout's ten documents
    input_ids = prompt_ids(engine, args.length)
    _prefill(engine, args.implementation, warm, config)
    print(json.dumps({"peak": _peak_memory(engine, args.implementation, input_ids, config)}))


def measure_memory(args: argparse.Namespace, engine: SRAEngine, implementation: str, length: int) -> float:
    """Peak extra MiB of one prefill: on a GPU from the allocator's own peak (in this process, the
    engine already loaded); on a CPU from the resident set of a fresh process."""
    if engine.device.type == "cuda":
        return _peak_memory(engine, implementation, prompt_ids(engine, length), SRAConfig()) / 2**20
    command = [
        sys.executable,
        "-m",
        "sra_rag.bench.engine",
        "--memory-worker",
        implementation,
        "--lengths",
        str(length),
    ]
    for flag in ("model", "device", "dtype", "random_model"):
        if getattr(args, flag):
            command += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"] / 2**20


def run(args: argparse.Namespace) -> str:
    engine = _load(args)
    config = SRAConfig()
    implementations = implementation_rows(args)
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
            peak = measure_memory(args, engine, implementation, length)
            rows.append(Row(length, implementation, statistics.median(times[implementation]), peak))
            print(f"  {length:>6} {implementation:<20} {rows[-1].prefill_s:8.2f} s {peak:9.1f} MiB", file=sys.stderr)

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
    device = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else engine.device
    lines = [
        f"Model: {engine.name}, {engine.model.dtype}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; SRA settings: spec defaults (sra, sra_reference); median of "
        f"{args.repeats} interleaved runs. sra+readout: stock attention plus the readout (the question's "
        f"last {LAYOUT_TAIL} rows over {LAYOUT_DOCUMENTS} documents, every layer); sra+documents: the "
        "'documents' preset (the readout plus document reattention after the profile's band); sra+read: "
        "the read-only pass of attention-ordered stuffing (up to the band's end, layers "
        f"{engine.readout_profile.layers[1]} of {engine.readout_profile.num_layers}), which costs it that on top "
        "of one prefill."
        + (
            f" <row>@torch / <row>@triton: {KERNEL_ENV}=torch (the chunked torch path) / =triton (the fused "
            "Triton kernels" + (", under Triton's interpreter" if engine.device.type != "cuda" else "") + ")."
            if getattr(args, "kernels", None)
            else ""
        ),
        "",
        "| tokens | implementation | prefill (s) | time / SDPA | peak extra memory (MiB) | memory / SDPA |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = stock[(row.length, "sdpa")]
        lines.append(
            f"| {row.length} | {row.implementation} | {row.prefill_s:.3g} | {row.prefill_s / base.prefill_s:.3f} "
            f"| {row.peak_mib:.1f} | {row.peak_mib / base.peak_mib:.3f} |"
        )
    lines += [
        "",
        f"Decode after a {args.decode_prompt}-token SRA prefill, {args.decode_tokens} greedy steps: "
        f"SDPA {decode['sdpa']:.1f} tok/s, SRA {decode['sra']:.1f} tok/s, "
        f"SRA / SDPA = {decode['sra'] / decode['sdpa']:.3f}.",
    ]
    return "\n".join(lines)


# -- throughput: concurrent requests against the same requests one after another ---------------------

CHAT_QUESTIONS = (
    "Why is the sky blue?",
    "Give me three tips for a good night's sleep.",
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "Name three colours of the rainbow.",
    "What does a lighthouse keeper do?",
    "Suggest a name for a grey cat.",
    "Why do we have seasons?",
    "What is a prime number?",
    "Tell me a fun fact about octopuses.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Describe a ferry in one sentence.",
    "What is the opposite of cold?",
)
RAG_QUESTION = "Question: Which three words appear most often in the notes above?"


@dataclass
class Load:
    """One measured run of ``len(latencies)`` requests with ``concurrency`` of them in flight (a closed
    loop: each client starts its next request when its previous one ends)."""

    workload: str
    sra: str
    concurrency: int
    seconds: float
    tokens: int
    latencies: list[float]
    first_pieces: list[float]
    texts: list[str]
    rows_per_step: float

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def workload_requests(
    engine: SRAEngine, workload: str, count: int, new_tokens: int, rag_tokens: int, config: SRAConfig
) -> list[Request]:
    """``count`` distinct requests: ``chat`` (a short question each) or ``rag`` (~``rag_tokens``
    tokens of notes and a question, the question marked for SRA's question tail), greedy, each
    generating exactly ``new_tokens`` tokens (the end-of-sequence token is held off until then by
    transformers' ``MinNewTokensLengthLogitsProcessor``, so every run does the same work)."""

    def rag_prompt(notes: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Notes:\n{notes}\n\n{RAG_QUESTION}\nAnswer in one sentence."}]

    overhead = engine.count_tokens(rag_prompt(""))
    requests = []
    for index in range(count):
        if workload == "chat":
            prompt = [{"role": "user", "content": CHAT_QUESTIONS[index % len(CHAT_QUESTIONS)]}]
            layout = None
        else:
            prompt = rag_prompt(
                engine.tokenizer.decode(prompt_ids(engine, max(rag_tokens - overhead, 1), seed=index)[0])
            )
            layout = TextLayout(question=RAG_QUESTION)
        length = engine.prepare(prompt).num_tokens
        hold = MinNewTokensLengthLogitsProcessor(length, new_tokens, sorted(engine.eos_token_ids), str(engine.device))
        requests.append(
            engine.request(prompt, max_new_tokens=new_tokens, sra=config, layout=layout, logits_processors=[hold])
        )
    return requests


def run_load(engine: SRAEngine, requests: list[Request], concurrency: int, workload: str, sra: str) -> Load:
    """Run ``requests`` with ``concurrency`` client threads, each submitting its next request when its
    previous one has finished; latency and time to the first text piece are measured per request."""
    results: list[tuple[float, float, int, str] | None] = [None] * len(requests)
    pending = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(pending, None)
            if index is None:
                return
            start = time.perf_counter()
            stream = engine.submit(requests[index])
            first = None
            for _ in stream:
                if first is None:
                    first = time.perf_counter()
            end = time.perf_counter()
            results[index] = (end - start, (first or end) - start, stream.completion_tokens, stream.text)

    stats = engine.scheduler.stats
    steps, rows = stats.decode_steps, stats.decoded_rows
    start = time.perf_counter()
    clients = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    seconds = time.perf_counter() - start
    done = [result for result in results if result is not None]
    if len(done) != len(requests):
        raise RuntimeError("some benchmark requests did not finish")
    steps, rows = stats.decode_steps - steps, stats.decoded_rows - rows
    return Load(
        workload,
        sra,
        concurrency,
        seconds,
        sum(result[2] for result in done),
        [result[0] for result in done],
        [result[1] for result in done],
        [result[3] for result in done],
        rows / steps if steps else 0.0,
    )


def _percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in (0, 1])."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def throughput(args: argparse.Namespace) -> str:
    """Every (workload, SRA setting, concurrency) with the same ``--requests`` requests; concurrency 1
    (one after another) is the baseline of each ratio and is always run first."""
    engine = _load(args, max_batch_size=max(args.concurrency))
    levels = sorted(set(args.concurrency) | {1})
    settings = {"off": SRAConfig.preset("off"), args.sra_preset: SRAConfig.preset(args.sra_preset)}
    engine.generate("Warm up.", max_new_tokens=4)
    loads: list[Load] = []
    for workload in args.workloads:
        for name, config in settings.items():
            requests = workload_requests(engine, workload, args.requests, args.new_tokens, args.rag_tokens, config)
            for concurrency in levels:
                load = run_load(engine, requests, concurrency, workload, name)
                loads.append(load)
                print(
                    f"  {workload:<5} {name:<12} x{concurrency:<3} {load.seconds:7.1f} s "
                    f"{load.tokens_per_s:7.1f} tok/s",
                    file=sys.stderr,
                )
    return format_throughput(loads, engine, args)


def format_throughput(loads: list[Load], engine: SRAEngine, args: argparse.Namespace) -> str:
    sequential = {(load.workload, load.sra): load for load in loads if load.concurrency == 1}
    device = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else engine.device
    lines = [
        f"Model: {engine.name}, {engine.model.dtype}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.requests} requests per row, greedy, {args.new_tokens} "
        f"new tokens each; chat: one short question; rag: ~{args.rag_tokens}-token prompt. Ratios: against the same "
        "requests one after another (x1) in the same run.",
        "",
        "| workload | SRA | concurrent | req/s | gen tok/s | tok/s / x1 | p50 latency (s) | p95 latency (s) "
        "| p50 first piece (s) | p95 first piece (s) | rows per step | same text as x1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in loads:
        base = sequential[(load.workload, load.sra)]
        same = sum(text == other for text, other in zip(load.texts, base.texts, strict=True))
        lines.append(
            f"| {load.workload} | {load.sra} | {load.concurrency} | {load.requests_per_s:.2f} "
            f"| {load.tokens_per_s:.1f} | {load.tokens_per_s / base.tokens_per_s:.2f} "
            f"| {_percentile(load.latencies, 0.5):.2f} | {_percentile(load.latencies, 0.95):.2f} "
            f"| {_percentile(load.first_pieces, 0.5):.2f} | {_percentile(load.first_pieces, 0.95):.2f} "
            f"| {load.rows_per_step:.1f} | {same}/{len(load.texts)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="hub id, folder, .gguf or smollm2-135m / qwen2.5-coder-0.5b (default: smollm2-135m)",
    )
    parser.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        default=None,
        help="a random-initialised model of that shape instead of --model (no model files needed)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-prompt", type=int, default=1024)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--no-reference", action="store_true", help="skip the literal O(n^2) reference")
    parser.add_argument(
        "--kernels",
        nargs="+",
        choices=["torch", "triton"],
        default=None,
        help=f"run each SRA row with each of these {KERNEL_ENV} settings (default: the environment's)",
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    throughput_options = parser.add_argument_group("throughput (--throughput)")
    throughput_options.add_argument(
        "--throughput", action="store_true", help="measure concurrent requests instead of prefill and memory"
    )
    throughput_options.add_argument("--requests", type=int, default=16, help="requests per row (default 16)")
    throughput_options.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    throughput_options.add_argument("--workloads", nargs="+", choices=["chat", "rag"], default=["chat", "rag"])
    throughput_options.add_argument("--new-tokens", type=int, default=64, help="max new tokens per request")
    throughput_options.add_argument("--rag-tokens", type=int, default=1024, help="prompt tokens of a rag request")
    throughput_options.add_argument(
        "--sra-preset", default="recommended", help="the SRA-on setting (default recommended)"
    )
    parser.add_argument("--memory-worker", dest="implementation", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.implementation:
        args.length = args.lengths[0]
        memory_worker(args)
        return
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be positive")
    table = throughput(args) if args.throughput else run(args)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
