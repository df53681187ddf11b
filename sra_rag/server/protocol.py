"""OpenAI request and response bodies as pydantic models (the subset this server implements).

The surface follows OpenAI's API reference and vLLM's ``entrypoints/openai/protocol.py``. Requests
reject unknown fields (a typo such as ``max_token`` is a 400, not a silently ignored setting) and
fields the server cannot honour (``n`` other than 1, penalties, tools, log-probabilities) with a
message that says what to do instead. Five fields go beyond OpenAI, sent by clients as
``extra_body``: ``sra`` (per-request Scaled ReAttention settings), ``documents`` (retrieved text
that the server stuffs into the prompt the way the reader does), ``order`` (attention-ordered
stuffing of those documents, as ``Reader(order=...)``), ``attribute`` (score what the answer
read, as ``Reader(attribute=True)``) and ``cite`` (how an answer that cites no document gets a
citation, as ``Reader(cite=...)``; by attention by default). A reply to a request with documents
carries ``sources``: each document's number in the prompt, whether the answer cites it, how much the
question read it (``attention``) and, with ``attribute``, how much the answer read it
(``answer_attention``).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FinishReason = Literal["stop", "length"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests -------------------------------------------------------------------------------------


class ChatMessage(_Request):
    """One chat message. ``content`` is text, or a list of ``{"type": "text", "text": ...}`` parts
    (joined); ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("role", mode="before")
    @classmethod
    def _no_tools(cls, role: Any) -> Any:
        if role in ("tool", "function"):
            raise ValueError(
                f"{role!r} messages are not supported: this server does not call tools. "
                "For structured output use response_format json_schema."
            )
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: Any) -> Any:
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(
                        "content parts must be {'type': 'text', 'text': ...}; this server reads text only, "
                        f"got {kind!r}"
                    )
                texts.append(part["text"])
            return "".join(texts)
        if not isinstance(content, str):
            raise ValueError(
                "content must be a string or a list of {'type': 'text', 'text': ...} parts, "
                f"got {type(content).__name__}"
            )
        return content

    def as_dict(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class Document(_Request):
    """A retrieved document for the server to stuff into the prompt (``extra_body={"documents": [...]}``).

    ``source`` names it in citations (default ``"document <n>"``); ``id`` and ``chunk_index`` work as in
    :class:`sra_rag.rag.stuffing.Chunk` (deduplication, order of pieces of one source)."""

    text: str = Field(min_length=1)
    source: str | None = Field(None, min_length=1)
    id: str | None = None
    chunk_index: int | None = Field(None, ge=0)


class StreamOptions(_Request):
    include_usage: bool = False


class JSONSchemaSpec(_Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text"]


class JSONObjectFormat(_Request):
    type: Literal["json_object"]


class JSONSchemaFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class _GenerationRequest(_Request):
    """Fields both generation endpoints share. ``None`` means "the server's default": temperature 1
    and top_p 1 (OpenAI's defaults), ``max_tokens`` the server's default capped at what the context
    window leaves, no top_k / min_p / repetition penalty."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM's extension: the k most likely tokens; 0 or -1: off.")
    min_p: float | None = Field(
        None, ge=0, le=1, description="vLLM's extension: drop tokens below min_p x the top one."
    )
    repetition_penalty: float | None = Field(None, gt=0, description="vLLM's extension: > 1 discourages repeats.")
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    sra: str | dict[str, Any] | None = Field(
        None,
        description="Per-request SRA: a preset name ('off', 'paper', ...), or SRAConfig fields and a 'preset'.",
    )
    documents: list[Document] | None = Field(None, description="Retrieved documents to stuff into the prompt.")
    order: Literal["first", "last", "ends"] | None = Field(
        None,
        description="Attention-ordered stuffing of the documents: a read-only pass ranks them by how much the "
        "question reads each, and the most-read goes first, last or (with the next ones) at both ends.",
    )

    attribute: bool = Field(
        False,
        description="After answering, score how much the answer's own tokens read each document "
        "(sources[].answer_attention; one more read-only pass over the prompt and the answer).",
    )
    cite: Literal["attention", "model"] | bool | None = Field(
        None,
        description="When the answer cites no document by number, append ' (Document [n])': the document the "
        "answer's tokens read most ('attention', the default with documents, or true), or the number the model "
        "writes ('model'); false leaves the answer as written.",
    )

    @model_validator(mode="after")
    def _document_fields_need_documents(self) -> _GenerationRequest:
        if self.order is not None and self.documents is None:
            raise ValueError("order re-orders the documents field; send documents, or leave order out")
        if self.attribute and self.documents is None:
            raise ValueError("attribute scores the documents field; send documents, or leave attribute out")
        if self.cite not in (None, False) and self.documents is None:
            raise ValueError("cite names one of the documents field; send documents, or leave cite out")
        return self

    @property
    def cite_mode(self) -> Literal["attention", "model"] | None:
        """How a missing citation is chosen (None: not appended); ``"attention"`` by default with documents."""
        if self.documents is None or self.cite is False:
            return None
        if self.cite is None or self.cite is True:
            return "attention"
        return self.cite

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError(f"only n=1 is supported, got {n}; send separate requests for several completions")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("is not supported; leave it unset or 0, and use repetition_penalty (e.g. 1.1) instead")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k_off(cls, top_k: int | None) -> int | None:
        return 0 if top_k == -1 else top_k  # vLLM's clients send -1 for "off"; the engine's off is 0

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("is not supported; leave it unset or empty")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, stop: Any) -> Any:
        stops = [stop] if isinstance(stop, str) else stop
        if stop is not None and (
            not isinstance(stops, list) or not all(isinstance(item, str) and item for item in stops)
        ):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        return stop

    @field_validator("documents")
    @classmethod
    def _some_documents(cls, documents: list[Document] | None) -> list[Document] | None:
        if documents is not None and not documents:
            raise ValueError("is an empty list; send at least one document or leave the field out")
        return documents

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _some_messages(cls, messages: Any) -> Any:
        if isinstance(messages, list) and not messages:
            raise ValueError("is empty; send at least one {'role': 'user', 'content': ...} message")
        return messages

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("log-probabilities are not supported; leave logprobs unset or false")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("log-probabilities are not supported; leave top_logprobs unset")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools:
            raise ValueError(
                "tool calling is not supported by this server; for structured output use response_format "
                "json_schema (LangChain: with_structured_output(..., method='json_schema'))"
            )
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if choice not in (None, "none", "auto"):
            raise ValueError("tool calling is not supported by this server; leave tool_choice unset")
        return choice

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) and max_completion_tokens ({self.max_completion_tokens}) "
                "disagree; send one of them"
            )
        return self

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: ``prompt`` is read as already formatted text (no chat template)."""

    prompt: str
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
            raise ValueError(f"send exactly one prompt per request, got a list of {len(prompt)}")
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string (token ids are not supported)")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool | None) -> bool | None:
        if echo:
            raise ValueError("echo is not supported; leave it unset or false")
        return echo

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("suffix (insertion) is not supported; leave it unset")
        return suffix

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, best_of: int | None) -> int | None:
        if best_of is not None and best_of != 1:
            raise ValueError("only best_of=1 is supported")
        return best_of

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("log-probabilities are not supported; leave logprobs unset")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


# -- responses ------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class Source(BaseModel):
    """A stuffed document as the prompt numbers it (``[number]``), whether the answer cites it, and
    how much the question read it: ``attention``, the calibrated readout score (higher = read more;
    ``Answer.source_attention`` of the reader), None when the model gave no readout;
    ``answer_attention``: the same from the answer's own tokens (``Answer.answer_attention``), only
    when the request asked for ``attribute``."""

    number: int
    source: str
    cited: bool
    attention: float | None = None
    answer_attention: float | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: list[Source] | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    sources: list[Source] | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class TextCompletion(BaseModel):
    """The body of ``/v1/completions``, and of each of its stream chunks (OpenAI uses one type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    sources: list[Source] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sra-rag"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(body: BaseModel) -> dict[str, Any]:
    """A response body as JSON-ready data; ``sources`` only when the request sent documents."""
    data = body.model_dump(mode="json")
    if data.get("sources", ...) is None:
        del data["sources"]
    for choice in data.get("choices", ()):
        if "delta" in choice:  # a stream chunk's delta carries only what it changes, as OpenAI's do
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
    return data
