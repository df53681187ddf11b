"""Structured output and function calling for ``SRALLM``, in LlamaIndex's types, on the core's
constrained decoding (:mod:`sra_rag.generation.structured`, :mod:`sra_rag.generation.tools`).

A call's ``json_schema`` (a pydantic class, a JSON schema dict or True) constrains the reply to JSON
that fits it; its ``tools`` (OpenAI tool dicts, as ``FunctionCallingLLM._prepare_chat_with_tools``
builds them) and ``tool_choice`` make the reply a call of a bound tool (``ToolCallBlock``) or, with
``"auto"``, text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection

from sra_rag.generation.tools import Tool, as_tools, parse_tool_call, render_tool_call, tool_choice_of

STRUCTURED_KEYS: tuple[str, ...] = ("json_schema", "tools", "tool_choice")
"""Keyword arguments of a call that ask for constrained decoding."""


def pop_structured(kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[Tool, ...] | None]:
    """Take the structured-output keys out of a call's ``kwargs`` (in place); returns the engine's
    keyword arguments for them and the tools a reply may call (None without tools or with
    ``tool_choice="none"``). LlamaIndex's own
    ``parallel_tool_calls`` hint is dropped: a reply holds at most one call anyway."""
    kwargs.pop("parallel_tool_calls", None)
    found = {key: kwargs.pop(key) for key in STRUCTURED_KEYS if key in kwargs}
    if not found.get("tools"):
        if found.get("tool_choice") not in (None, "none", "auto"):
            raise ValueError("tool_choice was given without tools; use chat_with_tools(tools, tool_choice=...)")
        found.pop("tools", None)
        found.pop("tool_choice", None)
        return found, None
    tools = as_tools(found["tools"])
    choice = tool_choice_of(found.get("tool_choice"), tools)
    # With "none" the reply is text, even text that looks like a call.
    return {**found, "tools": tools, "tool_choice": choice}, None if choice == "none" else tools


def reply_message(text: str, finish_reason: str | None, tools: Sequence[Tool] | None) -> ChatMessage:
    """The assistant message of a reply: a tool call (``ToolCallBlock``) when tools were bound and
    the reply is one, else text. A call cut by ``max_new_tokens`` is a ``ValueError`` saying so."""
    if tools is None or not text.startswith("{"):
        return ChatMessage(role=MessageRole.ASSISTANT, content=text)
    if finish_reason == "length":
        raise ValueError(
            f"The tool call was cut off by max_new_tokens before it was complete ({text[:200]!r}); "
            "raise max_new_tokens."
        )
    call = parse_tool_call(text, tools)
    assert call is not None
    block = ToolCallBlock(tool_call_id=call.id, tool_name=call.name, tool_kwargs=call.arguments)
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=[block])


def tool_selections(response: ChatResponse, error_on_no_tool_call: bool) -> list[ToolSelection]:
    """The tool calls of a response, for ``get_tool_calls_from_response``."""
    calls = [block for block in response.message.blocks if isinstance(block, ToolCallBlock)]
    if not calls and error_on_no_tool_call:
        raise ValueError(
            "The reply calls no tool (it is text); pass tool_required=True or tool_choice=<tool name> to force a call."
        )
    return [
        ToolSelection(
            tool_id=call.tool_call_id or "",
            tool_name=call.tool_name,
            tool_kwargs=call.tool_kwargs if isinstance(call.tool_kwargs, dict) else json.loads(call.tool_kwargs),
        )
        for call in calls
    ]


def message_text(message: ChatMessage, index: int, tool_names: dict[str, str]) -> str:
    """The text of a message as the model reads it: text blocks, then its tool calls in the format
    the model is asked to call in (``ToolCallBlock``\\ s, or OpenAI-style ``additional_kwargs``).
    ``tool_names`` collects each call's id and tool name, for the results that follow."""
    parts, calls = [], []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            arguments = block.tool_kwargs if isinstance(block.tool_kwargs, dict) else json.loads(block.tool_kwargs)
            calls.append(render_tool_call(block.tool_name, arguments))
            tool_names[block.tool_call_id or ""] = block.tool_name
        else:
            raise ValueError(f"message {index} has a {type(block).__name__}; SRALLM reads text only (and tool calls)")
    for call in message.additional_kwargs.get("tool_calls") or ():
        function = call.get("function", call) if isinstance(call, dict) else getattr(call, "function", call)
        name, arguments = _get(function, "name"), _get(function, "arguments")
        calls.append(render_tool_call(name, json.loads(arguments) if isinstance(arguments, str) else arguments))
        tool_names[str(_get(call, "id") or "")] = name
    text = "".join(parts)
    return "\n".join([text, *calls] if text else calls)


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)
