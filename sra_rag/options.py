"""Settings that every framework adapter exposes, as one pydantic mixin.

LlamaIndex's ``SRALLM`` and LangChain's ``ChatSRA`` / ``SRALLM`` are pydantic models; each puts
:class:`SRAOptions` before its framework base class, so the fields, the shared engine and the merge
of per-call settings are written once, here, and cannot drift between ecosystems::

    class ChatSRA(SRAOptions, BaseChatModel): ...

The SRA fields are derived from :class:`~sra_rag.SRAConfig` (same names, types and descriptions:
:data:`SRAFields`); left unset (None) they are the model's default, and they are checked by building
the config at construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, create_model, model_validator

from sra_rag.config import SRAConfig, as_sra_config
from sra_rag.engine import SRAEngine
from sra_rag.models import default_model, shipped_defaults

SRA_FIELDS: tuple[str, ...] = tuple(SRAConfig.model_fields)
"""The SRA settings mirrored as fields and accepted as per-call keyword arguments."""

SAMPLING_FIELDS: tuple[str, ...] = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "penalize_prompt",
    "loop_guard",
    "seed",
)
"""The generation settings that are fields (defaults of every call) as well as per-call arguments."""

GENERATION_KEYS: tuple[str, ...] = (*SAMPLING_FIELDS, "stop", "tail_from", "layout", "logits_processors")
"""Per-call keyword arguments passed through to the engine (``max_tokens`` is an alias of the first)."""


class UnknownArgumentError(TypeError, ValueError):
    """A constructor argument an adapter does not take (a TypeError, as for any unexpected keyword;
    also a ValueError, as pydantic's validation errors are)."""


FOREIGN_ARGUMENTS: dict[str, str] = {
    # LlamaIndex's HuggingFaceLLM
    "model_name": "model",
    "tokenizer_name": "model (the tokenizer is the model's own)",
    "device_map": "device",
    "torch_dtype": "dtype",
    "generate_kwargs": "the sampling fields {sampling}",
    "stopping_ids": "stop (stop strings, not token ids)",
    "max_length": "max_new_tokens",
    "model_kwargs": "model, device and dtype (for other loading options load an SRAEngine yourself and pass engine=)",
    "tokenizer_kwargs": "nothing: the model's own tokenizer and chat template are used as they are",
    "tokenizer_outputs_to_remove": "nothing: the engine tokenises once, with the chat template",
    "is_chat_model": "nothing: the model's chat template is always applied",
    # LangChain's HuggingFacePipeline, ChatHuggingFace and HuggingFaceEndpoint
    "model_id": "model",
    "repo_id": "model",
    "llm": "model (the adapter loads the model itself) or engine=SRAEngine(...)",
    "tokenizer": "model (the tokenizer is the model's own)",
    "pipeline_kwargs": "the sampling fields {sampling}",
    "stop_sequences": "stop",
    "do_sample": "temperature (0 decodes greedily, above 0 samples)",
    "max_tokens": "max_new_tokens",
    "task": "nothing: the adapter always generates text",
}
"""Constructor arguments of Hugging Face's LlamaIndex and LangChain wrappers, and what to pass instead."""


_SRA_FIELD_DEFINITIONS: dict[str, Any] = {
    name: (
        field.annotation | None,  # type: ignore[operator]  # a type at run time
        Field(default=None, description=f"{field.description} (None: the model's default)"),
    )
    for name, field in SRAConfig.model_fields.items()
}
SRAFields = create_model(
    "SRAFields",
    __doc__="Every :class:`SRAConfig` setting as a field of the same name, type and description, None by "
    "default: the model's default setting (derived, so a new setting reaches every adapter; checked "
    "together by building the config).",
    **_SRA_FIELD_DEFINITIONS,
)


class SRAOptions(SRAFields):
    """The model, generation and SRA settings of an adapter, and its engine.

    ``model=None`` is the default model, Qwen2.5-Coder-0.5B-Instruct (``$SRA_RAG_MODEL`` names
    another); otherwise a model installed from PyPI (``"qwen2.5-coder-0.5b"``, ``"smollm2-135m"``), a
    hub id in the local cache, a local folder or a ``.gguf`` file.
    Objects with the same ``model``, ``device`` and ``dtype`` share one :class:`~sra_rag.SRAEngine`
    (``SRAEngine.shared``), loaded on first use; ``engine=`` uses one loaded yourself.
    ``sra=SRAConfig(...)`` at construction sets every SRA field at once; SRA fields left unset
    (None) are the model's default (:attr:`SRAEngine.defaults`, the same default as the reader, the
    command line and the server).
    """

    model: str | None = Field(default=None, description="Model to load (see the class doc); None: the default model.")
    device: str | None = Field(default=None, description="Torch device; None: CUDA if available, else CPU.")
    dtype: str | None = Field(default=None, description="Torch dtype name; None: bfloat16 on CUDA, float32 on CPU.")
    max_new_tokens: int = Field(default=256, gt=0, description="Tokens to generate at most.")
    temperature: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="Sampling temperature; 0 is greedy decoding."
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int = Field(default=0, ge=0, description="Sample from the k likeliest tokens only (0: all).")
    min_p: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Drop tokens under min_p x the likeliest one's probability."
    )
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, allow_inf_nan=False, description="Penalty on tokens already in the sequence (1: none)."
    )
    penalize_prompt: bool = Field(
        default=True, description="The repetition penalty counts the prompt's tokens too (False: generated only)."
    )
    loop_guard: int = Field(
        default=0, ge=0, description="End a reply once its newest loop_guard tokens repeat an earlier span (0: off)."
    )
    seed: int | None = Field(default=None, description="Random seed for sampling; None: a fresh one per call.")
    stop: list[str] | None = Field(default=None, description="Default stop sequences; a call's stop replaces them.")

    _engine: SRAEngine | None = PrivateAttr(default=None)

    unsupported_arguments: ClassVar[dict[str, str]] = {}
    """Fields of the framework base class that this adapter does not honour, and why; set to
    anything but ``None`` they are refused at construction."""

    def __init__(self, *, sra: SRAConfig | None = None, engine: SRAEngine | None = None, **data: Any) -> None:
        self._check_arguments(data)
        if sra is not None:
            as_sra_config(sra)
            both = sorted(set(data) & set(SRA_FIELDS))
            if both:
                raise TypeError(f"pass the SRA settings either as sra=SRAConfig(...) or as fields, not both: {both}")
            data = {**sra.model_dump(), **data}
        if engine is not None and not isinstance(engine, SRAEngine):
            raise TypeError(f"engine must be an SRAEngine, got {type(engine).__name__}")
        super().__init__(**data)
        self._engine = engine

    @classmethod
    def _check_arguments(cls, data: dict[str, Any]) -> None:
        """Refuse unknown and unsupported constructor arguments with what to pass instead, before
        pydantic would (a misspelt or foreign setting must not be ignored silently)."""
        name = cls.__name__
        refused = [key for key in sorted(data) if key in cls.unsupported_arguments and data[key] is not None]
        if refused:
            reasons = "; ".join(f"{key}: {cls.unsupported_arguments[key]}" for key in refused)
            raise UnknownArgumentError(f"{name} does not take {refused}. {reasons}")
        accepted = set(cls.model_fields) | {field.alias for field in cls.model_fields.values() if field.alias}
        unknown = sorted(set(data) - accepted)
        if not unknown:
            return
        sampling = [key for key in GENERATION_KEYS if key in cls.model_fields]
        hints = [
            f"{key} -> {FOREIGN_ARGUMENTS[key].format(sampling=sampling)}"
            for key in unknown
            if key in FOREIGN_ARGUMENTS
        ]
        mapping = f" Instead of Hugging Face's names pass: {'; '.join(hints)}." if hints else ""
        ours = ["model", "device", "dtype", *sampling, "sra=SRAConfig(...)", "engine"]
        raise UnknownArgumentError(
            f"{name} got unknown arguments {unknown}.{mapping} {name} takes {', '.join(ours)}, the SRA settings "
            f"{list(SRA_FIELDS)} and the fields of its framework base class."
        )

    @model_validator(mode="after")
    def _check_sra_fields(self) -> SRAOptions:
        self.sra_config  # noqa: B018 -- builds the SRAConfig, so bad settings fail at construction
        return self

    @property
    def engine(self) -> SRAEngine:
        """The shared engine (loaded on first use)."""
        if self._engine is None:
            # Only set options go into the key, so a default object shares SRAEngine.shared()'s engine.
            options = {key: value for key, value in (("device", self.device), ("dtype", self.dtype)) if value}
            self._engine = SRAEngine.shared(self.model, **options)
        return self._engine

    @property
    def sra_config(self) -> SRAConfig:
        """The object's SRA settings as one validated :class:`~sra_rag.SRAConfig`: the fields it sets
        over the model's default (the engine's, or before it loads the defaults shipped for ``model``)."""
        base = self._engine.sra if self._engine is not None else shipped_defaults(self.model or default_model()).sra
        return base.override(**{name: value for name in SRA_FIELDS if (value := getattr(self, name)) is not None})

    def answer_settings(self) -> dict[str, Any]:
        """The model's answer decoding (``engine.defaults.sampling``: the loop guard, no per-token
        penalty) for the settings this object leaves unset: what the adapters' readers over
        documents (LlamaIndex's ``SRAQueryEngine``, LangChain's ``create_stuffed_rag_chain``) add to
        each call, as :class:`~sra_rag.rag.reader.Reader` does."""
        return {
            name: value for name, value in self.engine.defaults.sampling.items() if name not in self.model_fields_set
        }

    def call_settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine keyword arguments for one call: this object's settings with the call's over them.

        ``kwargs`` may hold ``sra=SRAConfig(...)`` (replaces the object's SRA settings), single SRA
        fields (merged over those), ``max_new_tokens`` or ``max_tokens``, the sampling settings
        (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
        ``penalize_prompt``, ``loop_guard``, ``seed``),
        ``stop`` (``None``: the object's), ``tail_from``, ``layout`` and ``logits_processors``.
        Anything else is a TypeError that lists what is accepted.
        """
        call = dict(kwargs)
        if "max_tokens" in call:
            if "max_new_tokens" in call:
                raise TypeError("pass max_new_tokens or its alias max_tokens, not both")
            call["max_new_tokens"] = call.pop("max_tokens")
        base = call.pop("sra", None)
        base = self.sra_config if base is None else as_sra_config(base)
        updates = {name: call.pop(name) for name in SRA_FIELDS if name in call}
        unknown = sorted(set(call) - set(GENERATION_KEYS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {unknown}; it accepts "
                f"sra=SRAConfig(...), the SRA settings {list(SRA_FIELDS)} and {list(GENERATION_KEYS)} "
                "(max_tokens for max_new_tokens)."
            )
        if call.get("stop") is None:
            call["stop"] = self.stop
        settings: dict[str, Any] = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return {**settings, **call, "sra": base.override(**updates)}
