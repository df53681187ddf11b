"""LlamaIndex LLM for a local Hugging Face causal LM with Scaled ReAttention, and the embedded
all-MiniLM-L6-v2 as an embedding model."""

from llama_index.llms.sra.base import SRALLM
from llama_index.llms.sra.embeddings import MiniLMEmbedding

__all__ = ["MiniLMEmbedding", "SRALLM"]
