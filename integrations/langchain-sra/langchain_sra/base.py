"""What ``ChatSRA`` and ``SRALLM`` share: the core's settings mixin in LangChain's conventions, and
token usage in LangChain's two forms. Async streaming is the engine's own
(``async for piece in engine.stream(...)``)."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import UsageMetadata
from pydantic import Field

from sra_rag import Completion, SRAEngine, SRAOptions, TextStream
from sra_rag.models import default_model
from sra_rag.options import SAMPLING_FIELDS


class SRASettings(SRAOptions):
    """The core's :class:`~sra_rag.SRAOptions` (model, generation and SRA fields, the shared engine,
    per-call settings) in LangChain's conventions: ``max_tokens`` as the alias of
    ``max_new_tokens``, a ``streaming`` switch, ``model_name`` and ``get_token_ids``.

    ``model=None`` is the embedded SmolLM2-135M-Instruct; otherwise a model installed from PyPI
    (``"qwen2.5-coder-0.5b"``), a hub id in the local cache, a local folder or a ``.gguf`` file.
    Objects with the same ``model``, ``device`` and ``dtype`` share one :class:`~sra_rag.SRAEngine`,
    loaded on first use; ``engine=`` uses one loaded yourself. The SRA fields mirror
    :class:`~sra_rag.SRAConfig` with its defaults; ``sra=SRAConfig(...)`` at construction sets
    them all at once.
    """

    max_new_tokens: int = Field(default=256, gt=0, alias="max_tokens", description="Tokens to generate at most.")
    streaming: bool = Field(default=False, description="Generate through the streaming path (callbacks per token).")

    @property
    def model_name(self) -> str:
        """The loaded model's name."""
        return self.engine.name

    @property
    def ls_model_name(self) -> str:
        """The model as the user named it (``model``, else the default model's), known without
        loading the engine: LangChain asks for it on the event loop before every async call."""
        return self.model or default_model()

    async def aengine(self) -> SRAEngine:
        """The engine, loaded in a worker thread on first use so that the event loop never waits
        for a model to load."""
        if self._engine is None:
            await asyncio.to_thread(lambda: self.engine)
        return self.engine

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            **{name: getattr(self, name) for name in SAMPLING_FIELDS},
            "stop": self.stop,
            "sra": self.sra_config.model_dump(),
        }

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (no special tokens)."""
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def engine_settings(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine keyword arguments for one call; LangChain passes ``stop`` apart from ``kwargs``."""
        if "stop" in kwargs:
            raise TypeError("pass stop as the stop argument, not as a keyword argument")
        return self.call_settings({**kwargs, "stop": stop})


def usage_metadata(result: Completion | TextStream) -> UsageMetadata:
    """LangChain's token counts of a finished completion or stream."""
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def token_usage(result: Completion | TextStream) -> dict[str, int]:
    """Token counts in the ``llm_output["token_usage"]`` form of LangChain LLMs."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
