"""Admission control: at most ``max_batch`` requests generate at once, at most ``queue_size`` more
wait for a slot, and the rest are refused at once (429) with a ``Retry-After`` estimated from how
long slots have recently been held. Used from one event loop (no locks needed)."""

from __future__ import annotations

import asyncio
import math
import time


class QueueFullError(Exception):
    """Every slot is busy and the queue is full; ``retry_after`` is a whole number of seconds."""

    def __init__(self, running: int, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"The server is at capacity: {running} requests are generating and {waiting} are queued "
            f"(the queue is full). Retry after {retry_after} s."
        )
        self.retry_after = retry_after


class AdmissionTimeoutError(TimeoutError):
    """A request waited in the queue until its deadline."""


class Admission:
    """Slots for generating requests and a bounded queue in front of them."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"need max_running >= 1 and max_waiting >= 0, got {max_running} and {max_waiting}")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._free = max_running
        self._waiters: asyncio.Queue[asyncio.Future[None]] | None = None
        self._held_seconds = 1.0  # moving average of how long a slot is held

    @property
    def full(self) -> bool:
        return self._free == 0 and self.waiting >= self.max_waiting

    def retry_after(self) -> int:
        """Seconds until a queued request would likely get a slot: the queue drains ``max_running`` at a time."""
        rounds = (self.waiting + 1) / self.max_running
        return max(1, min(60, math.ceil(rounds * self._held_seconds)))

    async def acquire(self, timeout: float) -> float:
        """Take a slot, waiting at most ``timeout`` seconds; returns when it was taken (``time.monotonic()``).
        Raises :class:`QueueFullError` at once when the queue is full."""
        if self._free > 0:
            self._free -= 1
        else:
            if self.waiting >= self.max_waiting:
                raise QueueFullError(self.running, self.waiting, self.retry_after())
            await self._wait(timeout)
        self.running += 1
        return time.monotonic()

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        ticket: asyncio.Future[None] = loop.create_future()
        if self._waiters is None:
            self._waiters = asyncio.Queue()
        self._waiters.put_nowait(ticket)
        self.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(ticket), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            if ticket.done() and not ticket.cancelled():
                self._hand_over()  # the slot arrived as we gave up: pass it on
            ticket.cancel()
            if isinstance(error, asyncio.TimeoutError):
                raise AdmissionTimeoutError(f"waited {timeout:.1f} s in the queue without getting a slot") from None
            raise
        finally:
            self.waiting -= 1

    def release(self, taken_at: float) -> None:
        """Give back a slot taken at ``taken_at`` (from :meth:`acquire`)."""
        self.running -= 1
        held = time.monotonic() - taken_at
        self._held_seconds = 0.8 * self._held_seconds + 0.2 * held
        self._hand_over()

    def _hand_over(self) -> None:
        """The slot goes to the longest-waiting request still waiting, else back to the pool."""
        while self._waiters is not None and not self._waiters.empty():
            ticket = self._waiters.get_nowait()
            if not ticket.done():
                ticket.set_result(None)
                return
        self._free += 1
