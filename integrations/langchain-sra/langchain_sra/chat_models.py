"""ChatSRA: a local Hugging Face causal LM with Scaled ReAttention as a LangChain chat model.

Messages go to :class:`sra_rag.SRAEngine` as ``{"role", "content"}`` dicts (the engine applies the
model's chat template and tokenises once); the SRA settings of a call travel as an
:class:`sra_rag.SRAConfig`. ::

    from langchain_sra import ChatSRA

    chat = ChatSRA(max_tokens=128, beta_outer=2.0)          # the embedded SmolLM2-135M-Instruct
    chat.invoke("Why is the sky blue?").usage_metadata      # {'input_tokens': ..., 'output_tokens': ...}
    for chunk in chat.stream("Tell me a joke.", stop=["\\n\\n"], enabled=False):   # stock attention
        print(chunk.content, end="")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from langchain_sra.base import SRASettings, token_usage, usage_metadata
from sra_rag import Completion, TextStream

ROLES = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
}
"""LangChain message types and roles the chat templates know."""


class ChatSRA(SRASettings, BaseChatModel):
    """A local Hugging Face causal LM with Scaled ReAttention (arXiv 2307.13365) as a chat model.

    Construction: ``model`` (None: the embedded SmolLM2-135M-Instruct), ``device``, ``dtype``,
    ``max_tokens`` (alias ``max_new_tokens``), ``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``repetition_penalty``, ``penalize_prompt``, ``seed``, ``stop``,
    ``streaming``, and the SRA fields of :class:`~sra_rag.SRAConfig` (``enabled``,
    ``begin_length``, ..., ``outer_layers``) or ``sra=SRAConfig(...)``; ``engine=`` uses an
    :class:`~sra_rag.SRAEngine` loaded yourself. Objects on the same model share one engine.

    Each call (``invoke``, ``stream``, ``batch``, ``bind``, and the async variants) accepts ``stop``,
    ``sra=SRAConfig(...)``, single SRA fields, ``max_tokens``, the sampling settings, ``layout`` or
    ``tail_from`` (question-aware SRA tail) and ``logits_processors``. Messages carry
    ``usage_metadata`` with the engine's token counts and ``response_metadata`` with
    ``finish_reason`` and ``model_name``; in a stream, the last chunk carries them. Text only: no
    tool calling, structured output or images.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "sra-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="sra",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the whole chat prompt as the model reads it (template and generation prompt)."""
        if tools:
            raise ValueError("ChatSRA has no tool calling; count the messages without tools")
        return self.engine.count_tokens(engine_messages(messages))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = self.engine.complete(engine_messages(messages), **self.engine_settings(stop, kwargs))
        return self._result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        settings = self.engine_settings(stop, kwargs)
        result = await asyncio.to_thread(self.engine.complete, engine_messages(messages), **settings)
        return self._result(result)

    # LangChain's stream() and invoke() report each chunk to on_llm_new_token themselves.
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = self.engine.stream(engine_messages(messages), **self.engine_settings(stop, kwargs))
        for piece in stream:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield self._last_chunk(stream)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        settings = self.engine_settings(stop, kwargs)
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(self.engine.stream, engine_messages(messages), **settings)
        async for piece in stream:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield self._last_chunk(stream)

    def _result(self, result: Completion) -> ChatResult:
        message = AIMessage(
            content=result.text,
            usage_metadata=usage_metadata(result),
            response_metadata=_metadata(result, self.model_name),
        )
        generation = ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
        return ChatResult(
            generations=[generation], llm_output={"token_usage": token_usage(result), "model_name": self.model_name}
        )

    def _last_chunk(self, stream: TextStream) -> ChatGenerationChunk:
        """The closing chunk: no text, the token counts and why the generation ended."""
        message = AIMessageChunk(
            content="",
            usage_metadata=usage_metadata(stream),
            response_metadata=_metadata(stream, self.model_name),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": stream.finish_reason})


def engine_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the engine's ``{"role", "content"}`` dicts (text only)."""
    converted = []
    for index, message in enumerate(messages):
        role = ROLES.get(message.role if isinstance(message, ChatMessage) else message.type)
        if role is None or (isinstance(message, AIMessage) and message.tool_calls):
            raise ValueError(
                f"message {index} is a {type(message).__name__}; ChatSRA has no tool calling and reads only "
                "system, human and AI messages (or ChatMessage with role system, user or assistant)"
            )
        converted.append({"role": role, "content": _text(message, index)})
    return converted


def _text(message: BaseMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"message {index} has a {kind!r} content block; ChatSRA reads text only")
    return "".join(parts)


def _metadata(result: Completion | TextStream, model_name: str) -> dict[str, Any]:
    """``response_metadata``: why generation ended, the model, and (when the call's layout marked
    documents) ``document_attention``: how much the question read each document."""
    metadata: dict[str, Any] = {"finish_reason": result.finish_reason, "model_name": model_name}
    if result.document_attention is not None:
        metadata["document_attention"] = result.document_attention.summary()
    return metadata
