"""Which thread runs torch's CPU work, so that decoding keeps its speed.

torch's CPU kernels run on OpenMP (GNU libgomp in the Linux wheels). Each thread that starts a
parallel kernel gets its own pool of helper threads, kept until that thread ends. While the process
holds no more OpenMP threads than CPUs, a helper that has finished a kernel spins for a moment and
takes the next one at once; once there are more (a second pool), libgomp throttles that spinning,
and every kernel waits for its helpers to wake from sleep. A decoding step is a thousand small
kernels, so a second pool costs it a third of its speed: Qwen2.5-Coder-0.5B int4 at batch 1 on 2
cores decodes 32 tokens/s through the engine with one pool and 21-22 after the calling thread ran
one matrix product (docs/bench/cpu-weights.md).

The engine's worker thread runs every forward pass. The heavy work the library does on a caller's
thread (loading and converting a model, embedding texts) runs through :func:`in_passing_thread`, in
a thread that ends with the work and takes its pool along, so the worker stays the one pool.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_passing_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` run in a new thread that ends with it (in the caller's context
    variables); returns its result or raises its exception. The caller waits."""
    result: list[T] = []
    failure: list[BaseException] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result.append(context.run(function, *args, **kwargs))
        except BaseException as error:  # handed to the caller, raised there
            failure.append(error)

    thread = threading.Thread(target=run, name=f"sra-rag-{getattr(function, '__name__', 'work')}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
