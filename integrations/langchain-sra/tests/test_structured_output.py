"""ChatSRA's structured output and tool calling: bind_tools, with_structured_output, tool calls in the
history (fast, no model), and constrained replies of the embedded model (slow)."""

from __future__ import annotations

import json

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_sra import ChatSRA
from langchain_sra.chat_models import engine_messages
from langchain_sra.structured import engine_structured_kwargs, message_fields
from pydantic import BaseModel, Field

from sra_rag.generation.tools import as_tools


class Harbour(BaseModel):
    """Facts about a harbour town."""

    town: str = Field(description="the town's name")
    founded: int = Field(ge=1000, le=2100, description="the year it was founded")


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


FACTS = "Marrowick is a harbour town founded in 1652. Ferries sail from its quay."


# -- without the model -----------------------------------------------------------------------------


def test_bind_tools_binds_openai_tools_and_a_normalised_choice():
    chat = ChatSRA()
    bound = chat.bind_tools([add, Harbour], tool_choice="any")
    assert [spec["function"]["name"] for spec in bound.kwargs["tools"]] == ["add", "Harbour"]
    assert bound.kwargs["tool_choice"] == "required"
    assert chat.bind_tools([add], tool_choice="add").kwargs["tool_choice"] == "add"
    assert chat.bind_tools([add], tool_choice=True).kwargs["tool_choice"] == "required"
    assert chat.bind_tools([add]).kwargs["tool_choice"] == "auto"
    assert chat._engine is None  # binding loads nothing


@pytest.mark.parametrize(
    ("tools", "kwargs", "error", "message"),
    [
        ([add], {"tool_choice": "subtract"}, ValueError, "name of a bound tool"),
        ([add], {"parallel_tool_calls": True}, ValueError, "one tool call per reply"),
        ([], {}, TypeError, "non-empty list"),
        ([add], {"strict": "yes"}, TypeError, "strict"),
    ],
)
def test_bind_tools_rejects_what_it_cannot_do(tools, kwargs, error, message):
    with pytest.raises(error, match=message):
        ChatSRA().bind_tools(tools, **kwargs)


@pytest.mark.parametrize(
    ("schema", "kwargs", "error", "message"),
    [
        (Harbour, {"method": "xml"}, ValueError, "method must be one of"),
        (None, {}, ValueError, "needs a schema"),
        (Harbour, {"strict": 1}, TypeError, "strict"),
    ],
)
def test_with_structured_output_rejects_what_it_cannot_do(schema, kwargs, error, message):
    with pytest.raises(error, match=message):
        ChatSRA().with_structured_output(schema, **kwargs)


def test_tool_calls_and_results_in_the_history_are_rendered_as_text():
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("What is 1 + 2?"),
        AIMessage(
            [{"type": "thinking", "thinking": "easy"}, {"type": "text", "text": "Let me add."}],
            tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}],
        ),
        ToolMessage("3", tool_call_id="c1"),
        ToolMessage("no b", tool_call_id="c2", name="add", status="error"),
    ]
    assert engine_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": 'Let me add.\n{"name": "add", "arguments": {"a": 1, "b": 2}}'},
        {"role": "user", "content": "Tool add returned: 3"},
        {"role": "user", "content": "Tool add failed: no b"},
    ]


def test_call_kwargs_are_taken_out_for_the_engine():
    spec = {"name": "add", "parameters": {"type": "object", "properties": {}}}
    kwargs = {"tools": [spec], "tool_choice": "any", "temperature": 0.0}
    engine_kwargs, tools = engine_structured_kwargs(kwargs)
    assert kwargs == {"temperature": 0.0} and engine_kwargs["tool_choice"] == "required"
    assert tools == engine_kwargs["tools"] == as_tools([spec])
    assert engine_structured_kwargs({"tools": [spec], "tool_choice": "none"})[1] is None  # text, whatever it says
    assert engine_structured_kwargs({"json_schema": True}) == ({"json_schema": True}, None)
    with pytest.raises(ValueError, match="without tools"):
        engine_structured_kwargs({"tool_choice": "any"})


def test_replies_become_text_tool_calls_or_invalid_tool_calls():
    tools = as_tools([{"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}])
    assert message_fields("Hello", "stop", tools) == {"content": "Hello"}
    assert message_fields('{"a": 1}', "stop", None) == {"content": '{"a": 1}'}  # no tools: JSON is text
    call = message_fields('{"name": "add", "arguments": {"a": 1}}', "stop", tools)
    assert call["content"] == "" and [(c["name"], c["args"]) for c in call["tool_calls"]] == [("add", {"a": 1})]
    cut = message_fields('{"name": "add", "argu', "length", tools)
    assert "max_tokens" in cut["invalid_tool_calls"][0]["error"] and "tool_calls" not in cut


# -- the embedded model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat() -> ChatSRA:
    return ChatSRA(max_tokens=48, temperature=0)


@pytest.mark.slow
def test_structured_output_methods_fill_in_the_schema(chat: ChatSRA) -> None:
    question = f"{FACTS}\nWhich town is this, and when was it founded?"
    harbour = chat.with_structured_output(Harbour).invoke(question)
    assert isinstance(harbour, Harbour) and harbour.town == "Marrowick"
    raw = chat.with_structured_output(Harbour.model_json_schema(), include_raw=True).invoke(question)
    assert raw["parsing_error"] is None and raw["parsed"] == json.loads(raw["raw"].content)
    assert raw["parsed"]["town"] == "Marrowick"
    chunks = list(chat.with_structured_output(Harbour.model_json_schema()).stream(question))
    assert len(chunks) > 3 and chunks[-1] == raw["parsed"] and all(set(c) <= {"town", "founded"} for c in chunks)
    called = chat.with_structured_output(Harbour, method="function_calling", include_raw=True).invoke(question)
    assert isinstance(called["parsed"], Harbour) and called["raw"].tool_calls[0]["name"] == "Harbour"
    anything = chat.with_structured_output(method="json_mode").invoke(
        f"{FACTS}\nReply with a JSON object with the keys town and founded."
    )
    assert anything["town"] == "Marrowick"


@pytest.mark.slow
def test_a_reply_cut_by_max_tokens_is_a_clear_parsing_error(chat: ChatSRA) -> None:
    result = chat.with_structured_output(Harbour, include_raw=True, max_tokens=4).invoke(FACTS)
    assert result["raw"].response_metadata["finish_reason"] == "length" and result["parsed"] is None
    assert isinstance(result["parsing_error"], OutputParserException)
    assert "max_tokens" in str(result["parsing_error"])
    with pytest.raises(OutputParserException, match="cut off by max_tokens"):
        chat.with_structured_output(Harbour, max_tokens=4).invoke(FACTS)


@pytest.mark.slow
def test_an_agent_loop_with_a_forced_first_call(chat: ChatSRA) -> None:
    question = HumanMessage("What is the weather in San Francisco, CA?")
    call = chat.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert call.content == "" and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"]["location"], str)
    streamed = None
    for chunk in chat.bind_tools([get_weather], tool_choice="any").stream([question]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls[0]["args"] == call.tool_calls[0]["args"]
    result = get_weather.invoke(call.tool_calls[0])
    answer = chat.bind_tools([get_weather], tool_choice="none").invoke([question, call, result])
    assert isinstance(answer, AIMessage) and answer.text and not answer.tool_calls
    # "auto": the model may answer or call again; either way the reply is one of the two, whole.
    auto = chat.bind_tools([get_weather]).invoke([question, call, result])
    assert bool(auto.text) != bool(auto.tool_calls) and not auto.invalid_tool_calls
