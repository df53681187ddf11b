"""sra-rag: stuff the whole retrieved context into one prompt and let Scaled ReAttention make a
RoPE model use it."""

from sra_rag import moved
from sra_rag.attention import register, sra_settings
from sra_rag.config import SRAConfig
from sra_rag.engine import Completion, ContextWindowExceededError, SRAEngine, TextStream
from sra_rag.layout import PromptLayout, TextLayout
from sra_rag.models import ModelLoadError, ModelNotSupportedError
from sra_rag.options import SRAOptions

__all__ = [
    "Completion",
    "ContextWindowExceededError",
    "ModelLoadError",
    "ModelNotSupportedError",
    "PromptLayout",
    "SRAConfig",
    "SRAEngine",
    "SRAOptions",
    "TextLayout",
    "TextStream",
    "register",
    "sra_settings",
]
__version__ = "0.1.0"

moved.install()  # old module paths keep working, with a warning naming the new one
