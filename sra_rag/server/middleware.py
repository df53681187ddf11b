"""ASGI middleware of the app: bearer-token access and the header naming the replica that answered.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``), so streamed responses pass through unbuffered and a
client's disconnect still reaches the route.
"""

from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sra_rag.server.errors import APIError

REPLICA_HEADER = "x-sra-rag-replica"


class BearerAuth:
    """Refuse every request (every route, unknown ones included) without ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization")
        if given is not None and secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        reason = "No API key was given" if given is None else "The API key is not valid"
        error = APIError(
            401,
            f"{reason}: send the header 'Authorization: Bearer <key>' (clients: api_key=...).",
            code="invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ReplicaHeader:
    """Add ``x-sra-rag-replica: <replica>`` to every response, so a client (or a test) sees which
    replica answered."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tag(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tag)
