"""Tool calling on top of constrained decoding: tools as data, the prompt that offers them, the JSON
schema a call must follow, and reading a call back from the reply.

A reply that calls a tool is one JSON object, ``{"name": <tool>, "arguments": {...}}``, held to that
tool's parameter schema by constrained decoding (:mod:`sra_rag.generation.structured`), so it always names a
bound tool and its arguments always validate. The tools are offered in a system message written
here, the same for every chat template (the embedded model's template has no tool syntax), and past
calls and results are rendered as text in the same format. One call per reply.

``tool_choice`` (normalised by :func:`tool_choice_of`):

- ``"required"``: the reply is a call of one of the tools;
- a tool's name: the reply is a call of that tool;
- ``"auto"``: the model decides with its first token: a reply that begins with ``{`` is a call,
  anything else is a plain-text answer;
- ``"none"``: the tools are not offered and the reply is plain text.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sra_rag.generation.structured import json_schema_dict

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Tool names as OpenAI's API accepts them."""

CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and the JSON schema of its arguments
    (an object schema)."""

    name: str
    description: str
    parameters: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: Tool | Mapping[str, Any]) -> Tool:
        """A tool from an OpenAI tool (``{"type": "function", "function": {...}}``) or function
        (``{"name", "description", "parameters"}``) dict, validated."""
        if isinstance(spec, Tool):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"a tool must be a Tool or an OpenAI tool/function dict, got {type(spec).__name__}")
        function = spec.get("function", spec) if spec.get("type", "function") == "function" else None
        if not isinstance(function, Mapping):
            raise ValueError(f"only function tools can be called, got a tool of type {spec.get('type')!r}")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise ValueError(f"a tool name must be 1-64 letters, digits, '_' or '-', got {name!r}")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise TypeError(f"tool {name!r}: the description must be a string, got {type(description).__name__}")
        parameters = json_schema_dict(function.get("parameters") or {"type": "object", "properties": {}})
        if parameters.get("type", "object") != "object":
            raise ValueError(f"tool {name!r}: the parameters must be an object schema, got type {parameters['type']!r}")
        return cls(name, description, parameters)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the tool's name, its arguments and a fresh id."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def as_tools(specs: Iterable[Tool | Mapping[str, Any]]) -> tuple[Tool, ...]:
    """Validate a list of tools (see :meth:`Tool.from_spec`); names must be unique."""
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
        raise TypeError(f"tools must be a list of tools, got {type(specs).__name__}")
    tools = tuple(Tool.from_spec(spec) for spec in specs)
    if not tools:
        raise ValueError("tools is empty; pass at least one tool, or no tools at all")
    names = [tool.name for tool in tools]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"tool names must be unique; repeated: {repeated}")
    return tools


def tool_choice_of(choice: str | bool | Mapping[str, Any] | None, tools: Sequence[Tool]) -> str:
    """Normalise a tool choice to ``"auto"``, ``"required"``, ``"none"`` or a tool's name.

    Accepts the spellings of OpenAI and LangChain: ``None`` and ``"auto"``; ``"required"``,
    ``"any"`` and ``True`` (with one tool: that tool); ``"none"`` and ``False``; a tool's name;
    ``{"type": "function", "function": {"name": ...}}``.
    """
    if choice is None or choice == "auto":
        return "auto"
    if choice is False or choice == "none":
        return "none"
    if choice is True or choice in ("any", "required"):
        return "required"
    if isinstance(choice, Mapping):
        function = choice.get("function")
        choice = function.get("name") if isinstance(function, Mapping) else choice.get("name")
    names = [tool.name for tool in tools]
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(
        f"tool_choice must be 'auto', 'required' (or 'any'), 'none' or the name of a bound tool {names}, got {choice!r}"
    )


def tool_call_schema(tools: Sequence[Tool], choice: str) -> dict[str, Any]:
    """The JSON schema of a call under ``choice`` (``"auto"``, ``"required"`` or a tool's name): an
    object naming the tool and holding its arguments. Extra arguments are ruled out unless a tool's
    schema allows them; ``$defs`` of the tools are moved to the top, each under its tool's name."""
    selected = [tool for tool in tools if choice in ("auto", "required") or tool.name == choice]
    if not selected:
        raise ValueError(f"no bound tool is named {choice!r}")
    definitions: dict[str, Any] = {}
    variants = []
    for tool in selected:
        parameters, moved = _hoist_definitions(tool)
        definitions.update(moved)
        parameters.setdefault("additionalProperties", False)
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    if definitions:
        schema = {**schema, "$defs": definitions}
    return schema


def tool_prompt(tools: Sequence[Tool], choice: str) -> str:
    """The system text that offers ``tools`` under ``choice``."""
    lines = [json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools]
    call = '{"name": <tool name>, "arguments": <its arguments>}'
    if choice == "auto":
        how = f"To call a tool, reply with only a JSON object {call}. Otherwise, answer in plain text."
    elif choice == "required":
        how = f"Call one of them: reply with only a JSON object {call}."
    else:
        how = f'Call the tool {choice}: reply with only a JSON object {{"name": "{choice}", "arguments": ...}}.'
    return "You can call these tools, one JSON line each:\n" + "\n".join(lines) + "\n\n" + how


def offer_tools(messages: Sequence[Mapping[str, str]], tools: Sequence[Tool], choice: str) -> list[dict[str, str]]:
    """``messages`` with the tool prompt: appended to the first message if it is a system message,
    otherwise as a new system message before it. ``"none"`` offers nothing."""
    converted = [dict(message) for message in messages]
    if choice == "none":
        return converted
    prompt = tool_prompt(tools, choice)
    if converted and converted[0].get("role") == "system":
        converted[0]["content"] = f"{converted[0]['content']}\n\n{prompt}"
        return converted
    return [{"role": "system", "content": prompt}, *converted]


@dataclass(frozen=True)
class ToolRequest:
    """What a request with tools runs: the messages with the tools offered, and the JSON schema of a
    call (None for ``"none"``); ``allow_text``: the reply may instead be text (``"auto"``)."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None
    allow_text: bool


def tool_request(
    messages: Sequence[Mapping[str, str]],
    tools: Iterable[Tool | Mapping[str, Any]],
    tool_choice: str | bool | Mapping[str, Any] | None,
) -> ToolRequest:
    """Validate ``tools`` and ``tool_choice`` and build what a request with them runs."""
    checked = as_tools(tools)
    choice = tool_choice_of(tool_choice, checked)
    offered = offer_tools(messages, checked, choice)
    if choice == "none":
        return ToolRequest(offered, None, allow_text=True)
    return ToolRequest(offered, tool_call_schema(checked, choice), allow_text=choice == "auto")


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A past call as the assistant's text, in the format the model is asked to produce."""
    return json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)


def render_tool_result(name: str | None, content: str, *, error: bool = False) -> str:
    """A tool's result as the text of the message that hands it back to the model."""
    label = f"Tool {name}" if name else "The tool"
    return f"{label} {'failed' if error else 'returned'}: {content}"


def parse_tool_call(text: str, tools: Iterable[Tool | Mapping[str, Any]]) -> ToolCall | None:
    """The call in a reply generated with ``tools`` (:class:`Tool` objects or OpenAI tool dicts), or None for
    a plain-text answer (a reply that does not begin with ``{``). An incomplete or foreign call is a
    ``ValueError``."""
    if not text.startswith("{"):
        return None
    tools = as_tools(tools)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the reply is not a complete tool call ({error}): {text[:200]!r}") from None
    names = {tool.name for tool in tools}
    if (
        not isinstance(value, dict)
        or set(value) != {"name", "arguments"}
        or value["name"] not in names
        or not isinstance(value["arguments"], dict)
    ):
        expected = f'a {{"name", "arguments"}} call of one of the tools {sorted(names)}'
        raise ValueError(f"the reply is not {expected}: {text!r}")
    return ToolCall(value["name"], value["arguments"])


def _hoist_definitions(tool: Tool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tool's parameters with ``$defs`` / ``definitions`` taken out and renamed
    ``<tool>__<name>``, their ``$ref``\\ s rewritten to match, and the renamed definitions."""
    parameters = copy.deepcopy(tool.parameters)
    moved: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, definition in (parameters.pop(key, None) or {}).items():
            moved[f"{tool.name}__{name}"] = definition

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#"):
                for prefix in ("#/$defs/", "#/definitions/"):
                    if ref.startswith(prefix):
                        node = {**node, "$ref": f"#/$defs/{tool.name}__{ref[len(prefix) :]}"}
                        break
                else:
                    raise ValueError(
                        f"tool {tool.name!r}: $ref {ref!r} points into the parameters themselves; "
                        "put shared schemas under $defs"
                    )
            return {key: rewrite(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        return node

    return rewrite(parameters), {name: rewrite(definition) for name, definition in moved.items()}
