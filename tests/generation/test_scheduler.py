"""The one generation path on tiny random models: continuous batching gives every request what it
gets alone, per-request sampling and processors, cancellation, errors confined to their request."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time

import pytest
import torch

from sra_rag import SRAConfig, SRAEngine
from sra_rag.generation.request import Request
from sra_rag.layout import TextLayout

SENTENCE = "The harbour master keeps the ferry log and the lighthouse keeper's house has a green door"


def prompt(index: int) -> str:
    """Prompts of clearly different lengths (14 to 130 tokens with the template)."""
    return " ".join(SENTENCE.split()[: 3 + 2 * index]) * (1 + index)


# Mixed SRA settings (spec, off, question tail, the recommended preset, attention target) and mixed
# sampling (greedy, repetition penalty, seeded top-k, seeded top-p + min-p).
CASES = [
    (SRAConfig(begin_length=4, tail_length=8), {}),
    (SRAConfig(enabled=False), {"repetition_penalty": 1.3}),
    (SRAConfig(begin_length=2, tail_length=5, tail="question"), {"temperature": 0.8, "seed": 5, "top_k": 20}),
    (SRAConfig.preset("recommended"), {"temperature": 1.0, "seed": 7, "top_p": 0.9, "min_p": 0.05}),
    (SRAConfig(begin_length=4, tail_length=8, outer_target="attention"), {}),  # + a stop string, below
    (SRAConfig(), {}),
]


class Gate:
    """A logits processor that holds the scheduler's thread at its ``at``-th call until ``open()``,
    so the requests submitted meanwhile join the running batch together."""

    def __init__(self, at: int = 1) -> None:
        self.calls = 0
        self.at = at
        self.reached = threading.Event()
        self.released = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.released.wait(timeout=60)
        return scores

    def open(self) -> None:
        self.released.set()


def submit_together(engine: SRAEngine, calls: list[tuple[str, dict]]) -> list:
    """Start ``calls`` so that they are prefilled in one padded batch and decoded together."""
    gate = Gate()
    holder = engine.stream("hold", max_new_tokens=2, logits_processors=[gate])
    assert gate.reached.wait(timeout=60)
    streams = [engine.stream(text, **kwargs) for text, kwargs in calls]
    gate.open()
    list(holder)
    return streams


def test_each_request_gets_alone_what_it_gets_in_a_batch(tiny_engine: SRAEngine) -> None:
    calls = [
        (prompt(i), {"sra": config, "max_new_tokens": 10 + i, **kwargs}) for i, (config, kwargs) in enumerate(CASES)
    ]
    free = tiny_engine.generate(calls[4][0], **calls[4][1])
    calls[4][1]["stop"] = [free[6:9]]  # a stop string in the middle of that reply
    alone = [tiny_engine.complete(text, **kwargs) for text, kwargs in calls]
    assert alone[4].finish_reason == "stop" and alone[4].text == free[: free.index(free[6:9])]
    before = tiny_engine.scheduler.stats.prefilled_rows - tiny_engine.scheduler.stats.prefills
    together = submit_together(tiny_engine, calls)
    for expected, stream in zip(alone, together, strict=True):
        assert "".join(stream) == expected.text
        assert (stream.completion_tokens, stream.finish_reason) == (expected.completion_tokens, expected.finish_reason)
    stats = tiny_engine.scheduler.stats
    # The six prompts shared one padded prefill and decoding steps of up to seven rows.
    assert stats.prefilled_rows - stats.prefills - before == len(calls) - 1
    assert stats.peak_running >= len(calls)
    # The settings matter, so the equality above could fail.
    assert len({completion.text for completion in alone}) == len(alone)


def scoring(engine: SRAEngine, text: str, continuation: str, config: SRAConfig) -> Request:
    """A request that scores ``continuation`` (teacher forcing), as ``log_likelihood`` builds it."""
    target = tuple(engine.tokenizer(continuation, add_special_tokens=False)["input_ids"])
    request = engine.request(text, max_new_tokens=len(target), sra=config)
    return dataclasses.replace(request, forced_tokens=target, logprobs=True)


def test_each_row_of_a_batched_prefill_has_its_own_sra_settings(tiny_engine: SRAEngine) -> None:
    configs = [SRAConfig(enabled=False), SRAConfig(begin_length=4, tail_length=8), SRAConfig(tail_length=8)]
    texts = [prompt(5), prompt(5), prompt(3)]
    alone = [
        tiny_engine.log_likelihood(text, " the ferry log", sra=config)
        for text, config in zip(texts, configs, strict=True)
    ]
    gate = Gate()
    holder = tiny_engine.stream("hold", max_new_tokens=2, logits_processors=[gate])
    assert gate.reached.wait(timeout=60)
    streams = [
        tiny_engine.submit(scoring(tiny_engine, text, " the ferry log", c))
        for text, c in zip(texts, configs, strict=True)
    ]
    gate.open()
    list(holder)
    together = [sum(stream.logprobs) for stream in streams if not list(stream)]
    assert together == pytest.approx(alone, abs=1e-4)
    assert alone[0] != pytest.approx(alone[1], abs=1e-3)  # SRA changes the first prompt's reading


def test_long_prompts_do_not_pad_short_ones(tiny_tokenizer, make_tiny_model, monkeypatch) -> None:
    engine = SRAEngine(make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer)
    monkeypatch.setattr("sra_rag.generation.scheduler.MAX_PADDING_TOKENS", 0)
    calls = [(prompt(0), {"max_new_tokens": 6}), (prompt(1), {"max_new_tokens": 6}), (prompt(6), {"max_new_tokens": 6})]
    alone = [engine.generate(text, **kwargs) for text, kwargs in calls]
    engine.scheduler.stats.peak_batches = 0
    together = submit_together(engine, calls[:2])  # two short prompts share a batch
    assert ["".join(stream) for stream in together] == alone[:2]
    assert engine.scheduler.stats.peak_batches == 1
    gate = Gate(at=3)  # holds the short requests' third step (a processor does not change greedy choices)
    short = [
        engine.stream(calls[0][0], **calls[0][1], logits_processors=[gate]),
        engine.stream(calls[1][0], **calls[1][1]),
    ]
    assert gate.reached.wait(timeout=60)
    long = engine.stream(calls[2][0], **calls[2][1])  # joins while the short ones are decoding
    gate.open()
    assert ["".join(short[0]), "".join(short[1]), "".join(long)] == alone
    assert engine.scheduler.stats.peak_batches == 2  # the long prompt ran beside them


def test_joining_and_leaving_between_steps(tiny_engine: SRAEngine) -> None:
    expected = [tiny_engine.generate(prompt(i), max_new_tokens=4 + 6 * i) for i in range(4)]
    streams = []
    for i in range(4):  # each joins while the earlier ones are decoding
        streams.append(tiny_engine.stream(prompt(i), max_new_tokens=4 + 6 * i))
        next(streams[-1], None)
    texts = [stream.text + "".join(stream) for stream in streams]
    assert texts == expected
    assert tiny_engine.scheduler.running == 0


def test_seeded_sampling_repeats_and_differs_by_seed(tiny_engine: SRAEngine) -> None:
    kwargs = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    first = tiny_engine.generate(prompt(2), seed=11, **kwargs)
    assert tiny_engine.generate(prompt(2), seed=11, **kwargs) == first
    assert len({tiny_engine.generate(prompt(2), seed=seed, **kwargs) for seed in range(4)}) > 1


def test_logits_processors_see_the_full_sequence(tiny_engine: SRAEngine) -> None:
    seen: list[torch.Tensor] = []

    def record(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen.append(input_ids.clone())
        return scores

    request = tiny_engine.request(prompt(1), max_new_tokens=5, logits_processors=[record])
    stream = tiny_engine.submit(request)
    list(stream)
    prompt_ids = list(request.prompt_ids)
    assert [ids.shape for ids in seen] == [(1, len(prompt_ids) + step) for step in range(len(seen))]
    assert seen[-1][0].tolist() == prompt_ids + stream.token_ids[: len(seen) - 1]


def test_repetition_penalty_covers_the_prompt_and_the_generated_tokens(tiny_engine: SRAEngine) -> None:
    request = tiny_engine.request(prompt(2), max_new_tokens=20, repetition_penalty=1e6)
    stream = tiny_engine.submit(request)
    list(stream)
    generated = stream.token_ids
    assert len(generated) > 5
    assert not set(generated) & set(request.prompt_ids)
    assert len(set(generated)) == len(generated)
    plain = tiny_engine.submit(tiny_engine.request(prompt(2), max_new_tokens=20))
    list(plain)
    assert set(plain.token_ids) & set(request.prompt_ids) or len(set(plain.token_ids)) < len(plain.token_ids)


def test_the_penalty_can_leave_the_prompt_alone(tiny_engine: SRAEngine) -> None:
    request = tiny_engine.request(prompt(2), max_new_tokens=20, repetition_penalty=1e6, penalize_prompt=False)
    stream = tiny_engine.submit(request)
    list(stream)
    assert len(set(stream.token_ids)) == len(stream.token_ids)  # no generated token twice
    assert set(stream.token_ids) & set(request.prompt_ids)  # but the prompt's tokens may be repeated


class Cycle:
    """A logits processor that makes the reply cycle through ``tokens`` forever (a loop)."""

    def __init__(self, tokens: list[int], prompt_tokens: int) -> None:
        self.tokens, self.prompt_tokens = tokens, prompt_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.tokens[(input_ids.shape[1] - self.prompt_tokens) % len(self.tokens)]] = 0.0
        return forced


def test_the_loop_guard_ends_a_looping_reply_and_changes_no_token(tiny_engine: SRAEngine) -> None:
    cycle = [40, 41, 42, 43, 44]
    plain = tiny_engine.request(prompt(2), max_new_tokens=30)
    forced = Cycle(cycle, plain.num_prompt_tokens)
    looping = tiny_engine.submit(tiny_engine.request(prompt(2), max_new_tokens=30, logits_processors=[forced]))
    list(looping)
    guarded = tiny_engine.submit(
        tiny_engine.request(prompt(2), max_new_tokens=30, logits_processors=[forced], loop_guard=4)
    )
    list(guarded)
    assert looping.finish_reason == "length" and len(looping.token_ids) == 30
    # The newest 4 tokens first repeat an earlier span at token 9 (5 + 4): it ends there, a prefix of the loop.
    assert guarded.finish_reason == "stop" and guarded.token_ids == looping.token_ids[:9]
    # Without a loop, the guard changes nothing: greedy decoding of the tiny model, token for token.
    free = tiny_engine.submit(tiny_engine.request(prompt(3), max_new_tokens=20))
    list(free)
    spans = {tuple(free.token_ids[i : i + 8]) for i in range(len(free.token_ids) - 7)}
    assert len(free.token_ids) == 20 and len(spans) == 13  # no 8-token span repeats in the plain reply
    again = tiny_engine.submit(tiny_engine.request(prompt(3), max_new_tokens=20, loop_guard=8))
    list(again)
    assert again.token_ids == free.token_ids and again.finish_reason == free.finish_reason


def test_the_loop_guard_is_checked_at_the_call(tiny_engine: SRAEngine) -> None:
    with pytest.raises(ValueError, match="loop_guard"):
        tiny_engine.request(prompt(2), loop_guard=-1)


def test_a_closed_stream_leaves_the_batch_and_others_go_on(tiny_engine: SRAEngine) -> None:
    expected = tiny_engine.generate(prompt(1), max_new_tokens=30)
    long = tiny_engine.stream(prompt(3), max_new_tokens=1000)
    other = tiny_engine.stream(prompt(1), max_new_tokens=30)
    next(long)
    long.close()
    assert long.finish_reason == "cancelled" and list(long) == []
    assert "".join(other) == expected
    deadline = time.monotonic() + 30
    while tiny_engine.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tiny_engine.scheduler.running == 0
    assert long.completion_tokens < 1000


def test_an_error_in_one_request_fails_only_that_request(tiny_engine: SRAEngine) -> None:
    def broken(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > 20:
            raise RuntimeError("grammar rejected every token")
        return scores

    expected = tiny_engine.generate(prompt(2), max_new_tokens=8)
    calls = [(prompt(4), {"max_new_tokens": 8, "logits_processors": [broken]}), (prompt(2), {"max_new_tokens": 8})]
    failing, healthy = submit_together(tiny_engine, calls)
    with pytest.raises(RuntimeError, match="grammar rejected"):
        list(failing)
    assert "".join(healthy) == expected
    assert tiny_engine.generate(prompt(2), max_new_tokens=8) == expected  # the scheduler still runs


def test_models_whose_cache_cannot_be_batched_run_requests_side_by_side(tiny_tokenizer, make_tiny_model) -> None:
    engine = SRAEngine(make_tiny_model("gemma3", len(tiny_tokenizer)), tiny_tokenizer)
    assert not engine.scheduler.batchable
    calls = [(prompt(i), {"max_new_tokens": 6, "sra": SRAConfig(begin_length=4, tail_length=8)}) for i in (1, 5)]
    alone = [engine.generate(text, **kwargs) for text, kwargs in calls]
    together = ["".join(stream) for stream in submit_together(engine, calls)]
    assert together == alone
    assert engine.scheduler.stats.prefilled_rows == engine.scheduler.stats.prefills  # one prompt per prefill


def test_log_likelihood_equals_one_forward_pass(tiny_engine: SRAEngine) -> None:
    off = SRAConfig(enabled=False)
    continuation = " the green door"
    prompt_ids = tiny_engine.prepare(prompt(2)).input_ids
    target = torch.tensor([tiny_engine.tokenizer(continuation, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        logits = tiny_engine.model(torch.cat([prompt_ids, target], dim=1), sra_config=off).logits[0].float()
    positions = torch.arange(prompt_ids.shape[1] - 1, prompt_ids.shape[1] + target.shape[1] - 1)
    expected = torch.log_softmax(logits[positions], -1).gather(-1, target[0][:, None]).sum()
    assert tiny_engine.log_likelihood(prompt(2), continuation, sra=off) == pytest.approx(float(expected), abs=1e-4)


def test_async_streams_share_the_batch_and_early_exit_cancels(tiny_engine: SRAEngine) -> None:
    expected = [tiny_engine.generate(prompt(i), max_new_tokens=8) for i in range(3)]

    async def main() -> tuple[list[str], str]:
        async def collect(index: int) -> str:
            stream = await tiny_engine.astream(prompt(index), max_new_tokens=8)
            return "".join([piece async for piece in stream])

        texts = await asyncio.gather(*(collect(i) for i in range(3)))
        stream = await tiny_engine.astream(prompt(3), max_new_tokens=500)
        async for _ in stream:
            break
        completion = await tiny_engine.acomplete(prompt(0), max_new_tokens=8)
        return list(texts), completion.text if stream.finish_reason == "cancelled" else ""

    texts, text = asyncio.run(main())
    assert texts == expected and text == expected[0]


def test_question_tail_follows_the_layout(tiny_engine: SRAEngine) -> None:
    config = SRAConfig(begin_length=2, tail="question", inner=False)
    messages = [{"role": "user", "content": f"{prompt(4)}\n\nQuestion: what colour is the door?"}]
    marked = tiny_engine.log_likelihood(messages, " green", sra=config, layout=TextLayout(question="Question:"))
    whole = tiny_engine.log_likelihood(messages, " green", sra=config)  # the whole user message is the question
    shorthand = tiny_engine.log_likelihood(
        messages, " green", sra=SRAConfig(begin_length=2, inner=False), tail_from="Question:"
    )
    assert marked == pytest.approx(shorthand, abs=1e-6)
    assert marked != pytest.approx(whole, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": float("inf")}, "temperature=inf"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ({"stop": 5}, "stop must be a string or a list"),
        ({"stop": [""]}, "stop must be"),
        ({"seed": "abc"}, "seed='abc'"),
        ({"max_new_tokens": True}, "max_new_tokens=True"),
        ({"logits_processors": [3]}, "LogitsProcessor"),
        ({"sra": {"beta_outer": 2}}, "sra must be an SRAConfig"),
        ({"layout": {"question": "x"}}, "layout must be a TextLayout"),
        ({"layout": TextLayout(question="not in the prompt")}, "does not occur"),
    ],
)
def test_bad_settings_fail_at_the_call(tiny_engine: SRAEngine, kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_engine.stream("Hello", **kwargs)  # not on the first next()


def test_an_impossible_budget_gives_advice_that_can_be_followed(tiny_engine: SRAEngine) -> None:
    with pytest.raises(ValueError) as info:
        tiny_engine.stream("Hello", max_new_tokens=10**9)
    message = str(info.value)
    prompt_tokens = tiny_engine.count_tokens([{"role": "user", "content": "Hello"}])
    assert f"lower it to at most {tiny_engine.context_window - prompt_tokens}" in message
    assert not re.search(r"-\d", message)


@pytest.mark.parametrize("role", ["", "bot", "System"])
def test_empty_or_unknown_roles_are_rejected(tiny_engine: SRAEngine, role: str) -> None:
    with pytest.raises(ValueError, match="role"):
        tiny_engine.stream([{"role": role, "content": "Hello"}])


def test_a_closed_engine_fails_its_requests_and_refuses_new_ones(tiny_tokenizer, make_tiny_model) -> None:
    engine = SRAEngine(make_tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer)
    assert engine.generate(prompt(1), max_new_tokens=3)
    gate = Gate()
    holder = engine.stream("hold", max_new_tokens=50, logits_processors=[gate])
    assert gate.reached.wait(timeout=60)
    waiting = engine.stream(prompt(2), max_new_tokens=5)
    threading.Timer(0.2, gate.open).start()
    engine.close()
    for stream in (holder, waiting):
        with pytest.raises(RuntimeError, match="closed"):
            list(stream)
    with pytest.raises(RuntimeError, match="closed"):
        engine.stream(prompt(1))


def test_an_idle_worker_ends_and_the_next_request_starts_another(tiny_engine: SRAEngine) -> None:
    """A live worker keeps its OpenMP threads (sra_rag/generation/compute.py), so it ends as soon as
    nothing is left to run; the next request starts a new one and gets the same reply."""
    first = tiny_engine.generate("Hello", max_new_tokens=4)
    scheduler = tiny_engine.scheduler
    deadline = time.monotonic() + 5.0
    while scheduler._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler._thread is None
    assert tiny_engine.generate("Hello", max_new_tokens=4) == first
