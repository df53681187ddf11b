"""ASGI middleware of the app: bearer-token access, the request-body limit and the header naming the
replica that answered.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``), so streamed responses pass through unbuffered and a
client's disconnect still reaches the route.
"""

from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sra_rag.server.errors import APIError

REPLICA_HEADER = "x-sra-rag-replica"


async def send_error(send: Send, error: APIError) -> None:
    """Answer with ``error`` (a whole response, in OpenAI's shape)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Refuse every request (every route, unknown ones included) without ``Authorization: Bearer <key>``
    (the scheme's case does not matter, RFC 9110 section 11.1)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization")
        scheme, _, key = (given or b"").strip().partition(b" ")
        if scheme.lower() == b"bearer" and secrets.compare_digest(key.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        reason = "No API key was given" if given is None else "The API key is not valid"
        error = APIError(
            401,
            f"{reason}: send the header 'Authorization: Bearer <key>' (clients: api_key=...).",
            code="invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )
        await send_error(send, error)


class BodyTooLargeError(Exception):
    """The request body grew past the limit while it was read."""


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413 before it is parsed: as soon as
    ``Content-Length`` says so, else as soon as the bytes received pass the limit (chunked uploads).
    The rest of the body is read and dropped as it arrives (it costs no memory), so that the client,
    still sending, reads the 413 rather than a reset connection; past ``drain_bytes`` the connection
    is closed instead."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = max(64 << 20, 16 * max_bytes)

    async def drain(self, receive: Receive) -> None:
        drained = 0
        while drained <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def error(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes:,} bytes "
            "(--max-body-bytes); send fewer or shorter documents or messages.",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.drain(receive)
            await send_error(send, self.error())
            return
        received = 0
        started = finished = False

        async def counted() -> Message:
            nonlocal received, finished
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLargeError:
            if not started:
                if not finished:
                    await self.drain(receive)
                await send_error(send, self.error())


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
