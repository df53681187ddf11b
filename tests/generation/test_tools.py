"""Tool calling as data (sra_rag.generation.tools): tools, choices, the call schema, the prompt, reading calls back."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel

from sra_rag.generation.tools import (
    Tool,
    ToolCall,
    as_tools,
    offer_tools,
    parse_tool_call,
    render_tool_call,
    render_tool_result,
    tool_call_schema,
    tool_choice_of,
    tool_prompt,
)


class Point(BaseModel):
    x: int
    y: int


class MoveArgs(BaseModel):
    to: Point
    speed: float


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
MOVE = {"name": "move", "description": "Move the cursor.", "parameters": MoveArgs.model_json_schema()}
PING = {"name": "ping"}


@pytest.fixture
def tools() -> tuple[Tool, ...]:
    return as_tools([ADD, MOVE, PING])


def test_tools_are_read_from_openai_tool_and_function_dicts(tools):
    add, move, ping = tools
    assert add == Tool("add", "Add two integers.", ADD["function"]["parameters"])
    assert move.name == "move" and move.parameters == MoveArgs.model_json_schema()
    assert ping == Tool("ping", "", {"type": "object", "properties": {}})
    assert Tool.from_spec(add) is add


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("add", TypeError, "OpenAI tool"),
        ({"type": "retrieval"}, ValueError, "only function tools"),
        ({"name": "two words"}, ValueError, "tool name"),
        ({"name": "x", "description": 3}, TypeError, "description"),
        ({"name": "x", "parameters": {"type": "array"}}, ValueError, "object schema"),
        ({"name": "x", "parameters": {"type": "bogus"}}, ValueError, "not a valid JSON Schema"),
    ],
)
def test_bad_tools_get_clear_errors(spec, error, message):
    with pytest.raises(error, match=message):
        as_tools([spec])


def test_tool_lists_are_checked():
    with pytest.raises(ValueError, match="repeated: \\['add'\\]"):
        as_tools([ADD, ADD])
    with pytest.raises(ValueError, match="empty"):
        as_tools([])
    with pytest.raises(TypeError, match="list of tools"):
        as_tools(ADD)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("any", "required"),
        ("required", "required"),
        (True, "required"),
        ("none", "none"),
        (False, "none"),
        ("add", "add"),
        ({"type": "function", "function": {"name": "move"}}, "move"),
        ({"name": "ping"}, "ping"),
    ],
)
def test_tool_choices_are_normalised(tools, choice, expected):
    assert tool_choice_of(choice, tools) == expected


@pytest.mark.parametrize("choice", ["subtract", 3, {"type": "function", "function": {"name": "nope"}}])
def test_unknown_tool_choices_name_the_bound_tools(tools, choice):
    with pytest.raises(ValueError, match="\\['add', 'move', 'ping'\\]"):
        tool_choice_of(choice, tools)


def test_the_call_schema_admits_exactly_calls_of_the_chosen_tools(tools):
    schema = tool_call_schema(tools, "required")
    jsonschema.Draft202012Validator.check_schema(schema)
    valid = [
        {"name": "add", "arguments": {"a": 1, "b": 2}},
        {"name": "move", "arguments": {"to": {"x": 1, "y": 2}, "speed": 0.5}},
        {"name": "ping", "arguments": {}},
    ]
    invalid = [
        {"name": "add", "arguments": {"a": 1}},
        {"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}},  # extra arguments are ruled out
        {"name": "move", "arguments": {"to": {"x": 1}, "speed": 0.5}},  # the nested $defs still apply
        {"name": "ping", "arguments": {"unasked": 1}},
        {"name": "nope", "arguments": {}},
        {"name": "ping", "arguments": {}, "extra": 1},
    ]
    for call in valid:
        jsonschema.validate(call, schema)
    for call in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(call, schema)
    only_add = tool_call_schema(tools, "add")
    jsonschema.validate(valid[0], only_add)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(valid[2], only_add)
    assert tools[1].parameters == MoveArgs.model_json_schema()  # the tools themselves are unchanged


def test_refs_into_the_parameters_themselves_are_refused():
    (tool,) = as_tools([{"name": "tree", "parameters": {"type": "object", "properties": {"a": {"$ref": "#"}}}}])
    with pytest.raises(ValueError, match="under \\$defs"):
        tool_call_schema([tool], "required")


def test_tools_are_offered_in_a_system_message(tools):
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    offered = offer_tools(messages, tools, "auto")
    assert offered[1:] == messages and offered[0]["role"] == "system"
    prompt = offered[0]["content"]
    assert prompt == tool_prompt(tools, "auto")
    assert all(json.dumps(tool.parameters) in prompt for tool in tools)
    assert "plain text" in prompt
    assert '"name": "add"' in tool_prompt(tools, "add") and "plain text" not in tool_prompt(tools, "required")
    with_system = offer_tools([{"role": "system", "content": "Be brief."}, *messages], tools, "required")
    assert len(with_system) == 2 and with_system[0]["content"].startswith("Be brief.\n\nYou can call these tools")
    assert offer_tools(messages, tools, "none") == messages


def test_calls_are_read_back_and_rendered_alike(tools):
    text = render_tool_call("add", {"a": 1, "b": 2})
    call = parse_tool_call(text, tools)
    assert isinstance(call, ToolCall) and (call.name, call.arguments) == ("add", {"a": 1, "b": 2})
    assert call.id.startswith("call_") and call.id != parse_tool_call(text, tools).id
    assert parse_tool_call("The sum is 3.", tools) is None
    assert render_tool_result("add", "3") == "Tool add returned: 3"
    assert render_tool_result(None, "no b", error=True) == "The tool failed: no b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "add", "arguments": {"a": 1', "not a complete tool call"),
        ('{"name": "nope", "arguments": {}}', "one of the tools"),
        ('{"name": "add"}', "one of the tools"),
        ('{"name": "add", "arguments": [1, 2]}', "one of the tools"),
    ],
)
def test_broken_calls_are_reported(tools, text, message):
    with pytest.raises(ValueError, match=message):
        parse_tool_call(text, tools)
