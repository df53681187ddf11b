"""LlamaIndex LLM for a local Hugging Face causal LM with Scaled ReAttention."""

from llama_index.llms.sra.base import SRALLM

__all__ = ["SRALLM"]
