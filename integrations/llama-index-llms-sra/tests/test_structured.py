"""SRALLM's structured output and function calling: structured_predict / as_structured_llm by
constrained decoding, chat_with_tools, predict_and_call and a function-calling agent; tool calls in
the history (fast, no model) and on the embedded model (slow)."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.sra import SRALLM
from llama_index.llms.sra.base import _engine_messages
from llama_index.llms.sra.structured import pop_structured, reply_message, tool_selections
from pydantic import BaseModel, Field

from sra_rag.generation.tools import as_tools


class Harbour(BaseModel):
    """Facts about a harbour town."""

    town: str = Field(description="the town's name")
    founded: int = Field(ge=1000, le=2100, description="the year it was founded")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD = FunctionTool.from_defaults(fn=add)
FACTS = "Marrowick is a harbour town founded in 1652. Ferries sail from its quay."
PROMPT = PromptTemplate("{facts}\nWhich town is this, and when was it founded?")


# -- without the model -----------------------------------------------------------------------------


def test_chat_with_tools_arguments():
    llm = SRALLM()
    history = [ChatMessage(role=MessageRole.SYSTEM, content="Be brief.")]
    prepared = llm._prepare_chat_with_tools([ADD], user_msg="What is 2 + 3?", chat_history=history)
    assert [m.content for m in prepared["messages"]] == ["Be brief.", "What is 2 + 3?"]
    assert prepared["tools"] == [ADD.metadata.to_openai_tool(skip_length_check=True)]
    assert prepared["tool_choice"] == "auto"
    assert llm._prepare_chat_with_tools([ADD], user_msg="x", tool_required=True)["tool_choice"] == "required"
    assert llm._prepare_chat_with_tools([ADD], user_msg="x", tool_choice="add")["tool_choice"] == "add"


def test_call_kwargs_are_taken_out_for_the_engine():
    spec = ADD.metadata.to_openai_tool()
    kwargs = {"tools": [spec], "tool_choice": {"type": "function", "function": {"name": "add"}}, "seed": 1}
    engine_kwargs, tools = pop_structured(kwargs)
    assert kwargs == {"seed": 1} and engine_kwargs["tool_choice"] == "add" and tools == as_tools([spec])
    assert pop_structured({"tools": [spec], "tool_choice": "none"})[1] is None
    assert pop_structured({"tools": None, "tool_choice": None, "parallel_tool_calls": False}) == ({}, None)
    with pytest.raises(ValueError, match="without tools"):
        pop_structured({"tool_choice": "required"})


def test_tool_calls_and_results_in_the_history_are_rendered_as_text():
    call = ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 2, "b": 3})
    messages = [
        ChatMessage(role=MessageRole.USER, content="What is 2 + 3?"),
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[TextBlock(text="Adding."), call]),
        ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id": "c1"}),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={"tool_calls": [{"id": "c2", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        ),
        ChatMessage(role=MessageRole.TOOL, content="missing b", additional_kwargs={"tool_call_id": "c2"}),
    ]
    assert _engine_messages(messages) == [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": 'Adding.\n{"name": "add", "arguments": {"a": 2, "b": 3}}'},
        {"role": "user", "content": "Tool add returned: 5"},
        {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 1}}'},
        {"role": "user", "content": "Tool add returned: missing b"},
    ]


def test_replies_become_tool_call_blocks_or_text():
    tools = as_tools([ADD.metadata.to_openai_tool()])
    message = reply_message('{"name": "add", "arguments": {"a": 2, "b": 3}}', "stop", tools)
    (block,) = message.blocks
    assert isinstance(block, ToolCallBlock) and (block.tool_name, block.tool_kwargs) == ("add", {"a": 2, "b": 3})
    (selection,) = tool_selections(ChatResponse(message=message), error_on_no_tool_call=True)
    assert (selection.tool_id, selection.tool_name) == (block.tool_call_id, "add")
    assert selection.tool_kwargs == {"a": 2, "b": 3}
    text = reply_message("It is 5.", "stop", tools)
    assert text.content == "It is 5." and tool_selections(ChatResponse(message=text), False) == []
    with pytest.raises(ValueError, match="tool_required=True"):
        tool_selections(ChatResponse(message=text), error_on_no_tool_call=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        reply_message('{"name": "add", "argu', "length", tools)


# -- the embedded model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> SRALLM:
    return SRALLM(max_new_tokens=48)


@pytest.mark.slow
def test_structured_predict_and_structured_llms_decode_under_the_schema(llm: SRALLM) -> None:
    harbour = llm.structured_predict(Harbour, PROMPT, facts=FACTS)
    assert harbour == Harbour(town="Marrowick", founded=1652)
    assert asyncio.run(llm.astructured_predict(Harbour, PROMPT, facts=FACTS)) == harbour
    partials = list(llm.stream_structured_predict(Harbour, PROMPT, facts=FACTS))
    assert len(partials) > 3 and partials[-1] == harbour
    response = llm.as_structured_llm(Harbour).chat([ChatMessage(role="user", content=PROMPT.format(facts=FACTS))])
    assert response.raw == harbour and Harbour.model_validate_json(response.message.content) == harbour
    with pytest.raises(ValueError, match="cut off by max_new_tokens"):
        llm.structured_predict(Harbour, PROMPT, llm_kwargs={"max_new_tokens": 3}, facts=FACTS)


@pytest.mark.slow
def test_function_calling_and_an_agent(llm: SRALLM) -> None:
    response = llm.chat_with_tools([ADD], user_msg="What is 2 + 3? Use the tool.", tool_required=True)
    (call,) = llm.get_tool_calls_from_response(response)
    assert (call.tool_name, call.tool_kwargs) == ("add", {"a": 2, "b": 3})
    streamed = list(llm.stream_chat_with_tools([ADD], user_msg="What is 2 + 3? Use the tool.", tool_choice="add"))
    assert [c.tool_kwargs for c in llm.get_tool_calls_from_response(streamed[-1])] == [{"a": 2, "b": 3}]
    assert str(llm.predict_and_call([ADD], user_msg="What is 2 + 3?", tool_choice="add")) == "5"

    agent = FunctionAgent(tools=[ADD], llm=llm, initial_tool_choice="add")

    async def run() -> object:
        # After the result, the 135M model tends to call again; "generate" ends with an answer in text.
        return await agent.run(user_msg="What is 2 + 3?", max_iterations=2, early_stopping_method="generate")

    result = asyncio.run(run())
    assert result.tool_calls[0].tool_output.raw_output == 5 and "5" in str(result)


@pytest.mark.slow
def test_async_chat_reports_one_llm_event(embedded_engine) -> None:
    counter = TokenCountingHandler(tokenizer=embedded_engine.tokenizer.encode)
    llm = SRALLM(max_new_tokens=4, callback_manager=CallbackManager([counter]))
    asyncio.run(llm.achat([ChatMessage(role="user", content="Hi")]))
    assert len(counter.llm_token_counts) == 1
