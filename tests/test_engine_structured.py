"""Structured output and tool calls through SRAEngine: json_schema=, tools= and tool_choice=, alone and
in batches of concurrent requests (tiny random engine; the embedded model under @pytest.mark.slow)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from sra_rag.generation.structured import json_schema_dict
from sra_rag.generation.tools import as_tools, parse_tool_call, tool_call_schema


class Reading(BaseModel):
    station: str = Field(max_length=4)
    level: Literal["low", "high"]
    values: list[Annotated[int, Field(ge=0, le=99)]] = Field(max_length=2)


SCHEMAS = {
    "pydantic": Reading,
    "enum": {"type": "string", "enum": ["north", "south"]},
    "bounded": {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
    },
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer", "maximum": 99}, "b": {"type": "integer", "maximum": 99}},
                "required": ["a", "b"],
            },
        },
    },
    {"name": "ping", "description": "Check the line."},
]
PROMPT = [{"role": "user", "content": "Reply in JSON."}]


def validate(text: str, schema) -> object:
    value = json.loads(text)
    jsonschema.validate(value, json_schema_dict(schema))
    return value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_gives_json_that_validates(tiny_engine, name):
    result = tiny_engine.complete(PROMPT, json_schema=SCHEMAS[name], max_new_tokens=120)
    assert result.finish_reason == "stop"
    validate(result.text, SCHEMAS[name])


def test_any_json_object(tiny_engine):
    result = tiny_engine.complete(PROMPT, json_schema=True, max_new_tokens=40)
    assert result.text.startswith("{")
    if result.finish_reason == "stop":
        assert isinstance(json.loads(result.text), dict)


def test_structured_requests_share_batches_and_keep_their_outputs(tiny_engine):
    requests = [
        (PROMPT, {"json_schema": SCHEMAS["pydantic"]}),
        ([{"role": "user", "content": "Another reading, please."}], {"json_schema": SCHEMAS["bounded"]}),
        (PROMPT, {}),  # unconstrained, in the same batch
        (PROMPT, {"tools": TOOLS, "tool_choice": "required"}),
    ]
    alone = [tiny_engine.complete(prompt, max_new_tokens=60, **kwargs) for prompt, kwargs in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: tiny_engine.complete(r[0], max_new_tokens=60, **r[1]), requests))
    assert [result.text for result in together] == [result.text for result in alone]
    for (_, kwargs), result in zip(requests[:2], alone, strict=False):
        assert result.finish_reason == "stop"
        validate(result.text, kwargs["json_schema"])
    assert parse_tool_call(alone[-1].text, as_tools(TOOLS)) is not None


def test_a_reply_cut_by_max_new_tokens_says_so(tiny_engine):
    result = tiny_engine.complete(PROMPT, json_schema=SCHEMAS["pydantic"], max_new_tokens=3)
    assert result.finish_reason == "length" and result.completion_tokens == 3
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


@pytest.mark.parametrize("choice", ["required", "add", "ping"])
def test_a_forced_tool_call_names_a_bound_tool_with_valid_arguments(tiny_engine, choice):
    tools = as_tools(TOOLS)
    result = tiny_engine.complete(PROMPT, tools=TOOLS, tool_choice=choice, max_new_tokens=60)
    call = parse_tool_call(result.text, tools)
    assert call is not None and result.finish_reason == "stop"
    jsonschema.validate({"name": call.name, "arguments": call.arguments}, tool_call_schema(tools, choice))
    if choice != "required":
        assert call.name == choice


def test_auto_and_none(tiny_engine):
    tools = as_tools(TOOLS)
    auto = tiny_engine.complete(PROMPT, tools=TOOLS, max_new_tokens=40)
    call = parse_tool_call(auto.text, tools) if auto.finish_reason == "stop" else None
    assert call is not None or not auto.text.startswith("{")
    none = tiny_engine.complete(PROMPT, tools=TOOLS, tool_choice="none", max_new_tokens=10)
    assert none.text == tiny_engine.complete(PROMPT, max_new_tokens=10).text  # nothing offered, nothing held
    offered = tiny_engine.request(PROMPT, tools=TOOLS, tool_choice="required", max_new_tokens=4)
    plain = tiny_engine.request(PROMPT, max_new_tokens=4)
    assert len(offered.prompt_ids) > len(plain.prompt_ids) and len(offered.logits_processors) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"json_schema": {"type": "bogus"}}, ValueError, "not a valid JSON Schema"),
        ({"json_schema": "object"}, TypeError, "pydantic model class or True"),
        ({"json_schema": True, "tools": TOOLS}, ValueError, "not both"),
        ({"tool_choice": "required"}, ValueError, "without tools"),
        ({"tools": TOOLS, "tool_choice": "subtract"}, ValueError, "name of a bound tool"),
        ({"tools": [{"name": "bad name"}]}, ValueError, "tool name"),
    ],
)
def test_bad_structured_settings_fail_at_the_call(tiny_engine, kwargs, error, message):
    with pytest.raises(error, match=message):
        tiny_engine.request(PROMPT, **kwargs)


def test_tools_need_chat_messages(tiny_engine):
    with pytest.raises(ValueError, match="chat_template=False"):
        tiny_engine.request("<|im_start|>user\nhi<|im_end|>\n", chat_template=False, tools=TOOLS)


# -- the embedded model ----------------------------------------------------------------------------


class Harbour(BaseModel):
    town: str
    founded: int = Field(ge=1000, le=2100)
    boats: list[Literal["ferry", "trawler", "yacht"]] = Field(max_length=3)


FACTS = (
    "Marrowick is a harbour town founded in 1652. Ferries and trawlers sail from its quay. "
    "The lighthouse stands at 12 Quay Road."
)


@pytest.mark.slow
def test_the_embedded_model_fills_a_schema_alone_and_in_a_batch(embedded_engine):
    messages = [{"role": "user", "content": f"{FACTS}\nReply with the facts as JSON."}]
    alone = embedded_engine.complete(messages, json_schema=Harbour, max_new_tokens=60)
    assert alone.finish_reason == "stop"
    harbour = Harbour.model_validate_json(alone.text)
    assert harbour.town == "Marrowick"
    others = [
        ([{"role": "user", "content": "Name a colour."}], {}),
        ([{"role": "user", "content": "What is 2 + 3? Use the tool."}], {"tools": TOOLS, "tool_choice": "add"}),
    ]
    expected = [embedded_engine.complete(prompt, max_new_tokens=30, **kwargs).text for prompt, kwargs in others]
    with ThreadPoolExecutor(3) as pool:
        batch = pool.submit(embedded_engine.complete, messages, json_schema=Harbour, max_new_tokens=60)
        rest = [pool.submit(embedded_engine.complete, p, max_new_tokens=30, **k) for p, k in others]
        assert batch.result().text == alone.text
        assert [future.result().text for future in rest] == expected
    call = parse_tool_call(expected[1], as_tools(TOOLS))
    assert call is not None and call.name == "add" and call.arguments == {"a": 2, "b": 3}
