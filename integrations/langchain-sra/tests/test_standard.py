"""LangChain's standard conformance suites for ChatSRA, run against the embedded model."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_sra import ChatSRA
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

pytestmark = pytest.mark.slow


class LocalTextModel:
    """What a local text-only model without tool calling can and cannot do, for both suites."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatSRA

    @property
    def has_tool_calling(self) -> bool:
        """The engine generates text only; it has no tool-call parser or tool-calling template."""
        return False

    @property
    def has_tool_choice(self) -> bool:
        """No tool calling, so no tool choice."""
        return False

    @property
    def has_structured_output(self) -> bool:
        """No constrained decoding, JSON mode or tool calling to build structured output on."""
        return False

    @property
    def supports_json_mode(self) -> bool:
        """No constrained decoding."""
        return False

    @property
    def supports_image_inputs(self) -> bool:
        """Text-only causal LMs; ChatSRA rejects non-text content blocks."""
        return False

    @property
    def supports_image_urls(self) -> bool:
        """Text-only causal LMs, and no network access to fetch URLs."""
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        """Text-only causal LMs."""
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        """Text-only causal LMs."""
        return False

    @property
    def supports_video_inputs(self) -> bool:
        """Text-only causal LMs."""
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        """No tool calling and no images."""
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        """No tool calling and no PDFs."""
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        """Anthropic-style inputs carry tool_use blocks, and there is no tool calling."""
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        """The engine counts prompt and completion tokens exactly."""
        return True

    @property
    def supports_model_override(self) -> bool:
        """One ChatSRA serves one loaded model; a per-call model name cannot switch weights."""
        return False


class TestChatSRAStandardUnit(LocalTextModel, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        """The suite's standard parameters without ``api_key``, ``timeout`` and ``max_retries``:
        a local model has no API key, request timeout or retries, and ChatSRA rejects unknown
        fields so that a misspelt SRA setting cannot pass silently."""
        return {"temperature": 0, "max_tokens": 100, "stop": []}


class TestChatSRAStandardIntegration(LocalTextModel, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Short answers keep the suite fast; greedy decoding keeps it deterministic.
        return {"max_tokens": 12, "temperature": 0}
