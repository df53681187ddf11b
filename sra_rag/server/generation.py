"""From an OpenAI request to the engine and back.

:func:`chat_job` and :func:`completion_job` turn a validated request into a :class:`Job`: the prompt
(chat messages, raw text, or documents stuffed exactly as the reader stuffs them), the request's SRA
settings, sampling and output format, checked and tokenised by :meth:`SRAEngine.request` before the
request queues. :func:`start` submits a job to the engine's scheduler once it has an admission slot
and returns a :class:`Generation`, whose text pieces arrive within the request's deadline; closing it
(at the end, on error, timeout or client disconnect) cancels the request in the engine's batch and
frees the slot at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sra_rag.config import SRAConfig
from sra_rag.engine import ContextWindowExceededError, Prompt, TextStream
from sra_rag.generation.request import Request, SamplingSettingsError
from sra_rag.generation.tools import ToolCall, parse_tool_call
from sra_rag.rag.citing import CiteMode, cited_numbers, finish_answer
from sra_rag.rag.ordering import prepare_stuffed_prompt, resolve_order
from sra_rag.rag.stuffing import Chunk, ContextOverflowError, StuffedPrompt
from sra_rag.server.admission import Admission
from sra_rag.server.errors import APIError
from sra_rag.server.metrics import Metrics
from sra_rag.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Document,
    JSONObjectFormat,
    JSONSchemaFormat,
    Source,
)
from sra_rag.server.settings import ServerSettings

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine
    from sra_rag.readout.recorder import DocumentAttention

# OpenAI's defaults where a request leaves a sampling setting out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


class RequestTimeoutError(TimeoutError):
    """A request reached its deadline while generating."""


@dataclass
class Job:
    """One request as the engine reads it: ``prompt`` and ``options`` (keyword arguments of
    ``engine.request``), and the engine's checked, tokenised ``request``. ``stuffed`` is set when the
    request sent documents."""

    prompt: Prompt
    options: dict[str, Any]
    request: Request
    stuffed: StuffedPrompt | None = None
    attribute: bool = False
    cite: CiteMode | None = None
    tools: list[dict[str, Any]] | None = None

    def tool_call(self, text: str, finish_reason: str | None) -> ToolCall | None:
        """The call in the reply ``text`` when the request offered tools (None for a text reply). A
        call cut short by ``max_tokens`` is no call: the reply stays text, ``finish_reason`` "length"."""
        if not self.tools or finish_reason == "length":
            return None
        try:
            return parse_tool_call(text, self.tools)
        except ValueError:
            return None

    def sources(
        self, text: str, attention: DocumentAttention | None = None, answer: Sequence[float] | None = None
    ) -> list[Source] | None:
        """The stuffed documents as the prompt numbers them, whether ``text`` cites each, and how
        much the question read each (``attention``: the reply's readout, one score per document)
        and the answer did (``answer``: :func:`attribute`'s scores)."""
        if self.stuffed is None:
            return None
        cited = cited_numbers(text)
        count = len(self.stuffed.sources)
        scores = _rounded(None if attention is None else attention.scores, count)
        by_answer = _rounded(answer, count)
        return [
            Source(number=number, source=name, cited=number in cited, attention=score, answer_attention=read)
            for number, (name, score, read) in enumerate(
                zip(self.stuffed.sources, scores, by_answer, strict=True), start=1
            )
        ]


def _rounded(scores: Sequence[float] | None, count: int) -> list[float | None]:
    if scores is None or len(scores) != count:
        return [None] * count
    return [round(score, 4) for score in scores]


async def after_answer(
    engine: SRAEngine, job: Job, text: str, finish_reason: str | None
) -> tuple[str, list[float] | None]:
    """The citation to append to the finished answer ``text`` and how much it read each document
    (:func:`~sra_rag.rag.citing.finish_answer` with the request's ``cite`` and ``attribute``), off
    the event loop."""
    if job.stuffed is None or (job.cite is None and not job.attribute):
        return "", None
    return await asyncio.to_thread(
        finish_answer,
        engine,
        job.stuffed,
        text,
        finish_reason,
        job.options.get("sra"),
        cite=job.cite,
        attribute=job.attribute,
    )


# -- building a job -------------------------------------------------------------------------------


def chat_job(engine: SRAEngine, request: ChatCompletionRequest, settings: ServerSettings) -> Job:
    """A chat request; with ``tools`` (not ``tool_choice: "none"``) the engine offers them and holds
    the reply to a call by constrained decoding, or to text under ``"auto"``."""
    options = _sampling(engine, request)
    if request.documents is not None:
        question, system = _question(request)
        return _stuffed_job(engine, request, settings, question, system, options)
    messages = request.engine_messages()
    tools = None
    if request.calls_tools:
        tools = request.tool_specs
        options.update(tools=tools, tool_choice=request.engine_tool_choice)
    options["max_new_tokens"] = _max_new_tokens(engine, request.token_limit, messages, True, settings, "messages")
    job = _job(engine, messages, options, "messages")
    job.tools = tools
    return job


def completion_job(engine: SRAEngine, request: CompletionRequest, settings: ServerSettings) -> Job:
    """A completion reads ``prompt`` as formatted text; with documents, ``prompt`` is the question."""
    options = _sampling(engine, request)
    if request.documents is not None:
        return _stuffed_job(engine, request, settings, request.prompt, None, options)
    options["chat_template"] = False
    options["max_new_tokens"] = _max_new_tokens(engine, request.token_limit, request.prompt, False, settings, "prompt")
    return _job(engine, request.prompt, options, "prompt")


def max_token_chars(engine: SRAEngine) -> int:
    """The most characters one token of the engine's vocabulary stands for (at least 1): a prompt
    of ``n`` characters has at least ``n / max_token_chars`` tokens. Vocabulary strings are bytes
    (byte-level BPE) or characters (SentencePiece), never fewer than the characters they cover."""
    return max((len(token) for token in engine.tokenizer.get_vocab()), default=1) or 1


def check_prompt_size(
    request: ChatCompletionRequest | CompletionRequest, context_window: int, token_chars: int
) -> None:
    """Refuse a prompt that cannot fit the context window before tokenising it: its characters
    alone need more tokens than the window holds (``token_chars``: :func:`max_token_chars`), and
    tokenising megabytes would take seconds of CPU and memory."""
    if isinstance(request, ChatCompletionRequest):
        texts = [message.content or message.refusal or "" for message in request.messages]
        texts += [call.function.arguments for message in request.messages for call in message.tool_calls or ()]
        param = "messages"
    else:
        texts, param = [request.prompt], "prompt"
    if request.documents is not None:
        texts += [document.text for document in request.documents]
        param = "documents"
    characters = sum(len(text) for text in texts)
    at_least = characters // token_chars
    if at_least > context_window:
        raise APIError(
            400,
            f"The prompt has {characters:,} characters, so at least {at_least:,} tokens: more than the context "
            f"window of {context_window:,} tokens. Shorten it; nothing was truncated.",
            param=param,
            code="context_length_exceeded",
        )


def _job(
    engine: SRAEngine,
    prompt: Prompt,
    options: dict[str, Any],
    prompt_field: str,
    stuffed: StuffedPrompt | None = None,
    attribute: bool = False,
    cite: CiteMode | None = None,
) -> Job:
    """Check every setting and tokenise now, so that a bad request fails before it queues."""
    with engine_errors(prompt_field):
        return Job(prompt, options, engine.request(prompt, **options), stuffed, attribute, cite)


def resolve_sra(value: str | dict[str, Any] | None, base: SRAConfig) -> SRAConfig | None:
    """The request's SRA settings: a preset name (``"off"``, ``"paper"``, ...), or a mapping of
    :class:`SRAConfig` fields applied over ``preset`` (when given) or else over the server's default
    ``base``. ``None`` when the request does not say. A bad value is a 400 naming the field."""
    if value is None:
        return None
    if isinstance(value, str):
        return _preset(value, "sra")
    fields = dict(value)
    preset = fields.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise APIError(400, f"sra.preset must be a preset name, got {preset!r}", param="sra.preset")
    start = base if preset is None else _preset(preset, "sra.preset")
    try:
        return start.override(**fields)
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            path = ".".join(["sra", *(str(part) for part in problem["loc"])])
            message = "unknown SRA setting" if problem["type"] == "extra_forbidden" else problem["msg"]
            problems.append(f"{path}: {message}")
        first = ".".join(["sra", *(str(part) for part in error.errors()[0]["loc"])])
        raise APIError(400, "; ".join(problems), param=first, code="invalid_value") from None


def _preset(name: str, param: str) -> SRAConfig:
    try:
        return SRAConfig.preset(name)
    except ValueError as error:
        raise APIError(400, f"{param}: {error}", param=param, code="invalid_value") from None


def _sampling(engine: SRAEngine, request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """Keyword arguments of ``engine.stream`` for the request's SRA settings, sampling and output format
    (``max_new_tokens`` is added by the caller)."""
    options: dict[str, Any] = {
        "sra": resolve_sra(request.sra, engine.sra),
        "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        "top_p": DEFAULT_TOP_P if request.top_p is None else request.top_p,
        "seed": request.seed,
        "stop": request.stop,
    }
    for name in ("top_k", "min_p", "repetition_penalty"):  # vLLM's extensions, the engine's defaults if unset
        if getattr(request, name) is not None:
            options[name] = getattr(request, name)
    output = request.response_format
    if isinstance(output, JSONSchemaFormat):
        options["json_schema"] = output.json_schema.json_schema
    elif isinstance(output, JSONObjectFormat):
        options["json_schema"] = {"type": "object"}  # any JSON object
    return options


def _question(request: ChatCompletionRequest) -> tuple[str, str | None]:
    """With documents, the messages are the question (the last, only user message) and optionally a
    system message, which then replaces the reader's default system prompt."""
    system = [message.content or "" for message in request.messages if message.role in ("system", "developer")]
    rest = [message for message in request.messages if message.role not in ("system", "developer")]
    if len(rest) != 1 or rest[0].role != "user":
        raise APIError(
            400,
            "With documents, send the question as the one user message (and optionally a system message); "
            "the server builds the prompt around the documents the way the reader does. For a conversation, "
            "stuff the documents yourself and leave the documents field out.",
            param="messages",
        )
    return rest[0].content or "", "\n\n".join(system) or None


def _stuffed_job(
    engine: SRAEngine,
    request: ChatCompletionRequest | CompletionRequest,
    settings: ServerSettings,
    question: str,
    system: str | None,
    options: dict[str, Any],
) -> Job:
    max_new_tokens = request.token_limit or settings.default_max_tokens
    documents: list[Document] = request.documents or []
    chunks = [
        Chunk(
            document.text,
            document.source or f"document {number}",
            document.chunk_index,
            id=document.id,
            title=document.title,
        )
        for number, document in enumerate(documents, start=1)
    ]
    with engine_errors("documents"):
        stuffed = prepare_stuffed_prompt(
            engine,
            question,
            chunks,
            max_new_tokens=max_new_tokens,
            system_prompt=system,
            group_by_source=request.group_by_source,
            order=resolve_order(request.order, engine.defaults.order),
            sra=options.get("sra"),
        )
    # The reader's answer policy (loop guard, no per-token penalty), under what the request set itself.
    options = {**engine.defaults.sampling, **options, "max_new_tokens": max_new_tokens, "layout": stuffed.layout}
    return _job(engine, stuffed.messages, options, "documents", stuffed, request.attribute, request.cite_mode)


def _max_new_tokens(
    engine: SRAEngine,
    requested: int | None,
    prompt: Prompt,
    chat_template: bool,
    settings: ServerSettings,
    prompt_field: str,
) -> int:
    """The request's ``max_tokens``, or else the server's default capped at what the window leaves
    (a limit the client did not set is no truncation: ``finish_reason`` says "length" if it is hit)."""
    if requested is not None:
        return requested
    with engine_errors(prompt_field):
        prompt_tokens = engine.prepare(prompt, chat_template=chat_template).num_tokens
        remaining = engine.context_window - prompt_tokens
        if remaining < 1:
            raise ContextWindowExceededError(prompt_tokens, 1, engine.context_window)
    return min(settings.default_max_tokens, remaining)


@contextmanager
def engine_errors(param: str | None) -> Iterator[None]:
    """The engine's input errors as 400s: a prompt that does not fit is ``context_length_exceeded``
    (OpenAI's code) with the token counts; other bad input keeps the engine's message."""
    try:
        yield
    except APIError:
        raise
    except ContextOverflowError as error:
        raise APIError(400, str(error), param="documents", code="context_length_exceeded") from None
    except ContextWindowExceededError as error:
        raise APIError(400, str(error), param=param, code="context_length_exceeded") from None
    except SamplingSettingsError as error:  # name the setting, not the prompt
        setting = error.settings[0] if error.settings else param
        raise APIError(400, str(error), param=setting, code="invalid_value") from None
    except (ValueError, TypeError) as error:
        message = str(error)
        if message.startswith("json_schema"):  # the engine names its argument; the client sent response_format
            raise APIError(400, f"response_format: {message}", param="response_format", code="invalid_value") from None
        raise APIError(400, message, param=param, code="invalid_value") from None


# -- running a job --------------------------------------------------------------------------------


@dataclass
class Generation:
    """A started request: its engine stream and its admission slot, until :meth:`close`."""

    stream: TextStream
    admission: Admission
    metrics: Metrics
    arrived: float
    deadline: float
    taken_at: float
    closed: bool = field(default=False, init=False)

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text pieces; raises :class:`RequestTimeoutError` at the deadline. Closes the
        generation when done, failed or abandoned."""
        iterator = self.stream.__aiter__()
        first = True
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                try:
                    piece = await asyncio.wait_for(iterator.__anext__(), max(remaining, 0.0))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise RequestTimeoutError(
                        f"The request ran past its deadline ({self.deadline - self.arrived:.0f} s) after "
                        f"{self.stream.completion_tokens} generated tokens."
                    ) from None
                if first:
                    self.metrics.first_token.observe(time.monotonic() - self.arrived)
                    first = False
                yield piece
        finally:
            aclose = getattr(iterator, "aclose", None)  # an async generator: stop its worker now
            if aclose is not None:
                await aclose()
            self.close()

    def close(self) -> None:
        """Stop generating and free the slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.stream.close()  # the request leaves the engine's batch at its next step (if still running)
        self.admission.release(self.taken_at)
        self.metrics.completion_tokens.inc(self.stream.completion_tokens)


async def start(
    engine: SRAEngine, job: Job, admission: Admission, metrics: Metrics, arrived: float, deadline: float
) -> Generation:
    """Wait for a slot (until ``deadline``), then submit ``job`` to the engine's scheduler."""
    taken_at = await admission.acquire(deadline - time.monotonic())
    try:
        stream = engine.submit(job.request)
    except BaseException:
        admission.release(taken_at)
        raise
    metrics.prompt_tokens.inc(stream.prompt_tokens)
    return Generation(stream, admission, metrics, arrived, deadline, taken_at)
