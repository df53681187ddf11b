"""Streaming one request's text: incremental detokenisation with stop strings held back, and the
:class:`TextStream` a caller reads (a sync iterator, an async iterator, ``close()`` to cancel).

The scheduler's thread produces :class:`Update` s into a :class:`Channel`; the caller's thread (or
event loop) consumes them. A stream's counters (``text``, ``completion_tokens``, ...) describe what
its reader has consumed so far, and the whole completion once it is exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from transformers import PreTrainedTokenizerBase

from sra_rag.readout.recorder import DocumentAttention

FinishReason = Literal["stop", "length", "cancelled"]


class IncrementalText:
    """Turn one request's tokens into text as they come, and apply its stop strings.

    Tokens are decoded in a small window (the previous piece's tokens and the new ones), so each
    step costs the same however long the completion is; text that ends in an incomplete character
    and text that may begin a stop string are held back. A stop string ends the text where it
    begins and is never emitted.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._prefix = 0  # window start: tokens before it are already text
        self._read = 0  # tokens up to here are decoded into self.text

    def push(self, token: int) -> str:
        """Add one generated token; return the text that can be released now (maybe empty)."""
        self.tokens.append(token)
        self._decode(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended without a stop string: release everything held back."""
        self._decode(final=True)
        return self._release(final=True)

    def _decode(self, final: bool) -> None:
        before = self.tokenizer.decode(self.tokens[self._prefix : self._read], skip_special_tokens=True)
        now = self.tokenizer.decode(self.tokens[self._prefix :], skip_special_tokens=True)
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.text += now[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)

    def _release(self, final: bool) -> str:
        hit = _find_stop(self.text, self.stops, self.emitted)
        if hit is not None:
            self.text = self.text[:hit]
            self.stopped = True
            final = True
        ready = len(self.text) if final else len(self.text) - _longest_stop_prefix(self.text, self.stops)
        if ready <= self.emitted:
            return ""
        piece = self.text[self.emitted : ready]
        self.emitted = ready
        return piece


def _find_stop(text: str, stops: Sequence[str], emitted: int) -> int | None:
    """Index of the earliest stop string in ``text`` that is not inside already emitted text."""
    hits = [index for stop in stops if (index := text.find(stop, max(0, emitted - len(stop) + 1))) >= 0]
    return min(hits) if hits else None


def _longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that begins some stop string (held back)."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


@dataclass
class Update:
    """What one scheduler step did for one request: the released ``piece``, the new ``tokens``
    (and their ``logprobs`` when asked for), the prefill time on the first update, and
    ``finish_reason`` or ``error`` on the last."""

    piece: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prefill_seconds: float | None = None
    document_attention: DocumentAttention | None = None
    finish_reason: FinishReason | None = None
    error: BaseException | None = None

    @property
    def last(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class Channel:
    """The hand-over between the scheduler's thread (``put``) and a stream's reader (``get`` /
    ``poll``), plus the reader's cancellation flag, read by the scheduler between steps."""

    def __init__(self) -> None:
        self._updates: deque[Update] = deque()
        self._ready = threading.Condition()
        self._waker: Callable[[], None] | None = None
        self.cancelled = False

    def put(self, update: Update) -> None:
        with self._ready:
            self._updates.append(update)
            self._ready.notify()
            waker, self._waker = self._waker, None
        if waker is not None:
            waker()

    def get(self) -> Update:
        with self._ready:
            while not self._updates:
                self._ready.wait()
            return self._updates.popleft()

    def poll(self, waker: Callable[[], None] | None = None) -> Update | None:
        """The next update, or None; then ``waker`` is called once when one arrives."""
        with self._ready:
            if self._updates:
                return self._updates.popleft()
            self._waker = waker
            return None

    def cancel(self) -> None:
        """The reader is gone: the scheduler drops the request at its next step."""
        self.cancelled = True
        self.put(Update(finish_reason="cancelled"))


class TextStream:
    """Text pieces of one request as they are generated.

    Iterate it (``for piece in stream``), or ``async for piece in stream`` without blocking the
    event loop (no thread per stream). ``close()`` (or leaving ``with stream:``, or dropping the
    last reference) cancels the request: it leaves the running batch at the next decoding step.
    The counters describe what has been read: ``text``, ``completion_tokens``, ``token_ids``,
    ``logprobs`` (each chosen token's log-probability, when the request asked for them),
    ``prefill_seconds`` and ``document_attention`` (once the first piece is computed: how much the
    question read each document of the layout, see :class:`~sra_rag.readout.recorder.DocumentAttention`;
    None without a readout), and ``finish_reason`` (``"stop"``: an end-of-sequence token or a stop
    string; ``"length"``: max_new_tokens; ``"cancelled"``) once it is exhausted. An error of the
    request is raised by the iteration that reaches it.
    """

    def __init__(self, prompt_tokens: int, channel: Channel) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.text = ""
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.prefill_seconds: float | None = None
        self.document_attention: DocumentAttention | None = None
        self.finish_reason: FinishReason | None = None
        self._channel = channel
        self._done = False
        weakref.finalize(self, channel.cancel)

    @property
    def done(self) -> bool:
        """Whether the stream has ended (finished, failed or closed)."""
        return self._done

    def close(self) -> None:
        """Cancel the request (idempotent); iteration ends."""
        if not self._done:
            self._done = True
            if self.finish_reason is None:
                self.finish_reason = "cancelled"
            self._channel.cancel()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        while not self._done:
            piece = self._apply(self._channel.get())
            if piece:
                return piece
        raise StopIteration

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            while not self._done:
                arrived = asyncio.Event()
                update = self._channel.poll(functools.partial(_call_soon, loop, arrived.set))
                if update is None:
                    await arrived.wait()
                    continue
                piece = self._apply(update)
                if piece:
                    yield piece
        finally:
            self.close()  # a reader that stops early (break, cancellation) cancels the request

    def _apply(self, update: Update) -> str:
        if self._done:
            return ""
        if update.prefill_seconds is not None:
            self.prefill_seconds = update.prefill_seconds
        if update.document_attention is not None:
            self.document_attention = update.document_attention
        self.token_ids += update.tokens
        self.logprobs += update.logprobs
        self.completion_tokens = len(self.token_ids)
        self.text += update.piece
        if update.last:
            self._done = True
            self.finish_reason = update.finish_reason
            if update.error is not None:
                raise update.error
        return update.piece

    def __repr__(self) -> str:
        state = self.finish_reason or ("running" if not self._done else "done")
        return f"TextStream(prompt_tokens={self.prompt_tokens}, completion_tokens={self.completion_tokens}, {state})"


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback)
