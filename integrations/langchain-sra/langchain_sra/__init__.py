"""LangChain chat model and LLM for a local Hugging Face causal LM with Scaled ReAttention, and the
embedded all-MiniLM-L6-v2 as an embedding model."""

from langchain_sra.chat_models import ChatSRA
from langchain_sra.embeddings import MiniLMEmbeddings
from langchain_sra.llms import SRALLM

__all__ = ["SRALLM", "ChatSRA", "MiniLMEmbeddings"]
