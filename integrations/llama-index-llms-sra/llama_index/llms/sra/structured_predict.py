"""LlamaIndex's structured-output methods by constrained decoding.

``LLM.structured_predict`` and its variants (which ``as_structured_llm`` uses) build a program that
either prompts for JSON and parses the text, or calls a tool. :class:`StructuredPredict` replaces
them, for ``pydantic_program_mode=DEFAULT``, by one chat call decoded under the output class's JSON
schema: the reply always parses, and the prompt carries no schema for a small model to echo. Other
program modes go to LlamaIndex's own programs.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatResponse
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictInProgressEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.program.utils import FlexibleModel, process_streaming_objects
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import PydanticProgramMode
from pydantic import BaseModel, ValidationError

dispatcher = get_dispatcher(__name__)
Model = TypeVar("Model", bound=BaseModel)


class StructuredPredict:
    """Mixin for an ``LLM`` whose ``chat`` accepts ``json_schema=`` (put it before the LLM base)."""

    pydantic_program_mode: PydanticProgramMode

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Fill in ``output_cls`` from ``prompt`` formatted with ``prompt_args``, decoding under its
        JSON schema. A reply cut by ``max_new_tokens`` is a ``ValueError`` that says so."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        response = self.chat(self._get_messages(prompt, **prompt_args), json_schema=output_cls, **(llm_kwargs or {}))  # type: ignore[attr-defined]
        result = parse_response(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._get_messages(prompt, **prompt_args)  # type: ignore[attr-defined]
        response = await self.achat(messages, json_schema=output_cls, **(llm_kwargs or {}))  # type: ignore[attr-defined]
        result = parse_response(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        """Partial objects as the JSON streams (LlamaIndex's ``FlexibleModel`` while fields are
        missing), then the complete ``output_cls`` object."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            yield from super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc]
            return
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._get_messages(prompt, **prompt_args)  # type: ignore[attr-defined]
        current: Any = None
        for response in self.stream_chat(messages, json_schema=output_cls, **(llm_kwargs or {})):  # type: ignore[attr-defined]
            current = _partial_or_final(output_cls, response, current)
            dispatcher.event(LLMStructuredPredictInProgressEvent(output=current))
            yield current
        dispatcher.event(LLMStructuredPredictEndEvent(output=current))

    @dispatcher.span
    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Model | FlexibleModel, None]:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)  # type: ignore[misc,no-any-return]
        messages = self._get_messages(prompt, **prompt_args)  # type: ignore[attr-defined]
        responses = await self.astream_chat(messages, json_schema=output_cls, **(llm_kwargs or {}))  # type: ignore[attr-defined]

        async def gen() -> AsyncGenerator[Model | FlexibleModel, None]:
            dispatcher.event(
                LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
            )
            current: Any = None
            async for response in responses:
                current = _partial_or_final(output_cls, response, current)
                dispatcher.event(LLMStructuredPredictInProgressEvent(output=current))
                yield current
            dispatcher.event(LLMStructuredPredictEndEvent(output=current))

        return gen()


def parse_response(output_cls: type[Model], response: ChatResponse) -> Model:
    """``output_cls`` from a whole reply decoded under its schema."""
    text = response.message.content or ""
    if (response.raw or {}).get("finish_reason") == "length":
        raise ValueError(
            f"The structured reply was cut off by max_new_tokens before its JSON was complete ({text[:200]!r}); "
            "raise max_new_tokens."
        )
    try:
        return output_cls.model_validate_json(text)
    except ValidationError as error:
        # Constrained decoding guarantees the JSON's shape; a few schema keywords (such as "not")
        # are beyond the grammar, and pydantic's own validators run only here.
        raise ValueError(f"The reply does not validate as {output_cls.__name__}: {error}") from None


def _partial_or_final(output_cls: type[Model], response: ChatResponse, current: Any) -> Any:
    """While streaming: the object so far (partial); for the closing response (empty delta), the
    complete object."""
    if response.delta == "":
        return parse_response(output_cls, response)
    return process_streaming_objects(response, output_cls, cur_objects=None if current is None else [current])
