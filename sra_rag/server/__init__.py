"""An OpenAI-compatible HTTP server for :class:`sra_rag.SRAEngine` (``sra-rag serve``), and its Ray
Serve deployment for several replicas.

``create_app(engine)`` builds the FastAPI app; it needs the ``server`` extra
(``pip install 'sra-rag[server]'``), the Ray deployment the ``ray`` extra. Heavy imports happen on
first use, so the command line's ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "ServerSettings":
        from sra_rag.server.settings import ServerSettings

        return ServerSettings
    if name == "create_app":
        try:
            from sra_rag.server.app import create_app
        except ImportError as error:
            raise ImportError(
                f"The server needs FastAPI, uvicorn, sse-starlette and prometheus-client ({error}). "
                "Install them with: pip install 'sra-rag[server]'"
            ) from error
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
