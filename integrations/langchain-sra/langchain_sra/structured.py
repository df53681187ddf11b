"""Structured output and tool calling for ``ChatSRA``, in LangChain's conventions, on the core's
constrained decoding (:mod:`sra_rag.generation.structured`, :mod:`sra_rag.generation.tools`).

- ``bind_tools``: the tools travel as OpenAI tool dicts in the call's keyword arguments; the engine
  offers them to the model and holds a call to a bound tool's schema. One call per reply.
- ``with_structured_output``: ``method="json_schema"`` (the default) decodes under the schema
  itself; ``"function_calling"`` forces a call of a tool made from the schema; ``"json_mode"`` decodes
  any JSON object and validates it afterwards.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolCall, ToolCallChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableGenerator, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from sra_rag.generation.tools import Tool, as_tools, parse_tool_call, tool_choice_of

Method = Literal["json_schema", "function_calling", "json_mode"]
METHODS: tuple[str, ...] = ("json_schema", "function_calling", "json_mode")
STRUCTURED_KEYS: tuple[str, ...] = ("json_schema", "tools", "tool_choice")
"""Keyword arguments of a call that ask for constrained decoding (bound by the methods below)."""


def bind_tools_kwargs(
    tools: Sequence[Any], tool_choice: Any, parallel_tool_calls: bool | None, strict: bool | None
) -> dict[str, Any]:
    """The call keyword arguments that ``bind_tools`` binds: the tools as OpenAI tool dicts (LangChain
    tools, functions, pydantic classes, TypedDicts and JSON schemas are converted by LangChain) and the
    normalised ``tool_choice``, each checked now; that names are unique is checked when the model is
    called (a binding may be built and never called with a clashing set)."""
    if parallel_tool_calls:
        raise ValueError(
            "ChatSRA makes one tool call per reply; call the model again with the result for the next call "
            "(parallel_tool_calls=True is not supported)"
        )
    if strict is not None and not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool or None, got {strict!r}")
    if isinstance(tools, (str, dict)) or not isinstance(tools, Sequence) or not tools:
        raise TypeError(f"tools must be a non-empty list of tools, got {tools!r}")
    formatted = [convert_to_openai_tool(tool) for tool in tools]
    choice = tool_choice_of(tool_choice, [Tool.from_spec(spec) for spec in formatted])
    return {"tools": formatted, "tool_choice": choice}


def engine_structured_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[Tool, ...] | None]:
    """Take the structured-output keys out of a call's ``kwargs`` (in place); returns the engine's
    keyword arguments for them and the tools a reply may call (None without tools or with
    ``tool_choice="none"``)."""
    found = {key: kwargs.pop(key) for key in STRUCTURED_KEYS if key in kwargs}
    if "tool_choice" in found and not found.get("tools"):
        raise ValueError("tool_choice was given without tools; bind them with bind_tools(tools, tool_choice=...)")
    if not found.get("tools"):
        found.pop("tools", None)
        return found, None
    tools = as_tools(found["tools"])
    found["tools"] = tools
    found["tool_choice"] = tool_choice_of(found.get("tool_choice"), tools)
    # With "none" the reply is text, even text that looks like a call.
    return found, None if found["tool_choice"] == "none" else tools


def message_fields(text: str, finish_reason: str | None, tools: Sequence[Tool] | None) -> dict[str, Any]:
    """``content`` and ``tool_calls`` (or ``invalid_tool_calls``) of the reply ``text``."""
    if tools is None or not text.startswith("{"):
        return {"content": text}
    try:
        if finish_reason == "length":
            raise ValueError("the tool call was cut off by max_tokens before it was complete; raise max_tokens")
        call = parse_tool_call(text, tools)
    except ValueError as error:
        invalid = invalid_tool_call(name=None, args=text, id=None, error=str(error))
        return {"content": "", "invalid_tool_calls": [invalid]}
    assert call is not None
    calls: list[ToolCall] = [tool_call(name=call.name, args=call.arguments, id=call.id)]
    return {"content": "", "tool_calls": calls}


def chunk_fields(text: str, finish_reason: str | None, tools: Sequence[Tool]) -> dict[str, Any]:
    """The streamed form of a tool call (``tool_call_chunks``), for a reply that is one."""
    fields = message_fields(text, finish_reason, tools)
    chunks: list[ToolCallChunk] = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=0)
        for call in fields.get("tool_calls", ())
    ]
    chunks += [
        tool_call_chunk(name=bad["name"], args=bad["args"], id=bad["id"], index=0)
        for bad in fields.get("invalid_tool_calls", ())
    ]
    return {"content": fields["content"], "tool_call_chunks": chunks}


def text_pieces(pieces: Iterable[str], tools: Sequence[Tool] | None, held: list[str]) -> Iterator[str]:
    """The pieces of a text reply, as they come. With tools bound, a reply whose first piece begins
    with ``{`` is a tool call, not text: its pieces are collected in ``held``, to be read at the end."""
    for index, piece in enumerate(pieces):
        if held or (index == 0 and tools is not None and piece.startswith("{")):
            held.append(piece)
        else:
            yield piece


async def atext_pieces(pieces: AsyncIterator[str], tools: Sequence[Tool] | None, held: list[str]) -> AsyncIterator[str]:
    """:func:`text_pieces` over an async stream."""
    first = True
    async for piece in pieces:
        if held or (first and tools is not None and piece.startswith("{")):
            held.append(piece)
        else:
            yield piece
        first = False


def structured_output(
    model: BaseChatModel,
    schema: Mapping[str, Any] | type | None,
    *,
    method: str,
    include_raw: bool,
    strict: bool | None,
    kwargs: dict[str, Any],
) -> Runnable[LanguageModelInput, Any]:
    """The runnable of ``with_structured_output`` (see the module doc for the methods)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if strict is not None and not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool or None, got {strict!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f"method={method!r} needs a schema; only method='json_mode' works without one")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": schema}}
    parser: Runnable[Any, Any]
    if method == "function_calling":
        assert schema is not None
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = model.bind(**bind_tools_kwargs([schema], name, None, strict), **trace, **kwargs)
        if is_pydantic:
            parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
        else:
            parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        parser = RunnableLambda(_require_tool_call) | parser
    else:
        json_schema: Any = convert_to_json_schema(schema) if method == "json_schema" else True  # type: ignore[arg-type]
        llm = model.bind(json_schema=json_schema, **trace, **kwargs)
        # A pydantic object is only built from the whole reply; dicts stream as partial JSON.
        parser = RunnableLambda(_model_parser(schema)) if is_pydantic else JsonOutputParser()
    checked = RunnableGenerator(_check_complete, _acheck_complete) | parser
    if include_raw:
        parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | checked, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks([fallback], exception_key="parsing_error")
    return llm | checked


def _incomplete(message: BaseMessage) -> None:
    if message.response_metadata.get("finish_reason") == "length":
        calls = getattr(message, "invalid_tool_calls", None) or getattr(message, "tool_call_chunks", None)
        text = str(calls[0]["args"]) if calls else str(message.content)
        raise OutputParserException(
            f"The reply was cut off by max_tokens before the JSON was complete; raise max_tokens "
            f"(reply so far: {text[:300]!r})",
            llm_output=text,
        )


def _check_complete(messages: Iterator[BaseMessage]) -> Iterator[BaseMessage]:
    """Pass messages or chunks through; a reply cut by ``max_tokens`` is an error, not partial JSON."""
    for message in messages:
        _incomplete(message)
        yield message


async def _acheck_complete(messages: AsyncIterator[BaseMessage]) -> AsyncIterator[BaseMessage]:
    async for message in messages:
        _incomplete(message)
        yield message


def _require_tool_call(message: BaseMessage) -> BaseMessage:
    if isinstance(message, AIMessage) and message.invalid_tool_calls:
        raise OutputParserException(f"The tool call is invalid: {message.invalid_tool_calls[0]['error']}")
    return message


def _model_parser(schema: Any) -> Callable[[BaseMessage], Any]:
    def parse(message: BaseMessage) -> Any:
        text = message.text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise OutputParserException(f"The reply is not JSON ({error}): {text[:200]!r}", llm_output=text) from None
        try:
            return schema.model_validate(value) if hasattr(schema, "model_validate") else schema.parse_obj(value)
        except ValueError as error:
            raise OutputParserException(f"The reply does not fit {schema.__name__}: {error}", llm_output=text) from None

    return parse
