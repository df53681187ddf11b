"""ChatSRA and SRALLM refuse unknown arguments with the names to use instead of Hugging Face's
(ChatHuggingFace, HuggingFacePipeline, HuggingFaceEndpoint), never load the engine on the event
loop, and MiniLMEmbeddings embeds as the store does. A fake engine stands in for the model."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_sra import SRALLM, ChatSRA, MiniLMEmbeddings

from sra_rag import Completion, SRAEngine, TextStream
from sra_rag.config import SAFE_DEFAULTS
from sra_rag.generation.streaming import Channel, Update


class FakeEngine(SRAEngine):
    """Answers "ok" without a model; records the threads it was loaded and called on."""

    def __init__(self) -> None:  # no model: nothing of SRAEngine.__init__ is needed here
        self.name, self.context_window = "fake", 8192
        self.defaults = SAFE_DEFAULTS
        self.sra = SAFE_DEFAULTS.sra
        self.threads: list[str] = [threading.current_thread().name]

    def complete(self, prompt: Any, **settings: Any) -> Completion:
        self.threads.append(threading.current_thread().name)
        return Completion(text="ok", prompt_tokens=3, completion_tokens=1, finish_reason="stop")

    def stream(self, prompt: Any, **settings: Any) -> TextStream:
        self.threads.append(threading.current_thread().name)

        channel = Channel()
        channel.put(Update("ok", [1], finish_reason="stop"))
        return TextStream(3, channel)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[FakeEngine]:
    """SRAEngine.shared replaced: each load makes a FakeEngine, recorded here."""
    loaded: list[FakeEngine] = []

    def shared(model: Any = None, **kwargs: Any) -> FakeEngine:
        loaded.append(FakeEngine())
        return loaded[-1]

    monkeypatch.setattr(SRAEngine, "shared", shared)
    return loaded


@pytest.mark.parametrize("cls", [ChatSRA, SRALLM])
def test_hugging_face_argument_names_are_refused_with_ours(cls: type, loads: list[FakeEngine]) -> None:
    with pytest.raises(TypeError) as info:
        cls(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", device_map="auto", pipeline_kwargs={"max_new_tokens": 9})
    message = str(info.value)
    assert f"{cls.__name__} got unknown arguments ['device_map', 'model_id', 'pipeline_kwargs']" in message
    assert "model_id -> model" in message and "device_map -> device" in message
    assert "pipeline_kwargs -> the sampling fields ['max_new_tokens', 'temperature'" in message
    with pytest.raises(TypeError, match="stop_sequences -> stop"):
        cls(stop_sequences=["\n"])
    with pytest.raises(TypeError, match=r"model_kwargs -> model, device and dtype"):
        cls(model_kwargs={"torch_dtype": "auto"})
    with pytest.raises(TypeError, match=r"unknown arguments \['beta_outter'\]"):
        cls(beta_outter=2.0)
    assert cls(max_tokens=7).max_new_tokens == cls(max_new_tokens=7).max_new_tokens == 7
    assert not loads


def test_the_first_async_calls_load_the_engine_off_the_event_loop(loads: list[FakeEngine]) -> None:
    async def run(model: Any, streaming: bool) -> str:
        if streaming:
            return "".join([str(getattr(chunk, "content", chunk)) async for chunk in model.astream("Hi")])
        result = await model.ainvoke("Hi")
        return str(getattr(result, "content", result))

    for model in (ChatSRA(), SRALLM(), SRALLM(streaming=True)):
        for streaming in (False, True):
            loads.clear()
            model._engine = None
            assert asyncio.run(run(model, streaming)) == "ok"
            assert len(loads) == 1 and "MainThread" not in loads[0].threads, (model, streaming, loads[0].threads)
    assert ChatSRA(model="qwen2.5-coder-0.5b")._get_ls_params()["ls_model_name"] == "qwen2.5-coder-0.5b"
    assert ChatSRA()._get_ls_params()["ls_model_name"] == "smollm2-135m"


@pytest.mark.slow
def test_the_shipped_embedding_model_matches_the_store() -> None:
    import numpy as np
    from langchain_core.vectorstores import InMemoryVectorStore

    from sra_rag.rag.store import MiniLMEmbeddingFunction

    texts = ["The ferry to Skelda leaves at 08:30.", "Staff get 27 days of paid leave."]
    model = MiniLMEmbeddings()
    vectors = np.array(model.embed_documents(texts))
    assert vectors.shape == (2, 384)
    assert np.allclose(vectors, np.array(MiniLMEmbeddingFunction()(texts)), atol=1e-6)
    assert np.allclose(asyncio.run(model.aembed_query(texts[0])), vectors[0], atol=1e-6)
    store = InMemoryVectorStore.from_texts(texts, model)
    assert store.similarity_search("When does the ferry leave?", k=1)[0].page_content == texts[0]
    with pytest.raises(ValueError, match="model_name"):
        MiniLMEmbeddings(model_name="all-MiniLM-L6-v2")  # type: ignore[call-arg]
