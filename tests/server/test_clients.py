"""Real clients, unmodified, against the server on the embedded model (in-process uvicorn on a free
loopback port): the ``openai`` package, LangChain's ``ChatOpenAI`` in LCEL chains, LlamaIndex's
``OpenAILike`` in a query engine; and a bounded soak."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import openai
import pytest
from pydantic import BaseModel

from sra_rag import SRAConfig
from sra_rag.server import ServerSettings, create_app
from sra_rag.server.runner import serving

pytestmark = [pytest.mark.slow, pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
DOCUMENTS = [
    {"text": "The ferry to Skelda leaves Pier 3 at 08:30 and 16:00.", "source": "ferry.txt"},
    {"text": "Leave in October needs approval from Imelda Farrow.", "source": "handbook.md"},
]
FERRY = "When does the ferry to Skelda leave?"


class Town(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def url(embedded_engine) -> Iterator[str]:
    with serving(create_app(embedded_engine)) as base:
        yield base


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


# -- openai ----------------------------------------------------------------------------------------


def test_openai_chat_and_stream(client: openai.OpenAI, embedded_engine) -> None:
    expected = embedded_engine.complete(CAPITAL, max_new_tokens=24, temperature=0)
    reply = client.chat.completions.create(model=embedded_engine.name, messages=CAPITAL, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == expected.text and "Paris" in expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
    )

    stream = client.chat.completions.create(
        model=embedded_engine.name,
        messages=CAPITAL,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens


def test_openai_completions_sra_and_documents(client: openai.OpenAI, embedded_engine) -> None:
    prompt = "The three primary colours are"
    expected = embedded_engine.complete(prompt, max_new_tokens=12, temperature=0, chat_template=False)
    reply = client.completions.create(model=embedded_engine.name, prompt=prompt, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected.text

    off = client.chat.completions.create(
        model=embedded_engine.name, messages=CAPITAL, max_tokens=12, temperature=0, extra_body={"sra": "off"}
    )
    assert off.choices[0].message.content == embedded_engine.generate(
        CAPITAL, max_new_tokens=12, temperature=0, sra=SRAConfig.preset("off")
    )

    answer = client.chat.completions.create(
        model=embedded_engine.name,
        messages=[{"role": "user", "content": FERRY}],
        max_tokens=40,
        temperature=0,
        extra_body={"documents": DOCUMENTS, "sra": {"preset": "recommended"}},
    )
    assert "16:00" in answer.choices[0].message.content
    sources = answer.model_extra["sources"]
    assert [(s["number"], s["source"]) for s in sources] == [(1, "ferry.txt"), (2, "handbook.md")]


def test_openai_errors_are_the_clients_exceptions(url: str, client: openai.OpenAI, embedded_engine) -> None:
    with pytest.raises(openai.BadRequestError, match="only n=1 is supported"):
        client.chat.completions.create(model=embedded_engine.name, messages=CAPITAL, n=2)
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.chat.completions.create(model="gpt-4o", messages=CAPITAL)
    with pytest.raises(openai.BadRequestError, match="sra.beta_outer"):
        client.chat.completions.create(
            model=embedded_engine.name, messages=CAPITAL, extra_body={"sra": {"beta_outer": "strong"}}
        )
    with serving(create_app(embedded_engine, ServerSettings(api_key="k"))) as guarded:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=guarded + "/v1", api_key="wrong", max_retries=0).models.list()
        models = openai.OpenAI(base_url=guarded + "/v1", api_key="k", max_retries=0).models.list()
        assert [model.id for model in models] == [embedded_engine.name]


def test_openai_json_schema_and_json_object(client: openai.OpenAI, embedded_engine) -> None:
    messages = [{"role": "user", "content": "Name the capital of France and its country as JSON."}]
    parsed = client.chat.completions.parse(
        model=embedded_engine.name, messages=messages, response_format=Town, max_tokens=64, temperature=0
    )
    town = parsed.choices[0].message.parsed
    assert isinstance(town, Town) and town.name
    loose = client.chat.completions.create(
        model=embedded_engine.name,
        messages=messages,
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0,
    )
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


# -- LangChain -------------------------------------------------------------------------------------


def test_langchain_chat_openai_in_lcel_chains(url: str, embedded_engine) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=url + "/v1", api_key="unused", model=embedded_engine.name, temperature=0, max_tokens=24, max_retries=0
    )
    prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("user", "{question}")])
    chain = prompt | llm | StrOutputParser()
    messages = [{"role": "system", "content": "You are terse."}, *CAPITAL]
    expected = embedded_engine.complete(messages, max_new_tokens=24, temperature=0)
    assert chain.invoke({"question": CAPITAL[0]["content"]}) == expected.text
    assert "".join(chain.stream({"question": CAPITAL[0]["content"]})) == expected.text
    usage = (prompt | llm).invoke({"question": CAPITAL[0]["content"]}).usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"]) == (expected.prompt_tokens, expected.completion_tokens)

    reattending = ChatOpenAI(
        base_url=url + "/v1",
        api_key="unused",
        model=embedded_engine.name,
        temperature=0,
        max_tokens=8,
        extra_body={"sra": "off"},
    )
    off = embedded_engine.generate(CAPITAL, max_new_tokens=8, temperature=0, sra=SRAConfig.preset("off"))
    assert reattending.invoke(CAPITAL[0]["content"]).content == off


def test_langchain_with_structured_output(url: str, embedded_engine) -> None:
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=embedded_engine.name, temperature=0, max_tokens=64)
    chain = ChatPromptTemplate.from_messages([("user", "Name the capital of {country} as JSON.")]) | (
        llm.with_structured_output(Town, method="json_schema")
    )
    town = chain.invoke({"country": "France"})
    assert isinstance(town, Town) and town.name


# -- LlamaIndex ------------------------------------------------------------------------------------


def test_llamaindex_openai_like_in_a_query_engine(url: str, embedded_engine) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model=embedded_engine.name,
        api_base=url + "/v1",
        api_key="unused",
        is_chat_model=True,
        context_window=embedded_engine.context_window,
        max_tokens=48,
        temperature=0,
    )
    documents = [Document(text=d["text"], metadata={"source": d["source"]}) for d in DOCUMENTS]
    # Retrieval is not under test: both documents are retrieved whatever the embedding.
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    response = index.as_query_engine(llm=llm, similarity_top_k=2).query(FERRY)
    assert ("08:30" in str(response) or "16:00" in str(response)) and len(response.source_nodes) == 2
    streamed = "".join(piece.delta or "" for piece in llm.stream_complete("What is the capital of France?"))
    assert "Paris" in streamed


# -- soak ------------------------------------------------------------------------------------------


def test_soak_200_requests_at_concurrency_16_lose_nothing(embedded_engine) -> None:
    """Chat and text completions, blocking and streamed, 200 in all with 16 in flight: every reply
    arrives, complete, the same as the engine's alone, with exact usage and no error. Short prompts
    (a system message replaces the template's default one) and 3 new tokens keep it about a minute
    on two idle cores."""
    letters = "BGRY"
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"A colour with {c}?"}]
        for c in letters
    ]
    texts = [f"Colours that start with {c}:" for c in letters]
    expected_chat = [embedded_engine.complete(m, max_new_tokens=3, temperature=0) for m in chats]
    expected_text = [embedded_engine.complete(t, max_new_tokens=3, temperature=0, chat_template=False) for t in texts]
    app = create_app(embedded_engine, ServerSettings(max_batch=16, queue_size=16))
    model = embedded_engine.name

    async def soak(base: str) -> list:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
        gate = asyncio.Semaphore(16)
        common = {"model": model, "max_tokens": 3, "temperature": 0}
        streaming = {"stream": True, "stream_options": {"include_usage": True}}

        async def one(index: int):
            kind, which = index % 4, (index // 4) % len(letters)
            async with gate:
                if kind == 0:
                    reply = await client.chat.completions.create(messages=chats[which], **common)
                    return expected_chat[which], reply.choices[0].message.content, reply.usage.completion_tokens
                if kind == 1:
                    chunks = [
                        c
                        async for c in await client.chat.completions.create(
                            messages=chats[which], **common, **streaming
                        )
                    ]
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                    return expected_chat[which], text, chunks[-1].usage.completion_tokens
                if kind == 2:
                    reply = await client.completions.create(prompt=texts[which], **common)
                    return expected_text[which], reply.choices[0].text, reply.usage.completion_tokens
                chunks = [c async for c in await client.completions.create(prompt=texts[which], **common, **streaming)]
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                return expected_text[which], text, chunks[-1].usage.completion_tokens

        return await asyncio.gather(*(one(index) for index in range(200)))

    started = time.monotonic()
    with serving(app) as base:
        results = asyncio.run(soak(base))
    elapsed = time.monotonic() - started
    assert len(results) == 200
    for expected, text, completion_tokens in results:
        assert (text, completion_tokens) == (expected.text, expected.completion_tokens)
    metrics = app.state.server.metrics.exposition().decode()
    assert 'sra_rag_requests_total{route="/v1/chat/completions",status="200"} 100.0' in metrics
    assert 'sra_rag_requests_total{route="/v1/completions",status="200"} 100.0' in metrics
    assert 'status="4' not in metrics and 'status="5' not in metrics
    print(f"soak: 200 requests at concurrency 16 in {elapsed:.1f} s")
