"""SRALLM refuses what it would not honour: unknown arguments (with HuggingFaceLLM's names mapped to
ours), text prompt hooks, a context window above the model's; it never loads the engine on the
event loop. A fake engine stands in for the model, except where the embedding model is the subject."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from llama_index.llms.sra import SRALLM, MiniLMEmbedding

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


def test_hugging_face_argument_names_are_refused_with_ours(loads: list[FakeEngine]) -> None:
    with pytest.raises(TypeError) as info:
        SRALLM(model_name="HuggingFaceTB/SmolLM2-135M-Instruct", device_map="auto", generate_kwargs={"top_k": 5})
    message = str(info.value)
    assert "unknown arguments ['device_map', 'generate_kwargs', 'model_name']" in message
    assert "model_name -> model" in message and "device_map -> device" in message
    assert "generate_kwargs -> the sampling fields ['max_new_tokens', 'temperature', 'top_p'" in message
    with pytest.raises(TypeError, match=r"stopping_ids -> stop \(stop strings, not token ids\)"):
        SRALLM(stopping_ids=[2])
    with pytest.raises(TypeError, match=r"unknown arguments \['beta_outter'\]"):
        SRALLM(beta_outter=2.0)
    assert not loads  # refused before anything loads


@pytest.mark.parametrize("hook", ["messages_to_prompt", "completion_to_prompt", "query_wrapper_prompt"])
def test_text_prompt_hooks_are_refused(hook: str) -> None:
    from llama_index.core import PromptTemplate

    value: Any = PromptTemplate("[INST] {query_str} [/INST]") if hook == "query_wrapper_prompt" else str
    with pytest.raises(TypeError, match=f"does not take \\['{hook}'\\].*chat template"):
        SRALLM(**{hook: value})


def test_supported_framework_fields_and_serialisation_still_work(loads: list[FakeEngine]) -> None:
    llm = SRALLM(system_prompt="Be brief.", max_new_tokens=5, beta_outer=2.0)
    restored = SRALLM.from_dict(llm.to_dict())
    assert restored.system_prompt == "Be brief." and restored.sra_config == llm.sra_config
    assert restored.max_new_tokens == 5
    assert llm.complete("Hi").text == "ok" and len(loads) == 1


def test_a_context_window_above_the_model_is_refused_at_construction(loads: list[FakeEngine]) -> None:
    with pytest.raises(ValueError, match="context_window=10000 exceeds the model's window of 8192"):
        SRALLM(context_window=10_000)
    assert SRALLM(context_window=4096).metadata.context_window == 4096
    assert SRALLM().metadata.context_window == 8192


@pytest.mark.parametrize("call", ["acomplete", "astream_complete", "achat", "astream_chat"])
def test_the_first_async_call_loads_the_engine_off_the_event_loop(loads: list[FakeEngine], call: str) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    llm = SRALLM()

    async def run() -> tuple[str, str]:
        loop_thread = threading.current_thread().name
        argument: Any = [ChatMessage(role="user", content="Hi")] if "chat" in call else "Hi"
        result = await getattr(llm, call)(argument)
        if call.startswith("astream"):
            text = ""
            async for response in result:
                text = response.message.content if "chat" in call else response.text
            return loop_thread, str(text)
        return loop_thread, str(result.message.content if "chat" in call else result.text)

    loop_thread, text = asyncio.run(run())
    assert text == "ok" and len(loads) == 1
    assert loop_thread not in loads[0].threads  # loaded and called in worker threads


@pytest.mark.slow
def test_the_shipped_embedding_model_matches_the_store(tmp_path: Any) -> None:
    import numpy as np
    from llama_index.core import Document, VectorStoreIndex

    from sra_rag.rag.store import MiniLMEmbeddingFunction

    texts = ["The ferry to Skelda leaves at 08:30.", "Staff get 27 days of paid leave."]
    model = MiniLMEmbedding()
    vectors = np.array(model.get_text_embedding_batch(texts))
    assert vectors.shape == (2, 384)
    assert np.allclose(vectors, np.array(MiniLMEmbeddingFunction()(texts)), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(asyncio.run(model.aget_query_embedding(texts[0])), vectors[0], atol=1e-6)
    index = VectorStoreIndex.from_documents([Document(text=text) for text in texts], embed_model=model)
    best = index.as_retriever(similarity_top_k=1).retrieve("When does the ferry leave?")[0]
    assert best.node.get_content() == texts[0]
    with pytest.raises(ValueError, match="extra"):
        MiniLMEmbedding(model="all-MiniLM-L6-v2")  # type: ignore[call-arg]
