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
import logging
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
from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from sra_rag import __version__
from sra_rag.server.admission import Admission, AdmissionTimeoutError, QueueFullError
from sra_rag.server.errors import APIError, install_error_handlers, validation_error
from sra_rag.server.generation import (
    Generation,
    Job,
    RequestTimeoutError,
    after_answer,
    chat_job,
    check_prompt_size,
    completion_job,
    max_token_chars,
    start,
)
from sra_rag.server.metrics import Metrics, MetricsMiddleware
from sra_rag.server.middleware import BearerAuth, BodyLimit, ReplicaHeader
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
    DeltaToolCall,
    ModelCard,
    ModelList,
    ReplyFunction,
    ReplyToolCall,
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
Body = TypeVar("Body", bound=BaseModel)
logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share: the engine, the settings, the queue and the metrics (``app.state.server``)."""

    engine: SRAEngine
    settings: ServerSettings
    model_name: str
    admission: Admission
    metrics: Metrics
    created: int
    token_chars: int = 1
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
        token_chars=max_token_chars(engine),
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
    # Outermost last. The metrics count refused (401, 413) requests too; a request without the key
    # is refused before its body is read, and learns nothing about the host (no replica header).
    app.add_middleware(ReplicaHeader, replica=settings.replica or f"{socket.gethostname()}:{os.getpid()}")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
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

    # The bodies are read here and parsed off the event loop (FastAPI would parse them on it), as
    # JSON with strict types; the schemas still show in the OpenAPI document.
    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        body = await _parse(request, ChatCompletionRequest)
        check_model(body.model)
        check_prompt_size(body, state.engine.context_window, state.token_chars)
        job = await asyncio.to_thread(chat_job, state.engine, body, state.settings)
        return await _until_disconnected(request, _respond(state, job, body, arrived, chat=True))

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        arrived = time.monotonic()
        body = await _parse(request, CompletionRequest)
        check_model(body.model)
        check_prompt_size(body, state.engine.context_window, state.token_chars)
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


async def _parse(request: Request, model: type[Body]) -> Body:
    """The request body as ``model``, parsed and validated in a worker thread; a 400 naming the field."""
    raw = await request.body()
    try:
        return await asyncio.to_thread(model.model_validate_json, raw)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False)) from None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself: ``model``'s JSON schema with
    its definitions inlined (the request models are not recursive)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _generation_error(error: BaseException, reply_id: str) -> APIError:
    """An engine failure as a 500 in OpenAI's shape, logged on one line (no traceback: the engine
    already confined the failure to this request; the others of its batch go on)."""
    logger.error("Request %s failed during generation: %s: %s", reply_id, type(error).__name__, error)
    return APIError(
        500,
        f"Generation failed ({type(error).__name__}: {error}); the request was stopped. Other requests are unaffected.",
        code="generation_failed",
    )


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
        stream = generation.stream
        citation, answer = await after_answer(state.engine, job, text, stream.finish_reason)
    except RequestTimeoutError as error:
        raise APIError(504, str(error), code="timeout") from None
    except Exception as error:
        raise _generation_error(error, reply_id) from None
    text += citation
    finish_reason = stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop"
    fields: dict[str, Any] = {
        "id": reply_id,
        "created": now(),
        "model": state.model_name,
        "usage": Usage.of(stream.prompt_tokens, stream.completion_tokens),
        "sources": job.sources(text, stream.document_attention, answer),
    }
    reply: ChatCompletion | TextCompletion
    if chat:
        call = job.tool_call(text, finish_reason)
        if call is not None:
            calls = [ReplyToolCall(id=call.id, function=ReplyFunction(name=call.name, arguments=_json(call.arguments)))]
            message = AssistantMessage(content=None, tool_calls=calls)
            choice = ChatChoice(message=message, finish_reason="tool_calls")
        else:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)
        reply = ChatCompletion(choices=[choice], **fields)
    else:
        completion = CompletionChoice(text=text, finish_reason=finish_reason)
        reply = TextCompletion(choices=[completion], **fields)
    return JSONResponse(dump(reply))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


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
    (``stream_options.include_usage``), then ``[DONE]``. A reply to a request with tools that is a
    call arrives whole, as one ``tool_calls`` delta, then ``finish_reason: "tool_calls"``. A timeout
    or a failure after the response has started becomes an error event in OpenAI's shape, then
    ``[DONE]``; OpenAI clients raise it."""
    created, model = now(), state.model_name

    def chunk(text: str | None, finish_reason: Any = None, *, first: bool = False, **extra: Any) -> dict[str, str]:
        if chat:
            delta = Delta(role="assistant" if first else None, content=text)
            choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
            return _event(ChatCompletionChunk(id=reply_id, created=created, model=model, choices=[choice], **extra))
        completion = CompletionChoice(text=text or "", finish_reason=finish_reason)
        return _event(TextCompletion(id=reply_id, created=created, model=model, choices=[completion], **extra))

    def error_event(error: APIError) -> dict[str, str]:
        return {"data": json.dumps(error.body())}

    held: list[str] = []  # a reply that may be a tool call is held back until it is complete
    try:
        if chat:
            yield chunk("", first=True)
        async for piece in generation.pieces():
            if job.tools and (held or piece.startswith("{")):
                held.append(piece)
                continue
            yield chunk(piece)
        stream = generation.stream
        text = stream.text
        finish_reason = stream.finish_reason if stream.finish_reason in ("stop", "length") else "stop"
        call = job.tool_call(text, finish_reason) if held else None
        if held and call is None:
            yield chunk("".join(held))  # not a complete call (cut by max_tokens): the text as it is
        citation, answer = await after_answer(state.engine, job, text, finish_reason)
    except RequestTimeoutError as error:
        yield error_event(APIError(504, str(error), code="timeout"))
        yield {"data": "[DONE]"}
        return
    except Exception as error:
        yield error_event(_generation_error(error, reply_id))
        yield {"data": "[DONE]"}
        return
    finally:
        generation.close()
    if citation:
        yield chunk(citation)
    text += citation
    sources = job.sources(text, stream.document_attention, answer)
    if call is not None:
        function = ReplyFunction(name=call.name, arguments=_json(call.arguments))
        delta = Delta(tool_calls=[DeltaToolCall(id=call.id, function=function)])
        choice = ChatChunkChoice(delta=delta)
        yield _event(ChatCompletionChunk(id=reply_id, created=created, model=model, choices=[choice]))
        yield chunk(None, "tool_calls", sources=sources)
    else:
        yield chunk(None, finish_reason, sources=sources)
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
