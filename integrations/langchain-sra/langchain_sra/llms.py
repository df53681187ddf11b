"""SRALLM: a local Hugging Face causal LM with Scaled ReAttention as a LangChain (text) LLM.

A prompt string goes to :class:`sra_rag.SRAEngine`, which wraps it as one user message in the
model's chat template. For chat messages use :class:`langchain_sra.ChatSRA`. ::

    from langchain_sra import SRALLM

    llm = SRALLM(max_tokens=64, tail_length=50)
    llm.invoke("Why is the sky blue?", beta_outer=2.0)   # per-call SRA override
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from langchain_sra.base import SRASettings, token_usage
from sra_rag import Completion, TextStream


class SRALLM(SRASettings, BaseLLM):
    """A local Hugging Face causal LM with Scaled ReAttention (arXiv 2307.13365) as a LangChain LLM.

    Same construction fields and per-call keyword arguments as :class:`~langchain_sra.ChatSRA`.
    Each generation's ``generation_info`` holds ``finish_reason``, ``prompt_tokens`` and
    ``completion_tokens``; ``llm_output["token_usage"]`` sums them over the prompts of a call. In
    a stream, a last empty chunk carries them. ``on_llm_new_token`` fires for every piece.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "sra"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="sra",
            ls_model_name=kwargs.get("model") or self.ls_model_name,
            ls_model_type="llm",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        results: list[Completion | TextStream] = []
        for prompt in prompts:
            if self.streaming:
                stream = self.engine.stream(prompt, **self.engine_settings(stop, kwargs))
                for piece in stream:
                    if run_manager:
                        run_manager.on_llm_new_token(piece, chunk=GenerationChunk(text=piece))
                results.append(stream)
            else:
                results.append(self.engine.complete(prompt, **self.engine_settings(stop, kwargs)))
        return self._result(results)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        results: list[Completion | TextStream] = []
        engine = await self.aengine()
        for prompt in prompts:
            settings = self.engine_settings(stop, kwargs)
            if self.streaming:
                stream = await asyncio.to_thread(engine.stream, prompt, **settings)
                async for piece in stream:
                    if run_manager:
                        await run_manager.on_llm_new_token(piece, chunk=GenerationChunk(text=piece))
                results.append(stream)
            else:
                results.append(await asyncio.to_thread(engine.complete, prompt, **settings))
        return self._result(results)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        stream = self.engine.stream(prompt, **self.engine_settings(stop, kwargs))
        for piece in stream:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_info(stream))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        settings = self.engine_settings(stop, kwargs)
        engine = await self.aengine()
        # Tokenising a long prompt takes a while too, so it also runs off the event loop.
        stream = await asyncio.to_thread(engine.stream, prompt, **settings)
        async for piece in stream:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=_info(stream))

    def _result(self, results: list[Completion | TextStream]) -> LLMResult:
        usages = [token_usage(result) for result in results]
        total = {key: sum(usage[key] for usage in usages) for key in ("prompt_tokens", "completion_tokens")}
        total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
        return LLMResult(
            generations=[[Generation(text=result.text, generation_info=_info(result))] for result in results],
            llm_output={"token_usage": total, "model_name": self.model_name},
        )


def _info(result: Completion | TextStream) -> dict[str, Any]:
    return {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }
