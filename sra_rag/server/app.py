"""The OpenAI-compatible app: ``create_app(engine) -> FastAPI``.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both blocking
and streamed as server-sent events ending with ``data: [DONE]``), ``GET /health`` (readiness; 503
while the queue is full or the app shuts down), ``GET /health/live`` and ``GET /metrics``. The same
app runs under uvicorn (``sra-rag serve``) and in every Ray Serve replica
(:mod:`sra_rag.server.deployment`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from sra_rag import __version__
from sra_rag.server.admission import Admission, AdmissionTimeoutError, QueueFullError
from sra_rag.server.errors import APIError, install_error_handlers
from sra_rag.server.generation import (
    Generation,
    Job,
    RequestTimeoutError,
    after_answer,
    chat_job,
    completion_job,
    start,
)
from sra_rag.server.metrics import Metrics, MetricsMiddleware
from sra_rag.server.middleware import BearerAuth, ReplicaHeader
from sra_rag.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    TextCompletion,
    Usage,
    dump,
    new_id,
    now,
)
from sra_rag.server.settings import ServerSettings

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

T = TypeVar("T")


@dataclass
class ServerState:
    """What the routes share: the engine, the settings, the queue and the metrics (``app.state.server``)."""

    engine: SRAEngine
    settings: ServerSettings
    model_name: str
    admission: Admission
    metrics: Metrics
    created: int
    accepting: bool = True

    @property
    def ready(self) -> bool:
        return self.accepting and not self.admission.full


def create_app(engine: SRAEngine, settings: ServerSettings | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``engine``. Each app has its own queue and metrics registry."""
    settings = settings or ServerSettings()
    admission = Admission(settings.max_batch, settings.queue_size)
    state = ServerState(
        engine=engine,
        settings=settings,
        model_name=settings.model_name or engine.name,
        admission=admission,
        metrics=Metrics(
            running=lambda: admission.running,
            waiting=lambda: admission.waiting,
            prefix_cache=lambda: engine.prefix_cache_stats,
        ),
        created=now(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.accepting = True
        yield
        state.accepting = False  # draining: readiness turns false while uvicorn finishes open requests

    app = FastAPI(
        title="sra-rag",
        version=__version__,
        summary="An OpenAI-compatible reader with Scaled ReAttention.",
        lifespan=lifespan,
    )
    app.state.server = state
    install_error_handlers(app)
    # Outermost last: the replica header and the metrics also cover refused (401) requests.
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(ReplicaHeader, replica=settings.replica or f"{socket.gethostname()}:{os.getpid()}")
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    def card() -> ModelCard:
        return ModelCard(id=state.model_name, created=state.created, max_model_len=state.engine.context_window)

    def check_model(name: str) -> None:
        if name != state.model_name:
            raise APIError(
                404,
                f"The model {name!r} does not exist here; this server serves {state.model_name!r} (GET /v1/models).",
                param="model",
                code="model_not_found",
            )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return dump(ModelList(data=[card()]))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return dump(card())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        check_model(body.model)
        arrived = time.monotonic()
        job = await asyncio.to_thread(chat_job, state.engine, body, state.settings)
        return await _until_disconnected(request, _respond(state, job, body, arrived, chat=True))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body.model)
        arrived = time.monotonic()
        job = await asyncio.to_thread(completion_job, state.engine, body, state.settings)
        return await _until_disconnected(request, _respond(state, job, body, arrived, chat=False))

    @app.get("/health")
    async def health() -> JSONResponse:
        """Readiness (200, or 503 while the queue is full or the server shuts down) and the load."""
        ready = state.ready
        body = {
            "status": "ok" if ready else "unavailable",
            "live": True,
            "ready": ready,
            "model": state.model_name,
            "running": state.admission.running,
            "waiting": state.admission.waiting,
            "max_batch": state.settings.max_batch,
            "queue_size": state.settings.queue_size,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/health/live")
    async def live() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "live": True}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _respond(
    state: ServerState, job: Job, body: ChatCompletionRequest | CompletionRequest, arrived: float, *, chat: bool
) -> Response:
    """Run ``job`` and answer in one body, or as a stream of server-sent events."""
    deadline = arrived + state.settings.timeout
    try:
        generation = await start(state.engine, job, state.admission, state.metrics, arrived, deadline)
    except QueueFullError as error:
        raise APIError(429, str(error), code="queue_full", headers={"Retry-After": str(error.retry_after)}) from None
    except AdmissionTimeoutError as error:
        raise APIError(504, f"The request timed out waiting for a slot: {error}.", code="timeout") from None
    reply_id = new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        return EventSourceResponse(
            _events(state, generation, job, body, reply_id, chat=chat),
            sep="\n",
            background=BackgroundTask(generation.close),  # in case the stream never started
        )
    try:
        text = "".join([piece async for piece in generation.pieces()])
    except RequestTimeoutError as error:
        raise APIError(504, str(error), code="timeout") from None
    stream = generation.stream
    assert stream.finish_reason is not None
    citation, answer = await after_answer(state.engine, job, text, stream.finish_reason)
    text += citation
    fields: dict[str, Any] = {
        "id": reply_id,
        "created": now(),
        "model": state.model_name,
        "usage": Usage.of(stream.prompt_tokens, stream.completion_tokens),
        "sources": job.sources(text, stream.document_attention, answer),
    }
    reply: ChatCompletion | TextCompletion
    if chat:
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=stream.finish_reason)
        reply = ChatCompletion(choices=[choice], **fields)
    else:
        completion = CompletionChoice(text=text, finish_reason=stream.finish_reason)
        reply = TextCompletion(choices=[completion], **fields)
    return JSONResponse(dump(reply))


async def _events(
    state: ServerState,
    generation: Generation,
    job: Job,
    body: ChatCompletionRequest | CompletionRequest,
    reply_id: str,
    *,
    chat: bool,
) -> AsyncIterator[dict[str, str]]:
    """The stream: (chat: a first chunk with the role), a chunk per generated piece, a last chunk with
    ``finish_reason`` (and ``sources`` when documents were sent), a usage chunk when asked for
    (``stream_options.include_usage``), then ``[DONE]``. A timeout after the response has started
    becomes an error event in OpenAI's shape, which OpenAI clients raise."""
    created, model = now(), state.model_name

    def chunk(text: str | None, finish_reason: Any = None, *, first: bool = False, **extra: Any) -> dict[str, str]:
        if chat:
            delta = Delta(role="assistant" if first else None, content=text)
            choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
            return _event(ChatCompletionChunk(id=reply_id, created=created, model=model, choices=[choice], **extra))
        completion = CompletionChoice(text=text or "", finish_reason=finish_reason)
        return _event(TextCompletion(id=reply_id, created=created, model=model, choices=[completion], **extra))

    try:
        if chat:
            yield chunk("", first=True)
        async for piece in generation.pieces():
            yield chunk(piece)
    except RequestTimeoutError as error:
        yield {"data": json.dumps(APIError(504, str(error), code="timeout").body())}
        yield {"data": "[DONE]"}
        return
    finally:
        generation.close()
    stream = generation.stream
    citation, answer = await after_answer(state.engine, job, stream.text, stream.finish_reason)
    if citation:
        yield chunk(citation)
    text = stream.text + citation
    yield chunk(None, stream.finish_reason, sources=job.sources(text, stream.document_attention, answer))
    if body.include_usage:
        usage = Usage.of(stream.prompt_tokens, stream.completion_tokens)
        reply = ChatCompletionChunk if chat else TextCompletion
        yield _event(reply(id=reply_id, created=created, model=model, choices=[], usage=usage))
    yield {"data": "[DONE]"}


def _event(body: Any) -> dict[str, str]:
    return {"data": json.dumps(dump(body), separators=(",", ":"))}


async def _until_disconnected(request: Request, response: Awaitable[T]) -> T | Response:
    """Await ``response`` unless the client disconnects first; then cancel it, so a request waiting for
    a slot or generating a blocking reply stops at once (vLLM's ``with_cancellation`` does the same).
    Streams watch for the disconnect themselves (sse-starlette)."""
    work = asyncio.ensure_future(response)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})  # let its cleanup (the slot, the engine's stream) run now
    if work.cancelled():
        return Response(status_code=499)  # nobody reads it: the client has gone
    return work.result()
