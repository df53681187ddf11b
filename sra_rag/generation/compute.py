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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def in_passing_thread(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` run in a new thread that ends with it (in the caller's context
    variables); returns its result or raises its exception. The caller waits."""
    context = contextvars.copy_context()
    name = f"sra-rag-{getattr(function, '__name__', 'work')}"
    # leaving the executor joins its one thread, so the thread (and its OpenMP pool) ends here
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as executor:
        return executor.submit(context.run, function, *args, **kwargs).result()
