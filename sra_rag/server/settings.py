"""What a server is started with: :class:`ServerSettings` (the app's limits and access) and
:class:`EngineSpec` (which model to load, with which default SRA preset). Both are validated once,
here, and are plain picklable data, so the command line and every Ray Serve replica share them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sra_rag.config import PRESETS, WeightFormat

if TYPE_CHECKING:
    from sra_rag.engine import SRAEngine

API_KEY_ENV = "SRA_RAG_API_KEY"
MAX_BODY_BYTES_ENV = "SRA_RAG_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class ServerSettings(BaseModel):
    """Limits and access of one app (one replica).

    ``max_batch`` requests generate at once (the engine's scheduler decodes them in one batch; an
    engine loaded by :class:`EngineSpec` gets it as its batch size); up to ``queue_size`` more wait for
    a slot, and beyond that
    a request is refused at once with 429 and ``Retry-After``. ``timeout`` (seconds) bounds a request
    from arrival (queueing included) to its last token. ``api_key``: when set, every route requires
    ``Authorization: Bearer <api_key>``. ``default_max_tokens``: the completion length when a request
    does not say (capped at what the context window leaves). ``model_name``: the name clients send as
    ``model`` (default: the engine's). ``replica``: the value of the ``x-sra-rag-replica`` response
    header (default: host and process id). ``max_body_bytes``: the largest request body; a larger one
    is refused with 413 before it is read (default 4 MiB; the context window bounds a prompt anyway,
    and a prompt whose characters cannot fit it is refused before it is tokenised).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch: int = Field(8, ge=1)
    queue_size: int = Field(64, ge=0)
    timeout: float = Field(300.0, gt=0)
    api_key: str | None = Field(None, min_length=1, repr=False)
    default_max_tokens: int = Field(512, ge=1)
    model_name: str | None = Field(None, min_length=1)
    replica: str | None = None
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)


class EngineSpec(BaseModel):
    """Which engine to load: ``model`` as :meth:`SRAEngine.from_pretrained` reads it (``None``: the
    default model, Qwen2.5-Coder-0.5B-Instruct or ``$SRA_RAG_MODEL``), the SRA ``preset`` requests
    get unless they send their own (``None``: the model's default, :attr:`SRAEngine.defaults`), the
    ``device`` (``None``: CUDA when present), the prefix cache's budget ``prefix_cache_mb`` (0: off)
    and the CPU ``weights`` format (None: the engine's default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    preset: str | None = None
    device: str | None = None
    prefix_cache_mb: int = Field(1024, ge=0)
    weights: WeightFormat | None = None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown SRA preset {preset!r}; choose one of {sorted(PRESETS)}")
        return preset

    def load(self, max_batch_size: int | None = None) -> SRAEngine:
        """The engine; ``max_batch_size``: requests its scheduler decodes together (None: the engine's default)."""
        from sra_rag.config import SRAConfig
        from sra_rag.engine import SRAEngine

        sra = None if self.preset is None else SRAConfig.preset(self.preset)
        options: dict[str, Any] = {"prefix_cache_bytes": self.prefix_cache_mb * 2**20, "weights": self.weights}
        if max_batch_size is not None:
            options["max_batch_size"] = max_batch_size
        return SRAEngine.from_pretrained(self.model, sra=sra, device=self.device, **options)
