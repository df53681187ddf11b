"""ChatSRA and SRALLM against the engine called directly: text, token counts, streaming, callbacks,
stop sequences, per-call SRA settings, async calls and bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, FunctionMessage, HumanMessage, SystemMessage
from langchain_sra import SRALLM, ChatSRA

from sra_rag import SRAConfig, SRAEngine

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
MESSAGES = [SystemMessage("Answer in one short sentence."), HumanMessage("Name a colour of the sky.")]
ENGINE_MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "Name a colour of the sky."},
]
# Long enough (about 300 tokens) for the demo settings' SRA loops to change the greedy answer.
LOCKERS = (
    " ".join(f"Note {i}: the locker {i} code is {1000 + i * 37}." for i in range(15))
    + "\nQuestion: what is the code of locker 3? Answer briefly."
)


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ends = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends += 1


@pytest.fixture(scope="module")
def chat() -> ChatSRA:
    return ChatSRA(max_tokens=8)


def test_fields_engine_and_token_counting(chat: ChatSRA, embedded_engine: SRAEngine) -> None:
    assert chat.engine is ChatSRA(beta_outer=1.0).engine is SRALLM().engine is embedded_engine
    assert chat.max_new_tokens == ChatSRA(max_new_tokens=8).max_new_tokens == 8
    assert set(SRAConfig.model_fields) <= set(ChatSRA.model_fields) & set(SRALLM.model_fields)
    assert chat.sra_config == embedded_engine.sra == embedded_engine.defaults.sra  # unset: the model's default
    assert ChatSRA(sra=SRAConfig.preset("demo")).tail_length == 50
    assert chat.model_name == embedded_engine.name
    assert chat.get_num_tokens(QUESTION) == embedded_engine.count_tokens(QUESTION)
    assert chat.get_token_ids("Paris") == embedded_engine.tokenizer("Paris", add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens_from_messages(MESSAGES) == embedded_engine.count_tokens(ENGINE_MESSAGES)
    with pytest.raises(ValueError, match="beta_outer"):
        ChatSRA(beta_outer=-1.0)
    with pytest.raises(ValueError, match="beta_outter"):
        ChatSRA(beta_outter=1.0)  # a misspelt setting is an error, not ignored


def test_invoke_matches_the_engine_with_usage_metadata(chat: ChatSRA, embedded_engine: SRAEngine) -> None:
    message = chat.invoke(MESSAGES)
    direct = embedded_engine.complete(ENGINE_MESSAGES, max_new_tokens=8)
    assert isinstance(message, AIMessage) and message.content == direct.text
    assert message.usage_metadata == {
        "input_tokens": direct.prompt_tokens,
        "output_tokens": direct.completion_tokens,
        "total_tokens": direct.prompt_tokens + direct.completion_tokens,
    }
    assert message.response_metadata["finish_reason"] == direct.finish_reason
    assert message.response_metadata["model_name"] == "SmolLM2-135M-Instruct"


def test_stream_fires_callbacks_and_joins_to_the_invoke_text(chat: ChatSRA) -> None:
    recorder = TokenRecorder()
    chunks = list(chat.stream(MESSAGES, config={"callbacks": [recorder]}))
    text = "".join(str(chunk.content) for chunk in chunks)
    assert len(chunks) > 2 and text == chat.invoke(MESSAGES).content
    assert [token for token in recorder.tokens if token] == [chunk.content for chunk in chunks if chunk.content]
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata is not None
    assert last.usage_metadata["input_tokens"] == chat.get_num_tokens_from_messages(MESSAGES)
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])
    # streaming=True sends invoke through the streaming path, token callbacks included.
    streamed = TokenRecorder()
    assert ChatSRA(max_tokens=8, streaming=True).invoke(MESSAGES, config={"callbacks": [streamed]}).content == text
    assert "".join(streamed.tokens) == text and streamed.ends == 1


def test_stop_sequences_in_blocking_and_streaming_calls(chat: ChatSRA) -> None:
    assert chat.invoke(QUESTION, stop=[" Paris"]).content == "The capital of France is"
    assert "".join(str(chunk.content) for chunk in chat.stream(QUESTION, stop=[" Paris"])) == "The capital of France is"
    stopped = ChatSRA(max_tokens=8, stop=[" France"]).invoke(QUESTION)
    assert stopped.content == "The capital of" and stopped.response_metadata["finish_reason"] == "stop"


def test_per_call_sra_settings_reach_the_engine(embedded_engine: SRAEngine) -> None:
    demo = SRAConfig.preset("demo")
    with_demo = embedded_engine.generate(LOCKERS, max_new_tokens=6, sra=demo)
    stock = embedded_engine.generate(LOCKERS, max_new_tokens=6, sra=SRAConfig(enabled=False))
    assert with_demo != stock  # otherwise this test could not tell the settings apart
    chat = ChatSRA(sra=demo, max_tokens=6)
    assert chat.invoke(LOCKERS).content == with_demo
    assert chat.invoke(LOCKERS, enabled=False).content == stock
    assert ChatSRA(max_tokens=6).bind(sra=demo).invoke(LOCKERS).content == with_demo


def test_batch_and_async_calls_match_and_leave_the_event_loop_free(chat: ChatSRA) -> None:
    expected = [chat.invoke(QUESTION).content, chat.invoke(MESSAGES).content]
    assert [message.content for message in chat.batch([QUESTION, MESSAGES])] == expected

    async def run() -> tuple[list[str], list[int], str, list[Any]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            pieces, seen = [], []
            async for chunk in chat.astream(QUESTION):
                pieces.append(str(chunk.content))
                seen.append(ticks)
            message = await chat.ainvoke(QUESTION)
            batch = await chat.abatch([QUESTION, MESSAGES])
        finally:
            task.cancel()
        return pieces, seen, str(message.content), [message.content for message in batch]

    pieces, seen, text, batch = asyncio.run(run())
    assert len(pieces) > 2 and "".join(pieces) == text == expected[0] and batch == expected
    # The ticker ran while the model generated: the loop was never blocked for a whole generation.
    assert len(set(seen)) > 2


def test_bad_input_raises_an_actionable_error(chat: ChatSRA) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['num_beams'\]"):
        chat.invoke(QUESTION, num_beams=3)
    with pytest.raises(ValueError, match="reads system, human, AI and tool messages"):
        chat.invoke([HumanMessage("Add 2 and 3."), FunctionMessage("5", name="add")])
    image = HumanMessage(content=[{"type": "image", "url": "https://example.com/cat.png"}])
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([image])


def test_text_llm_matches_the_engine(embedded_engine: SRAEngine) -> None:
    llm = SRALLM(max_tokens=8)
    direct = embedded_engine.complete(QUESTION, max_new_tokens=8)
    assert llm.invoke(QUESTION) == direct.text
    result = llm.generate([QUESTION])
    assert result.generations[0][0].generation_info == {
        "finish_reason": direct.finish_reason,
        "prompt_tokens": direct.prompt_tokens,
        "completion_tokens": direct.completion_tokens,
    }
    assert result.llm_output is not None and result.llm_output["token_usage"]["total_tokens"] == (
        direct.prompt_tokens + direct.completion_tokens
    )
    recorder = TokenRecorder()
    pieces = list(llm.stream(QUESTION, config={"callbacks": [recorder]}))
    assert len(pieces) > 2 and "".join(pieces) == direct.text and "".join(recorder.tokens) == direct.text
    assert llm.invoke(QUESTION, stop=[" Paris"]) == "The capital of France is"
    assert asyncio.run(llm.ainvoke(QUESTION)) == direct.text
