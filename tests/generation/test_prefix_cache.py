"""Automatic prefix caching: the cache's keys, budget and eviction on fake KV, which rows a request may
share, and on tiny random models, that a cached prefix never changes a reply (chat over the same
documents, five questions in turn, cached against uncached)."""

from __future__ import annotations

import random

import pytest
import torch

from sra_rag import SRAConfig, SRAEngine
from sra_rag.generation.prefix_cache import PrefixCache, stock_prefix
from sra_rag.generation.request import Request, sampling_settings
from sra_rag.layout import PromptLayout, TextLayout
from sra_rag.readout.calibration import ReadoutProfile

LAYERS = 4


def fake_kv(ids: list[int]):
    """``kv_of`` for :meth:`PrefixCache.insert`: KV whose values are the token ids, so a lookup's
    result says which tokens it holds. ``(layers, 2, kv_heads=1, tokens, head_dim=2)``."""

    def kv_of(start: int, stop: int) -> torch.Tensor:
        tokens = torch.tensor(ids[start:stop], dtype=torch.float32)
        return tokens[None, None, None, :, None].expand(LAYERS, 2, 1, stop - start, 2).clone()

    return kv_of


BLOCK_BYTES = LAYERS * 2 * 1 * 4 * 2 * 4  # 4-token blocks of fake_kv, fp32


def test_lookup_finds_the_longest_cached_prefix_in_whole_blocks():
    cache = PrefixCache(budget_bytes=1 << 20, block_tokens=4)
    first = list(range(10))
    assert cache.insert(first, 10, fake_kv(first)) == 2  # two whole blocks of 4; the last 2 tokens are not kept
    assert cache.stats.bytes == 2 * BLOCK_BYTES and cache.stats.blocks == 2
    kv = cache.lookup([*range(8), 99, 98], limit=9)
    assert kv is not None and kv.shape == (LAYERS, 2, 1, 8, 2)
    assert kv[0, 0, 0, :, 0].tolist() == list(range(8))
    assert cache.lookup([*range(8)], limit=7).shape[3] == 4  # the limit cuts to whole blocks
    assert cache.lookup([0, 1, 2, 9, 4, 5, 6, 7], limit=8) is None  # the first block differs
    # Same tokens after a different prefix are another block: keys are chains, not block contents.
    assert cache.lookup([5, 5, 5, 5, 4, 5, 6, 7], limit=8) is None
    assert cache.stats.lookups == 4 and cache.stats.hits == 2
    assert cache.stats.cached_tokens == 12 and cache.stats.prompt_tokens == 34
    assert cache.stats.hit_rate == pytest.approx(12 / 34)


def test_budget_bounds_the_bytes_and_evicts_least_recently_used_leaves():
    cache = PrefixCache(budget_bytes=3 * BLOCK_BYTES, block_tokens=4)
    a, b = [1] * 8, [2] * 8
    cache.insert(a, 8, fake_kv(a))
    cache.insert(b, 4, fake_kv(b))
    assert cache.stats.blocks == 3
    assert cache.lookup(a, 8) is not None  # a is now the most recently used
    cache.insert(b, 8, fake_kv(b))  # one more block: b's first block must stay (its chain), a's leaf goes
    assert cache.stats.bytes <= cache.budget_bytes and cache.stats.evictions == 1
    assert cache.lookup(b, 8).shape[3] == 8
    assert cache.lookup(a, 8).shape[3] == 4
    # A chain longer than the budget keeps what fits.
    small = PrefixCache(budget_bytes=2 * BLOCK_BYTES, block_tokens=4)
    long = list(range(40))
    assert small.insert(long, 40, fake_kv(long)) == 2 and small.stats.bytes == 2 * BLOCK_BYTES


def test_soak_of_mixed_prompts_stays_inside_the_budget():
    rng = random.Random(0)
    cache = PrefixCache(budget_bytes=10 * BLOCK_BYTES, block_tokens=4)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(4, 30))] for _ in range(6)]
    for _ in range(200):
        ids = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
        limit = rng.randrange(len(ids) + 1)
        kv = cache.lookup(ids, limit)
        if kv is not None:
            assert kv[0, 0, 0, :, 0].tolist() == ids[: kv.shape[3]]
        cache.insert(ids, limit, fake_kv(ids))
        assert cache.stats.bytes <= cache.budget_bytes
        assert cache.stats.bytes == sum(block.kv.nbytes for block in cache._blocks.values())
    assert cache.stats.hits > 0 and cache.stats.evictions > 0


def _request(config: SRAConfig, n: int = 400, question: tuple[int, int] | None = (300, 320), readout: bool = False):
    layout = PromptLayout(n, question=question, documents=((10, 290),)) if question else None
    profile = ReadoutProfile.uncalibrated("tiny", 30) if readout else None
    return Request(tuple(range(n)), config, sampling_settings(), layout, readout=profile)


def test_stock_prefix_is_what_no_edit_or_readout_touches():
    assert stock_prefix(_request(SRAConfig(enabled=False)), 30) == 400
    assert stock_prefix(_request(SRAConfig.preset("recommended")), 30) == 300  # the question tail
    assert stock_prefix(_request(SRAConfig.preset("off"), readout=True), 30) == 300  # the readout's rows
    assert stock_prefix(_request(SRAConfig.preset("off"), question=None), 30) == 400
    paper = stock_prefix(_request(SRAConfig()), 30)  # the inner loop edits document rows early
    assert 100 < paper < 200
    assert stock_prefix(_request(SRAConfig(), question=None), 30) == paper
    assert stock_prefix(_request(SRAConfig(inner=False)), 30) == 200  # the fixed tail: n - 200


# -- on tiny random models: cached replies are the uncached ones ---------------------------------------

WORDS = [
    "harbour",
    "ferry",
    "log",
    "lighthouse",
    "keeper",
    "house",
    "green",
    "door",
    "leave",
    "team",
    "lead",
    "October",
    "quick",
    "brown",
    "fox",
]


def documents(seed: int = 0, count: int = 3, words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(count)]


QUESTIONS = [
    "What colour is the door?",
    "Who keeps the ferry log?",
    "When is leave approved?",
    "What does the quick brown fox do?",
    "Which house has a green door?",
]


def chat(question: str, docs: list[str]) -> list[dict[str, str]]:
    sources = "\n\n".join(f"[{index + 1}] {doc}" for index, doc in enumerate(docs))
    return [
        {"role": "system", "content": "Answer from the sources and cite them."},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}"},
    ]


def finished(stream):
    for _ in stream:
        pass
    return stream


QUESTION_TAIL = SRAConfig(begin_length=4, tail="question", inner=False, outer_target="attention", beta_outer=2.0)


@pytest.fixture(scope="module")
def engines(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model("llama", len(tiny_tokenizer))
    cached = SRAEngine(model, tiny_tokenizer, name="tiny-llama")
    cached.scheduler.prefix_cache.block_tokens = 16
    uncached = SRAEngine(model, tiny_tokenizer, name="tiny-llama", prefix_cache_bytes=0)
    yield cached, uncached
    cached.close()
    uncached.close()


@pytest.mark.parametrize(
    "sra",
    [QUESTION_TAIL, SRAConfig(begin_length=4, tail_length=8), SRAConfig.preset("documents"), SRAConfig.preset("off")],
    ids=["question-tail", "paper-inner-loop", "documents", "off"],
)
def test_five_questions_over_the_same_documents_reply_as_without_the_cache(engines, sra):
    cached, uncached = engines
    assert uncached.prefix_cache_stats is None
    docs = documents(seed=hash(sra.model_dump_json()) % 1000)
    stats = cached.prefix_cache_stats
    assert stats is not None
    before = stats.cached_tokens
    for question in QUESTIONS:
        settings = dict(
            sra=sra,
            max_new_tokens=12,
            logprobs=True,
            layout=TextLayout(question=question, documents=tuple(docs)),
        )
        want = finished(uncached.stream(chat(question, docs), **settings))
        got = finished(cached.stream(chat(question, docs), **settings))
        assert got.text == want.text
        assert got.token_ids == want.token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=1e-4)
        if sra.boosts_documents or sra == SRAConfig.preset("off"):
            assert got.document_attention is not None and want.document_attention is not None
            assert got.document_attention.ranking == want.document_attention.ranking
    reused = stats.cached_tokens - before
    prompt = cached.count_tokens(chat(QUESTIONS[0], docs))
    if sra.inner:
        assert reused >= 4 * 16  # the paper's inner loop leaves only the first rows stock: some reuse
    else:
        assert reused >= 4 * (prompt - 3 * 16)  # questions 2-5 reuse nearly everything before the question
    assert stats.bytes <= stats.budget_bytes


def test_batched_requests_with_and_without_hits_reply_as_without_the_cache(engines):
    cached, uncached = engines
    docs = documents(seed=77)
    settings = dict(sra=QUESTION_TAIL, max_new_tokens=8, layout=None)
    cached.complete(chat("Warm the cache.", docs), **settings)
    prompts = [chat(question, docs) for question in QUESTIONS] + [chat(QUESTIONS[0], documents(seed=78))]
    streams = [cached.stream(prompt, **settings) for prompt in prompts]  # admitted together
    for prompt, stream in zip(prompts, streams, strict=True):
        for _ in stream:
            pass
        assert stream.text == uncached.complete(prompt, **settings).text


def test_a_zero_budget_turns_the_cache_off(tiny_tokenizer, make_tiny_model):
    engine = SRAEngine(make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, prefix_cache_bytes=0)
    assert engine.scheduler.prefix_cache is None and engine.prefix_cache_stats is None
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        SRAEngine(engine.model, tiny_tokenizer, prefix_cache_bytes=-1)
    engine.close()


def test_soak_of_200_mixed_requests_keeps_the_cache_inside_its_budget(tiny_tokenizer, make_tiny_model):
    """200 requests over four document sets, mixed settings, submitted in waves of eight (so hits and
    misses share admissions): the held bytes never exceed the budget, which is a few prompts' worth."""
    engine = SRAEngine(make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, prefix_cache_bytes=0)
    engine.scheduler.prefix_cache = cache = PrefixCache(budget_bytes=1, block_tokens=16)
    block_bytes = 4 * 2 * 2 * 16 * 16 * 4  # layers, K and V, KV heads, tokens, head_dim, fp32
    cache.budget_bytes = cache.stats.budget_bytes = 40 * block_bytes  # about two prompts
    rng = random.Random(3)
    pool = [documents(seed=seed, count=2, words=40) for seed in range(4)]
    configs = [QUESTION_TAIL, SRAConfig.preset("off"), SRAConfig(begin_length=4, tail_length=8)]
    for _ in range(25):
        streams = [
            engine.stream(chat(rng.choice(QUESTIONS), rng.choice(pool)), sra=rng.choice(configs), max_new_tokens=2)
            for _ in range(8)
        ]
        for stream in streams:
            finished(stream)
            assert stream.finish_reason is not None
        assert cache.stats.bytes <= cache.budget_bytes
    assert cache.stats.lookups >= 200 and cache.stats.hits > 50 and cache.stats.evictions > 0
    engine.close()
