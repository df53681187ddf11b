"""Fixtures of the server tests: a tiny random Llama behind the embedded tokenizer (fast, offline), an
engine wrapper whose generation waits for the test (queue, timeout and disconnect tests), and apps
served in-process on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sra_rag import SRAConfig, SRAEngine
from sra_rag.models import _converted_folder, embedded_source

TINY_WINDOW = 512


@pytest.fixture(scope="session")
def tiny_engine() -> SRAEngine:
    """A 2-layer random Llama (hidden 32, grouped KV heads) with SmolLM2's tokenizer and chat template;
    a context window of 512 tokens so over-long prompts are cheap to build. Its text is gibberish:
    tests compare it with the engine's own output."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(_converted_folder(embedded_source())), local_files_only=True)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_WINDOW,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    return SRAEngine(model, tokenizer, sra=SRAConfig.preset("recommended"), name="tiny-llama")


class GatedEngine:
    """``engine`` whose streams produce one piece per :meth:`release` (``release(None)``: all), so a
    test decides when generation moves. ``calls`` holds the arguments of every ``stream`` call,
    ``streams`` every stream opened, ``pieces_taken`` how many pieces each has produced."""

    def __init__(self, engine: SRAEngine) -> None:
        self._engine = engine
        self._permits = threading.Semaphore(0)
        self._open = threading.Event()
        self.streams: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.pieces_taken: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def release(self, pieces: int | None = 1) -> None:
        if pieces is None:
            self._open.set()
            self._permits.release(10_000)
        else:
            self._permits.release(pieces)

    def stream(self, prompt: Any, **kwargs: Any) -> Any:
        self.calls.append({"prompt": prompt, **kwargs})
        stream = self._engine.stream(prompt, **kwargs)
        index = len(self.streams)
        self.streams.append(stream)
        self.pieces_taken.append(0)
        inner = stream.pieces

        def gated() -> Iterator[str]:
            for piece in inner:
                if not self._open.is_set():
                    self._permits.acquire(timeout=30)
                self.pieces_taken[index] += 1
                yield piece

        stream.pieces = gated()
        return stream


@pytest.fixture
def gated_engine(tiny_engine: SRAEngine) -> Iterator[GatedEngine]:
    gated = GatedEngine(tiny_engine)
    yield gated
    gated.release(None)


@pytest.fixture
def live_server() -> Iterator[Callable[..., str]]:
    """``live_server(app)`` serves ``app`` on a free loopback port for the test and returns its URL."""
    from contextlib import ExitStack

    from sra_rag.server.runner import serving

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serving(app))
