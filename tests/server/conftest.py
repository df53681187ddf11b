"""Fixtures of the server tests: a tiny random Llama with a small context window (fast, offline), an
engine wrapper that records what the server asks of the engine and can slow its decoding down (queue,
timeout and disconnect tests), and apps served in-process on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from sra_rag import SRAConfig, SRAEngine

WINDOW = 512


@pytest.fixture(scope="session")
def server_engine(tiny_tokenizer, make_tiny_model) -> SRAEngine:
    """The core tests' tiny random Llama and ChatML tokenizer with a 512-token window (over-long
    prompts are cheap to build) and the ``recommended`` preset, as ``sra-rag serve`` loads it."""
    model = make_tiny_model("llama", len(tiny_tokenizer))
    return SRAEngine(
        model, tiny_tokenizer, sra=SRAConfig.preset("recommended"), context_window=WINDOW, name="tiny-llama"
    )


class Throttle:
    """A logits processor that takes ``delay`` seconds per decoding step and always picks ``token``
    (never the end of sequence, always printable text), so generation lasts exactly ``max_tokens``
    steps and streams a piece per step. ``steps`` counts the steps decoded."""

    def __init__(self, delay: float, token: int) -> None:
        self.delay = delay
        self.token = token
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps += 1
        time.sleep(self.delay)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token] = 0.0
        return forced


class RecordingEngine:
    """``engine`` that records what the server asks of it: ``calls`` (the prompt and settings of every
    request), ``streams`` (every stream submitted) and, with ``delay``, the :class:`Throttle` of each
    request in ``throttles``."""

    def __init__(self, engine: SRAEngine, delay: float | None = None) -> None:
        self._engine = engine
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.streams: list[Any] = []
        self.throttles: list[Throttle] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def request(self, prompt: Any, **settings: Any) -> Any:
        with self._lock:
            self.calls.append({"prompt": prompt, **settings})
            if self.delay is not None:
                token = self._engine.tokenizer(" harbour", add_special_tokens=False)["input_ids"][0]
                throttle = Throttle(self.delay, token)
                self.throttles.append(throttle)
                settings["logits_processors"] = [throttle]
        return self._engine.request(prompt, **settings)

    def submit(self, request: Any) -> Any:
        stream = self._engine.submit(request)
        with self._lock:
            self.streams.append(stream)
        return stream


@pytest.fixture
def recording_engine(server_engine: SRAEngine) -> RecordingEngine:
    return RecordingEngine(server_engine)


@pytest.fixture
def slow_engine(server_engine: SRAEngine) -> RecordingEngine:
    """Decoding at 20 steps per second, to the last of ``max_tokens``."""
    return RecordingEngine(server_engine, delay=0.05)


@pytest.fixture
def live_server() -> Iterator[Callable[..., str]]:
    """``live_server(app)`` serves ``app`` on a free loopback port for the test and returns its URL."""
    from contextlib import ExitStack

    from sra_rag.server.runner import serving

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serving(app))
