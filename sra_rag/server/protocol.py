"""OpenAI request and response bodies as pydantic models (the subset this server implements).

The surface follows OpenAI's API reference and vLLM's ``entrypoints/openai/protocol.py``, with the
chat fields clients send today (message ``name``, assistant ``content: null`` with ``tool_calls`` or
a ``refusal``, ``tool`` messages, ``tools`` and ``tool_choice``). Types are strict (``true`` is not
1, ``"yes"`` is not a boolean, NaN is not a number). Requests reject unknown fields (a typo such as
``max_token`` is a 400, not a silently ignored setting) and fields the server cannot honour (``n``
other than 1, penalties, log-probabilities) with a message that says what to do instead. Six
fields go beyond OpenAI, sent by clients as ``extra_body``: ``sra`` (per-request Scaled ReAttention
settings), ``documents`` (retrieved text that the server stuffs into the prompt the way the reader
does), ``order`` (attention-ordered stuffing of those documents, as ``Reader(order=...)``),
``group_by_source`` (documents of one source as one block, as ``Reader(group_by_source=True)``),
``attribute`` (score what the answer read, as ``Reader(attribute=True)``) and ``cite`` (how an
answer that cites no document gets a citation, as ``Reader(cite=...)``; by attention by default).
A reply to a request with documents carries ``sources``: each document's number in the prompt,
whether the answer cites it, how much the question read it (``attention``) and, with
``attribute``, how much the answer read it (``answer_attention``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sra_rag.config import Order
from sra_rag.generation.request import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY
from sra_rag.generation.tools import as_tools, render_tool_call, render_tool_result

FinishReason = Literal["stop", "length", "tool_calls"]


class _Request(BaseModel):
    # Strict types, as OpenAI's API: ``true`` is not 1, ``"yes"`` is not a boolean, NaN is no number.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# -- requests -------------------------------------------------------------------------------------


class FunctionCall(_Request):
    """A past call of an assistant message: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


class MessageToolCall(_Request):
    """``{"id", "type": "function", "function": {"name", "arguments"}}`` of an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @property
    def arguments(self) -> dict[str, Any]:
        try:
            value = json.loads(self.function.arguments or "{}")
        except json.JSONDecodeError:
            value = None
        return value if isinstance(value, dict) else {"arguments": self.function.arguments}


class ChatMessage(_Request):
    """One chat message as OpenAI's clients send it. ``content`` is text, or a list of
    ``{"type": "text", "text": ...}`` parts (joined); an assistant message may have ``content: null``
    with ``tool_calls`` or a ``refusal``; a ``tool`` message answers the call ``tool_call_id``;
    ``developer`` is OpenAI's newer name for ``system``; ``name`` (a participant's name) is accepted
    and not shown to the model."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _no_functions(cls, role: Any) -> Any:
        if role == "function":
            raise ValueError(
                "'function' messages are OpenAI's deprecated form; send the result as a 'tool' message with "
                "the call's tool_call_id"
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
        if content is not None and not isinstance(content, str):
            raise ValueError(
                "content must be a string or a list of {'type': 'text', 'text': ...} parts, "
                f"got {type(content).__name__}"
            )
        return content

    @model_validator(mode="after")
    def _fields_of_the_role(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (only an assistant message may have null content)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry a tool_call_id")
        return self

    def as_dict(self) -> dict[str, str]:
        """The message as the engine reads it (text only; tool calls and results are rendered by
        :meth:`ChatCompletionRequest.engine_messages`)."""
        content = self.content if self.content is not None else self.refusal or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class Document(_Request):
    """A retrieved document for the server to stuff into the prompt (``extra_body={"documents": [...]}``).

    ``source`` names it in citations (default ``"document <n>"``); ``title`` is shown in its header;
    ``id`` and ``chunk_index`` work as in :class:`sra_rag.rag.stuffing.Chunk` (deduplication, order of
    pieces of one source when grouped)."""

    text: str = Field(min_length=1)
    source: str | None = Field(None, min_length=1)
    title: str | None = None
    id: str | None = None
    chunk_index: int | None = Field(None, ge=0)


class StreamOptions(_Request):
    """``include_usage``: a last chunk with the token counts. ``include_obfuscation`` (random padding
    OpenAI adds against length side channels) is accepted and has no effect: no padding is sent."""

    include_usage: bool = False
    include_obfuscation: bool | None = None


class FunctionSpec(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Request):
    """An offered tool, ``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call this tool."""

    type: Literal["function"]
    function: NamedFunction


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
    repetition_penalty: float | None = Field(
        None,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="vLLM's extension: > 1 discourages repeats (0.01 to 1e6).",
    )
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
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
    order: Order | None = Field(
        None,
        description="Attention-ordered stuffing of the documents: a read-only pass ranks them by how much the "
        "question reads each, and the most-read goes first, last or (with the next ones) at both ends; "
        "'retrieved' keeps the order sent; unset: the model's default.",
    )
    group_by_source: bool = Field(
        False,
        description="Documents with the same source form one numbered block at the place of the first of them "
        "(false: every document is its own block, in the order sent).",
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
        if self.group_by_source and self.documents is None:
            raise ValueError("group_by_source groups the documents field; send documents, or leave it out")
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
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "required", "none"] | NamedToolChoice | None = None
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
    def _valid_tools(cls, tools: list[ToolSpec] | None) -> list[ToolSpec] | None:
        if tools is not None:
            try:
                as_tools([tool.model_dump(exclude_none=True) for tool in tools])
            except TypeError as error:  # pydantic reports ValueErrors only
                raise ValueError(str(error)) from None
        return tools

    @model_validator(mode="after")
    def _tool_choice_of_the_tools(self) -> ChatCompletionRequest:
        if not self.tools:
            # OpenAI refuses this, but clients send it (LlamaIndex's structured_predict): nothing to choose from.
            self.tool_choice = None
            return self
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [tool.function.name for tool in self.tools]
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools {names}")
        if self.calls_tools and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("send tools or a JSON response_format, not both (a tool call has its own schema)")
        if self.calls_tools and self.documents is not None:
            raise ValueError(
                "tools with documents is not supported; stuff the documents into the messages yourself, or "
                "leave tools out"
            )
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the tools are offered (sent, and ``tool_choice`` is not ``"none"``)."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def tool_specs(self) -> list[dict[str, Any]]:
        """The tools as OpenAI tool dicts (what :mod:`sra_rag.generation.tools` reads)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools or ()]

    @property
    def engine_tool_choice(self) -> str:
        """``tool_choice`` as the engine reads it: ``"auto"`` (the default), ``"required"``, ``"none"``
        or a tool's name."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or "auto"

    def engine_messages(self) -> list[dict[str, str]]:
        """The messages as the engine reads them: ``developer`` as ``system``; an assistant's past
        tool calls and each tool's result rendered as text, in the format the model is asked to
        call in (as the LangChain adapter renders them)."""
        names: dict[str, str] = {}
        converted = []
        for message in self.messages:
            entry = message.as_dict()
            if message.tool_calls:
                calls = [render_tool_call(call.function.name, call.arguments) for call in message.tool_calls]
                names.update((call.id, call.function.name) for call in message.tool_calls)
                entry["content"] = "\n".join([entry["content"], *calls] if entry["content"] else calls)
            elif message.role == "tool":
                name = names.get(message.tool_call_id or "")
                entry = {"role": "user", "content": render_tool_result(name, message.content or "")}
            converted.append(entry)
        return converted

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


class ReplyFunction(BaseModel):
    name: str
    arguments: str


class ReplyToolCall(BaseModel):
    """A call in a reply: ``arguments`` is JSON text, as OpenAI's."""

    id: str
    type: Literal["function"] = "function"
    function: ReplyFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ReplyToolCall] | None = None


class DeltaToolCall(BaseModel):
    """A streamed call: the whole call in one delta (``index`` 0; one call per reply)."""

    index: int = 0
    id: str
    type: Literal["function"] = "function"
    function: ReplyFunction


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
    tool_calls: list[DeltaToolCall] | None = None


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
        message = choice.get("message")
        if message is not None and message.get("tool_calls") is None:
            message.pop("tool_calls", None)  # a text reply, as OpenAI's
        if "delta" in choice:  # a stream chunk's delta carries only what it changes, as OpenAI's do
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
    return data
