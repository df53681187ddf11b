"""Tool calling over HTTP with the engine's constrained decoding, on the tiny random model (its
choices are not judged, only the protocol): the ``openai`` client with every ``tool_choice``, blocking
and streamed; LangChain's ``ChatOpenAI.bind_tools`` and ``with_structured_output(method=
"function_calling")``; LlamaIndex's ``OpenAILike`` function calling and ``structured_predict``; and a
LangGraph ReAct agent whose loop sends the tool results back."""

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from sra_rag import SRAConfig, SRAEngine
from sra_rag.server import ServerSettings, create_app
from tests.server.conftest import RecordingEngine

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

MODEL = "tiny-llama"
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a town.",
        "parameters": {
            "type": "object",
            "properties": {"town": {"type": "string", "enum": ["Oslo", "Rome"]}},
            "required": ["town"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "clock", "description": "The time.", "parameters": {}}}


class Flag(BaseModel):
    """Whether the harbour is open."""

    open: bool
    level: Literal["low", "high"]


@pytest.fixture(scope="module")
def tool_engine(tiny_tokenizer, make_tiny_model) -> SRAEngine:
    """The tiny random model with a window for the tools' system message (about 400 of its tokens)
    and a call (about 40)."""
    model = make_tiny_model("llama", len(tiny_tokenizer))
    return SRAEngine(model, tiny_tokenizer, sra=SRAConfig.preset("recommended"), context_window=2048, name=MODEL)


@pytest.fixture
def recording_engine(tool_engine) -> RecordingEngine:
    return RecordingEngine(tool_engine)


@pytest.fixture
def url(recording_engine, live_server) -> str:
    return live_server(create_app(recording_engine, ServerSettings(default_max_tokens=96)))


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize(
    ("choice", "names"),
    [("required", {"get_weather", "clock"}), ({"type": "function", "function": {"name": "clock"}}, {"clock"})],
)
def test_a_call_is_returned_as_tool_calls_blocking_and_streamed(client, recording_engine, choice, names) -> None:
    common = {"model": MODEL, "messages": ASK, "tools": [WEATHER, CLOCK], "tool_choice": choice, "temperature": 0}
    reply = client.chat.completions.create(max_tokens=96, **common)
    assert reply.choices[0].finish_reason == "tool_calls"
    message = reply.choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    arguments = json.loads(call.function.arguments)
    assert arguments == ({"town": arguments.get("town")} if call.function.name == "get_weather" else {})
    sent = recording_engine.calls[-1]
    assert sent["tools"] == [WEATHER, CLOCK]
    assert sent["tool_choice"] == (choice if isinstance(choice, str) else "clock")

    chunks = list(client.chat.completions.create(max_tokens=96, stream=True, **common))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    streamed = [call for delta in deltas for call in delta.tool_calls or ()]
    assert len(streamed) == 1 and streamed[0].index == 0 and streamed[0].id.startswith("call_")
    assert (streamed[0].function.name, streamed[0].function.arguments) == (call.function.name, call.function.arguments)
    assert not "".join(delta.content or "" for delta in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_may_answer_in_text_and_none_offers_no_tools(client, recording_engine) -> None:
    auto = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=8, temperature=0)
    assert recording_engine.calls[-1]["tool_choice"] == "auto"
    choice = auto.choices[0]
    # The random model answers in text here (its first token is not "{"): content and no calls.
    assert choice.message.tool_calls is None and choice.message.content and choice.finish_reason == "length"
    streamed = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == choice.message.content
    plain = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert "tools" not in recording_engine.calls[-1] and plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content == recording_engine._engine.generate(ASK, max_new_tokens=8)


def test_a_conversation_with_calls_and_results_reaches_the_model(client, recording_engine) -> None:
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"town":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=4, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert recording_engine.calls[-1]["prompt"][1:] == [
        {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"town": "Oslo"}}'},
        {"role": "user", "content": "Tool get_weather returned: Sunny, 21 C."},
    ]


def test_langchain_bind_tools_and_structured_output(url: str) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(town: Literal["Oslo", "Rome"]) -> str:
        """The weather in a town."""
        return "Sunny"

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=96, max_retries=0)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([HumanMessage("Oslo?", name="ada")])
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert message.tool_calls[0]["args"]["town"] in ("Oslo", "Rome")
    assert message.response_metadata["finish_reason"] == "tool_calls"
    streamed = None
    for chunk in llm.bind_tools([get_weather], tool_choice="required").stream("Oslo?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and [call["name"] for call in streamed.tool_calls] == ["get_weather"]

    flag = llm.with_structured_output(Flag, method="function_calling").invoke("Is the harbour open?")
    assert isinstance(flag, Flag)


def test_llamaindex_function_calling_and_structured_predict(url: str) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    def get_weather(town: Literal["Oslo", "Rome"]) -> str:
        """The weather in a town."""
        return "Sunny"

    llm = OpenAILike(
        model=MODEL,
        api_base=url + "/v1",
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=512,
        max_tokens=96,
        temperature=0,
    )
    tool = FunctionTool.from_defaults(fn=get_weather)
    response = llm.chat_with_tools([tool], chat_history=[ChatMessage(role="user", content="Oslo?")], tool_required=True)
    calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert [call.tool_name for call in calls] == ["get_weather"] and calls[0].tool_kwargs["town"] in ("Oslo", "Rome")
    flag = llm.structured_predict(Flag, PromptTemplate("Is the harbour {name} open?"), name="Skelda")
    assert isinstance(flag, Flag)


def test_a_langgraph_react_agent_runs_its_tool_loop(url: str, recording_engine) -> None:
    pytest.importorskip("langgraph.prebuilt", reason="the dev extra installs langgraph")
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.errors import GraphRecursionError
    from langgraph.prebuilt import create_react_agent

    runs: list[str] = []

    @tool
    def get_weather(town: Literal["Oslo", "Rome"]) -> str:
        """The weather in a town."""
        runs.append(town)
        return f"Sunny in {town}"

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=96, max_retries=0)
    # The random model would answer in text under "auto"; "required" makes every turn a call, so the
    # loop (model, tool, model with the result, ...) runs until the recursion limit stops it.
    agent = create_react_agent(llm.bind_tools([get_weather], tool_choice="required"), [get_weather])
    with pytest.raises(GraphRecursionError):
        agent.invoke({"messages": [("user", "Weather in Oslo?")]}, {"recursion_limit": 5})
    assert len(runs) == 2
    replies = [m["content"] for m in recording_engine.calls[-1]["prompt"] if m["content"].startswith("Tool get_")]
    assert replies == [f"Tool get_weather returned: Sunny in {town}" for town in runs]
