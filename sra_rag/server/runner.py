"""Running an app under uvicorn: in the foreground (the command) or in a background thread on a free
loopback port (tests, the benchmark, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C finishes open requests, then stops)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)


@contextmanager
def serving(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields its base URL (``http://127.0.0.1:<port>``).
    ``port=0`` picks a free port. The server stops when the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    bound_port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="sra-rag-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            listener.close()
            raise RuntimeError(f"the server did not start on {host}:{bound_port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
