"""SRAConfig: the validated, frozen settings of Scaled ReAttention.

Field names and defaults follow the settings table of ``shared/SRA_SPEC.md``; ``SRAConfig()`` is the
faithful reference configuration (``SRAConfig.preset("paper")``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

OuterTarget = Literal["schedule", "attention"]
TailMode = Literal["fixed", "question"]
# Attention-ordered stuffing (sra_rag.rag.ordering): where the most-read source goes; a reader's
# order is a placement or "retrieved" (keep the chunks' order).
Placement = Literal["first", "last", "ends"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
Order = Literal["retrieved", "first", "last", "ends"]
ORDERS: tuple[str, ...] = get_args(Order)
# The linear layers' weights on the CPU (sra_rag.generation.weights).
WeightFormat = Literal["fp32", "bf16", "int8", "int4"]
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)


class SRAConfig(BaseModel):
    """Settings of Scaled ReAttention for one request.

    The object is immutable and rejects unknown fields, so it can be shared between threads and
    passed per call (``model(..., sra_config=cfg)``) without one request's settings leaking into
    another's. Use ``cfg.model_copy(update={...})`` to derive a variant.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, description="False gives the stock SDPA result.")
    begin_length: int = Field(
        100, ge=0, description="Leading tokens (system prompt, attention sink) skipped by the inner loop."
    )
    tail_length: int = Field(
        200, ge=0, description="Trailing tokens (question, instruction, generation prompt): the outer-loop rows."
    )
    dynamic_tail: bool = Field(False, description="If true, tail_length = floor(n / tail_divisor).")
    tail_divisor: int = Field(20, ge=1, description="Divisor of the dynamic tail (20 = the last 5%).")
    tail: TailMode = Field(
        "fixed",
        description=(
            "Where the tail starts. 'fixed' is the spec: tail_length (or the dynamic tail) tokens. "
            "'question': from the first token of the request's question to the end (the question, what "
            "follows it and the generation prompt); the question is the request's layout marker, else the "
            "last user message; a prompt with neither (a raw string) falls back to 'fixed'."
        ),
    )
    alpha_inner: float = Field(0.5, gt=0, description="Inner-loop elimination factor.")
    alpha_outer: float = Field(0.3, gt=0, description="Outer-loop elimination factor.")
    beta_inner: float = Field(4.0, ge=0, description="Inner-loop strength: times the removed mass is added back.")
    beta_outer: float = Field(4.0, ge=0, description="Outer-loop strength: times the removed mass is added back.")
    inner: bool = Field(True, description="Run the inner loop (document blocks re-attend to earlier blocks).")
    outer: bool = Field(True, description="Run the outer loop (the tail re-attends to a document block).")
    outer_target: OuterTarget = Field(
        "schedule",
        description=(
            "How the outer loop picks its target block. 'schedule' is the spec's sliding block (the "
            "reference); 'attention' is a variant beyond the paper: per sequence and layer, the "
            "schedule-sized block of the document that receives the most attention from the tail."
        ),
    )

    renormalize: bool = Field(
        False,
        description=(
            "Variant beyond the paper: divide each edited row by its sum after the edit, so it stays a "
            "distribution (beta then sets the target block's share instead of scaling the row up). "
            "False is the spec (step 5: no renormalisation)."
        ),
    )
    outer_layers: tuple[float, float] = Field(
        (0.0, 1.0),
        description=(
            "Variant beyond the paper: the outer loop runs only at layers l with "
            "lo <= l / (L - 1) < hi (still never at the first and last layer). (0, 1) is the spec."
        ),
    )

    document_boost: float = Field(
        1.0,
        ge=1.0,
        description=(
            "Variant beyond the paper, document reattention (1 = off): in the prefill, at every layer "
            "after the readout profile's layer band, the question's rows (the question to the end of the "
            "prompt) multiply their attention on the top-ranked document(s) by this factor and are "
            "renormalised. The ranking is the calibrated readout of the band's layers (see "
            "docs/readout.md), so it needs a request whose layout marks documents and a question (the "
            "reader's, the server's documents, or TextLayout); rows without them are left as they are. "
            "Works alone: set inner=False and outer=False."
        ),
    )
    document_top_k: int = Field(1, ge=1, description="Documents whose attention document_boost raises.")

    @model_validator(mode="after")
    def _check_layer_band(self) -> SRAConfig:
        low, high = self.outer_layers
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"outer_layers must satisfy 0 <= lo < hi <= 1, got {self.outer_layers}")
        if self.boosts_documents and (self.inner or self.outer):
            raise ValueError(
                "document_boost replaces the paper's loops: pass inner=False and outer=False with it "
                "(or use SRAConfig.preset('documents'))"
            )
        return self

    @property
    def boosts_documents(self) -> bool:
        """Whether document reattention is on (``enabled`` and ``document_boost > 1``)."""
        return self.enabled and self.document_boost > 1.0

    def tail_for(self, n: int, question_start: int | None = None) -> int:
        """The tail length for a prompt of ``n`` real tokens whose question (if it has one) starts at
        token ``question_start`` (spec: fixed or dynamic tail; ``tail="question"``: the question on)."""
        if self.tail == "question" and question_start is not None:
            return n - question_start
        if self.dynamic_tail:
            return n // self.tail_divisor
        return self.tail_length

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SRAConfig:
        """A named configuration: ``"paper"`` (the spec defaults), ``"demo"`` (the paper authors'
        demo settings), ``"off"`` (stock attention), ``"recommended"`` (see the README section
        "Does SRA help?") or ``"documents"`` (document reattention, a variant; docs/readout.md),
        with ``overrides`` (single settings) applied over it and validated. The one place where a
        preset's name and overrides become a config (the CLI, the server, the evaluation and the
        adapters all come here)."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown SRA preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name]).override(**overrides)

    def override(self, **fields: Any) -> SRAConfig:
        """A copy with ``fields`` changed, validated like a new config (an unknown name or a bad
        value is a pydantic ``ValidationError`` naming it); itself when ``fields`` is empty."""
        if not fields:
            return self
        return type(self).model_validate({**self.model_dump(), **fields})

    @classmethod
    def preset_names(cls) -> list[str]:
        return sorted(PRESETS)


PRESETS: dict[str, dict[str, object]] = {
    "paper": {},
    "demo": {
        "begin_length": 5,
        "tail_length": 50,
        "alpha_inner": 0.5,
        "alpha_outer": 0.5,
        "beta_inner": 5.0,
        "beta_outer": 5.0,
    },
    "off": {"enabled": False},
    # Measured in README.md, "Does SRA help?": outer loop only, half the paper's strength, target block
    # chosen by the tail's attention, top quarter of the layers, the question-aware tail. The same
    # setting over the upper half of the layers cost SmolLM2 3-12 points of summary facts at 1k tokens
    # on held-out prompts.
    "recommended": {
        "inner": False,
        "beta_outer": 2.0,
        "outer_target": "attention",
        "outer_layers": (0.75, 1.0),
        "tail": "question",
    },
    # Document reattention (a variant beyond the paper): the question's rows read the document that the
    # calibrated readout ranks first ten times more, in the layers after the readout's band. Measured
    # in docs/eval/documents/.
    "documents": {
        "inner": False,
        "outer": False,
        "tail": "question",
        "document_boost": 10.0,
    },
}


def as_sra_config(value: object, name: str = "sra") -> SRAConfig:
    """``value`` if it is an :class:`SRAConfig`, else a TypeError that says what to pass. The one
    type check of SRA settings at every boundary (engine, attention, adapters, reader)."""
    if not isinstance(value, SRAConfig):
        raise TypeError(
            f"{name} must be an SRAConfig, got {type(value).__name__}; build one with SRAConfig(...) or "
            "SRAConfig.preset(name)"
        )
    return value


class ModelDefaults(BaseModel):
    """What a model reads and answers with when the caller says nothing: the SRA preset (and overrides), the
    order of the reader's documents and the answer's decoding policy. One per model, shipped as data beside
    its readout profile (``sra_rag/data/defaults/<model>.json``, found by
    :func:`sra_rag.models.shipped_defaults`) and chosen by measurement on the reader's own prompt; a model
    without one gets :data:`SAFE_DEFAULTS`. The engine, the reader, both adapters, the command line and the
    server all start from it.

    ``order``: attention-ordered stuffing of the reader's documents (``"first"``, ``"last"``,
    ``"ends"``; :mod:`sra_rag.rag.ordering`) or None (the retrieved order); ``loop_guard``: the reply
    ends once its newest ``loop_guard`` tokens repeat a span it already generated (changes no token);
    ``repetition_penalty``: a per-token penalty on the answer's own tokens (1: none; it miscopies
    numbers, so it is opt-in); ``weights``: the linear layers' weight format when the model runs in
    fp32 on a CPU that multiplies bf16 natively (:func:`sra_rag.generation.weights.default_weights`;
    None: fp32), chosen on held-out answers against fp32's; ``measured``: where the choices were made.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    preset: str = Field("recommended", description="SRA preset name (see SRAConfig.preset).")
    sra_overrides: dict[str, Any] = Field(default_factory=dict, description="Single SRA settings over the preset.")
    order: Placement | None = Field(None, description="Attention-ordered stuffing of documents (None: as retrieved).")
    loop_guard: int = Field(16, ge=0, le=4096, description="Span in tokens of the loop guard (0: off).")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="Per-token penalty on the answer (1: none).")
    weights: WeightFormat | None = Field(None, description="CPU weight format where bf16 is native (None: fp32).")
    measured: str = Field("", description="Where these settings were chosen (docs/eval/...).")

    @model_validator(mode="after")
    def _check_preset(self) -> ModelDefaults:
        self.sra  # noqa: B018 -- an unknown preset or bad override fails when the defaults are read
        return self

    @property
    def sra(self) -> SRAConfig:
        return SRAConfig.preset(self.preset, **self.sra_overrides)

    @property
    def sampling(self) -> dict[str, Any]:
        """The answer's decoding settings, as keyword arguments of ``SRAEngine.stream``."""
        return {
            "loop_guard": self.loop_guard,
            "repetition_penalty": self.repetition_penalty,
            "penalize_prompt": False,
        }


SAFE_DEFAULTS = ModelDefaults(
    measured="README 'Does SRA help?': recommended is safe on every suite (768 held-out answers: 3 gained, 1 lost)"
)
"""The defaults of a model nobody has measured: the ``recommended`` preset, plain greedy decoding with
the loop guard."""
