"""LangChain chat model and LLM for a local Hugging Face causal LM with Scaled ReAttention."""

from langchain_sra.chat_models import ChatSRA
from langchain_sra.llms import SRALLM

__all__ = ["SRALLM", "ChatSRA"]
