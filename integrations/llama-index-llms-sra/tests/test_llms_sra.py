"""SRALLM: metadata, shared engine, completion and chat (blocking, streaming, async), per-call SRA
settings, stop sequences, token counts and callbacks, all against the engine called directly."""

from __future__ import annotations

import asyncio
import threading

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.llms.sra import SRALLM

from sra_rag import ContextWindowExceededError, SRAConfig, SRAEngine

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer in one short sentence."),
    ChatMessage(role=MessageRole.USER, content="Name a colour of the sky."),
]
ENGINE_MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "Name a colour of the sky."},
]
# Long enough (about 300 tokens) for the demo settings' SRA loops to change the greedy answer.
LOCKERS = (
    " ".join(f"Note {i}: the locker {i} code is {1000 + i * 37}." for i in range(15))
    + "\nQuestion: what is the code of locker 3? Answer briefly."
)


@pytest.fixture(scope="module")
def llm() -> SRALLM:
    return SRALLM(max_new_tokens=8)


def test_metadata_reports_the_model(llm: SRALLM, embedded_engine: SRAEngine) -> None:
    metadata = llm.metadata
    assert metadata.context_window == embedded_engine.context_window == 8192
    assert metadata.num_output == 8
    assert metadata.is_chat_model is True and metadata.is_function_calling_model is True
    assert metadata.model_name == embedded_engine.name == "SmolLM2-135M-Instruct"
    assert SRALLM(context_window=4096).metadata.context_window == 4096
    with pytest.raises(ValueError, match="exceeds the model's window of 8192"):
        SRALLM(context_window=10_000).metadata  # noqa: B018


def test_objects_on_one_model_share_one_engine(llm: SRALLM, embedded_engine: SRAEngine) -> None:
    other = SRALLM(max_new_tokens=3, beta_outer=1.0)
    assert llm.engine is other.engine is embedded_engine
    assert SRALLM(engine=embedded_engine).engine is embedded_engine


def test_fields_mirror_sra_config() -> None:
    assert set(SRAConfig.model_fields) <= set(SRALLM.model_fields)
    llm = SRALLM()
    assert llm.sra_config == llm.engine.sra == llm.engine.defaults.sra  # unset: the model's default
    demo = SRAConfig.preset("demo")
    from_config = SRALLM(sra=demo)
    assert from_config.sra_config == demo and from_config.tail_length == 50
    assert SRALLM(tail_length=7, outer=False).sra_config == llm.engine.sra.override(tail_length=7, outer=False)
    restored = SRALLM.from_dict(from_config.to_dict())
    assert restored.sra_config == demo and restored.max_new_tokens == from_config.max_new_tokens
    with pytest.raises(ValueError, match="beta_outer"):
        SRALLM(beta_outer=-1.0)
    with pytest.raises(TypeError, match="not both"):
        SRALLM(sra=demo, tail_length=5)
    with pytest.raises(TypeError, match="SRAEngine"):
        SRALLM(engine="SmolLM2")  # type: ignore[arg-type]


def test_complete_matches_the_engine_and_counts_tokens(llm: SRALLM, embedded_engine: SRAEngine) -> None:
    response = llm.complete(QUESTION)
    direct = embedded_engine.complete(QUESTION, max_new_tokens=8, sra=SRAConfig())
    assert response.text == direct.text and response.text
    usage = {
        "prompt_tokens": embedded_engine.count_tokens([{"role": "user", "content": QUESTION}]),
        "completion_tokens": direct.completion_tokens,
        "total_tokens": direct.prompt_tokens + direct.completion_tokens,
    }
    assert usage["prompt_tokens"] == direct.prompt_tokens
    assert response.raw == {"usage": usage, "finish_reason": direct.finish_reason, "model": embedded_engine.name}
    assert response.additional_kwargs == usage


def test_stream_complete_pieces_arrive_one_by_one_and_join_to_the_blocking_text(llm: SRALLM) -> None:
    responses = list(llm.stream_complete(QUESTION))
    blocking = llm.complete(QUESTION)
    deltas = [response.delta for response in responses]
    assert len(deltas) > 2 and deltas[-1] == ""
    assert "".join(deltas) == responses[-1].text == blocking.text
    assert [response.text for response in responses[:2]] == [deltas[0], deltas[0] + deltas[1]]
    assert responses[-1].raw == blocking.raw


def test_system_prompt_becomes_a_system_message(embedded_engine: SRAEngine) -> None:
    llm = SRALLM(max_new_tokens=8, system_prompt="Answer in one short sentence.")
    expected = embedded_engine.generate(ENGINE_MESSAGES, max_new_tokens=8)
    assert llm.complete("Name a colour of the sky.").text == expected
    assert llm.complete("Name a colour of the sky.", formatted=True).text == embedded_engine.generate(
        "Name a colour of the sky.", max_new_tokens=8
    )


def test_chat_sends_messages_to_the_engine(llm: SRALLM, embedded_engine: SRAEngine) -> None:
    response = llm.chat(MESSAGES)
    direct = embedded_engine.complete(ENGINE_MESSAGES, max_new_tokens=8)
    assert response.message.role == MessageRole.ASSISTANT and response.message.content == direct.text
    assert response.raw["usage"]["prompt_tokens"] == embedded_engine.count_tokens(ENGINE_MESSAGES)
    chunks = list(llm.stream_chat(MESSAGES))
    assert len(chunks) > 2 and "".join(chunk.delta or "" for chunk in chunks) == direct.text
    assert chunks[-1].message.content == direct.text and chunks[-1].raw["usage"] == response.raw["usage"]
    text_blocks = ChatMessage(role="user", blocks=[TextBlock(text="Name a colour"), TextBlock(text=" of the sky.")])
    assert llm.chat([MESSAGES[0], text_blocks]).message.content == direct.text


def test_per_call_sra_settings_reach_the_engine(embedded_engine: SRAEngine) -> None:
    demo = SRAConfig.preset("demo")
    llm = SRALLM(sra=demo, max_new_tokens=6)
    with_demo = embedded_engine.generate(LOCKERS, max_new_tokens=6, sra=demo)
    stock = embedded_engine.generate(LOCKERS, max_new_tokens=6, sra=SRAConfig(enabled=False))
    assert with_demo != stock  # otherwise this test could not tell the settings apart
    assert llm.complete(LOCKERS).text == with_demo
    assert llm.complete(LOCKERS, enabled=False).text == stock
    assert SRALLM(max_new_tokens=6).complete(LOCKERS, sra=demo).text == with_demo


def test_stop_sequences_and_generation_settings(llm: SRALLM) -> None:
    response = llm.complete(QUESTION, stop=[" Paris"])
    assert response.text == "The capital of France is" and response.raw["finish_reason"] == "stop"
    assert SRALLM(stop=[" Paris"], max_new_tokens=8).complete(QUESTION).text == "The capital of France is"
    short = llm.complete(QUESTION, max_tokens=2)
    assert short.raw["usage"]["completion_tokens"] == 2 and short.raw["finish_reason"] == "length"
    sampled = [llm.complete(QUESTION, temperature=1.5, seed=3).text for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_bad_input_raises_an_actionable_error(llm: SRALLM) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['num_beams'\]"):
        llm.complete(QUESTION, num_beams=3)
    with pytest.raises(TypeError, match="not both"):
        llm.complete(QUESTION, max_tokens=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="beta_outer"):
        llm.complete(QUESTION, beta_outer=-1.0)
    with pytest.raises(ValueError, match="SRALLM reads the roles"):
        llm.chat([ChatMessage(role=MessageRole.FUNCTION, content="42")])
    image = ChatMessage(role="user", blocks=[ImageBlock(url="https://example.com/cat.png")])
    with pytest.raises(ValueError, match="text only"):
        llm.chat([image])
    with pytest.raises(ContextWindowExceededError):
        llm.complete(QUESTION, max_new_tokens=9000)


def test_token_counting_callback_reads_the_engine_counts(embedded_engine: SRAEngine) -> None:
    counter = TokenCountingHandler(tokenizer=embedded_engine.tokenizer.encode)
    llm = SRALLM(max_new_tokens=8, callback_manager=CallbackManager([counter]))
    completion = llm.complete(QUESTION)
    chat = llm.chat(MESSAGES)
    assert len(counter.llm_token_counts) == 2
    prompt_tokens = completion.raw["usage"]["prompt_tokens"] + chat.raw["usage"]["prompt_tokens"]
    completion_tokens = completion.raw["usage"]["completion_tokens"] + chat.raw["usage"]["completion_tokens"]
    assert counter.prompt_llm_token_count == prompt_tokens
    assert counter.completion_llm_token_count == completion_tokens


async def test_async_variants_match_and_leave_the_event_loop_free(llm: SRALLM) -> None:
    blocking = llm.complete(QUESTION).text
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        seen = []
        pieces = []
        async for response in await llm.astream_complete(QUESTION):
            pieces.append(response.delta)
            seen.append(ticks)
        completion = await llm.acomplete(QUESTION)
        chat = await llm.achat(MESSAGES)
        chat_pieces = [chunk.delta async for chunk in await llm.astream_chat(MESSAGES)]
    finally:
        task.cancel()
    assert len(pieces) > 2 and "".join(pieces) == blocking == completion.text
    # The ticker ran while the model generated: the loop was never blocked for a whole generation.
    assert len(set(seen)) > 2 and seen[-1] > seen[0]
    assert "".join(chat_pieces) == chat.message.content == llm.chat(MESSAGES).message.content


async def test_async_stream_stopped_early_stops_the_worker(llm: SRALLM) -> None:
    stream = await llm.astream_complete(QUESTION, max_new_tokens=200)
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(200):
        if not any(thread.name == "sra-stream" for thread in threading.enumerate()):
            break
        await asyncio.sleep(0.05)
    assert not any(thread.name == "sra-stream" for thread in threading.enumerate())
