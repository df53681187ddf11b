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
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict

from langchain_sra.base import SRASettings, token_usage, usage_metadata
from langchain_sra.structured import (
    Method,
    atext_pieces,
    bind_tools_kwargs,
    chunk_fields,
    engine_structured_kwargs,
    message_fields,
    structured_output,
    text_pieces,
)
from sra_rag import Completion, TextStream
from sra_rag.generation.tools import Tool, offer_tools, render_tool_call, render_tool_result

ROLES = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
}
"""LangChain message types and roles the chat templates know."""

SKIPPED_AI_BLOCKS = ("tool_use", "tool_call", "function_call", "thinking", "reasoning")
"""Content blocks of AI messages left out of the prompt: calls (the same calls are in ``tool_calls``,
rendered from there) and past reasoning (not shown to the model again, as hosted APIs do)."""


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
    ``finish_reason`` and ``model_name``; in a stream, the last chunk carries them. Text only (no images).

    Structured output and tool calling use constrained decoding (the reply always parses and fits
    the schema): ``with_structured_output(schema)`` (``method="json_schema"``, the default,
    ``"function_calling"`` or ``"json_mode"``; ``include_raw=True``) and ``bind_tools(tools,
    tool_choice=...)``: ``"any"`` / ``"required"`` or a tool's name force a call, ``"auto"`` (the
    default) lets the model answer in text or call a tool (a reply that begins with ``{``),
    ``"none"`` gives text. One call per reply; the tools are offered in a system message.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "sra-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="sra",
            ls_model_name=kwargs.get("model") or self.ls_model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the whole chat prompt as the model reads it (template and generation prompt,
        and the system message that offers ``tools``, if given)."""
        prompt = engine_messages(messages)
        if tools:
            bound = engine_structured_kwargs(bind_tools_kwargs(tools, None, None, None))[1]
            assert bound is not None
            prompt = offer_tools(prompt, bound, "auto")
        return self.engine.count_tokens(prompt)

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic classes, TypedDicts, JSON or OpenAI tool
        schemas). ``tool_choice``: ``None`` / ``"auto"``, ``"any"`` / ``"required"`` / ``True``, a tool's
        name, or ``"none"``. Calls are always held to the tool's schema, so ``strict`` changes nothing;
        one call per reply (``parallel_tool_calls=True`` is refused)."""
        return self.bind(**bind_tools_kwargs(tools, tool_choice, parallel_tool_calls, strict), **kwargs)

    def with_structured_output(  # type: ignore[override]
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Method = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable that returns ``schema`` filled in (a pydantic object for a pydantic class, else a
        dict). ``method``: ``"json_schema"`` decodes under the schema itself; ``"function_calling"``
        forces a call of a tool made from it; ``"json_mode"`` decodes any JSON object (``schema`` may
        be None) and validates afterwards. Decoding is always constrained, so ``strict`` changes
        nothing. A reply cut by ``max_tokens`` is an ``OutputParserException`` saying so."""
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict, kwargs=kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, settings, tools = self._request(messages, stop, kwargs)
        return self._result(self.engine.complete(prompt, **settings), tools)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, settings, tools = self._request(messages, stop, kwargs)
        engine = await self.aengine()
        return self._result(await asyncio.to_thread(engine.complete, prompt, **settings), tools)

    # LangChain's stream() and invoke() report each chunk to on_llm_new_token themselves.
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt, settings, tools = self._request(messages, stop, kwargs)
        stream = self.engine.stream(prompt, **settings)
        held: list[str] = []
        for piece in text_pieces(stream, tools, held):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield from self._closing_chunks(stream, tools, held)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prompt, settings, tools = self._request(messages, stop, kwargs)
        engine = await self.aengine()
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(engine.stream, prompt, **settings)
        held: list[str] = []
        async for piece in atext_pieces(stream.__aiter__(), tools, held):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        for chunk in self._closing_chunks(stream, tools, held):
            yield chunk

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, str]], dict[str, Any], tuple[Tool, ...] | None]:
        """The engine prompt and keyword arguments of a call, and its bound tools (None: none)."""
        call = dict(kwargs)
        structured, tools = engine_structured_kwargs(call)
        return engine_messages(messages), {**self.engine_settings(stop, call), **structured}, tools

    def _result(self, result: Completion, tools: tuple[Tool, ...] | None = None) -> ChatResult:
        message = AIMessage(
            **message_fields(result.text, result.finish_reason, tools),
            usage_metadata=usage_metadata(result),
            response_metadata=_metadata(result, self.model_name),
        )
        generation = ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
        return ChatResult(
            generations=[generation], llm_output={"token_usage": token_usage(result), "model_name": self.model_name}
        )

    def _closing_chunks(
        self, stream: TextStream, tools: tuple[Tool, ...] | None, held: list[str]
    ) -> Iterator[ChatGenerationChunk]:
        """A held-back tool call, then the closing chunk."""
        if held:
            assert tools is not None
            fields = chunk_fields("".join(held), stream.finish_reason, tools)
            yield ChatGenerationChunk(message=AIMessageChunk(**fields))
        yield self._last_chunk(stream)

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
    """LangChain messages as the engine's ``{"role", "content"}`` dicts (text only). Tool calls of AI
    messages and tool results are rendered as text, in the format the model is asked to call in."""
    converted = []
    tool_names: dict[str | None, str] = {}
    for index, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            name = message.name or tool_names.get(message.tool_call_id)
            content = render_tool_result(name, _text(message, index), error=message.status == "error")
            converted.append({"role": "user", "content": content})
            continue
        role = ROLES.get(message.role if isinstance(message, ChatMessage) else message.type)
        if role is None:
            raise ValueError(
                f"message {index} is a {type(message).__name__}; ChatSRA reads system, human, AI and tool messages "
                "(or ChatMessage with role system, user or assistant)"
            )
        content = _text(message, index)
        if isinstance(message, AIMessage) and message.tool_calls:
            calls = [render_tool_call(call["name"], call["args"]) for call in message.tool_calls]
            tool_names.update((call["id"], call["name"]) for call in message.tool_calls)
            content = "\n".join([content, *calls] if content else calls)
        converted.append({"role": role, "content": content})
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
        elif isinstance(message, AIMessage) and isinstance(block, dict) and block.get("type") in SKIPPED_AI_BLOCKS:
            continue
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
