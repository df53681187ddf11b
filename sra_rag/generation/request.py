"""A generation request as plain data, validated once, where it is built.

:class:`SamplingSettings` holds the decoding settings (strict types, finite numbers, ranges);
:class:`Request` is everything the scheduler needs to run one request: the prompt's token ids, its
layout, its SRA settings, its sampling settings and extra logits processors. Nothing downstream
checks them again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sra_rag.config import SRAConfig, as_sra_config
from sra_rag.layout import PromptLayout
from sra_rag.readout.calibration import ReadoutProfile

LogitsProcessorLike = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]
"""A transformers ``LogitsProcessor`` (or any callable with its signature): called with the
request's full ids ``(1, prompt + generated)`` and the next-token scores ``(1, vocab)``."""


GREEDY_BELOW = 1e-5
"""Temperatures under this are greedy decoding (as vLLM's ``_SAMPLING_EPS``): dividing the logits by
a smaller one could overflow them to inf."""
MAX_TEMPERATURE = 100.0
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 1e6
"""The repetition penalty divides positive logits and multiplies negative ones: outside [0.01, 1e6]
(``1e-300``, say) they can overflow to inf, and the next token is a NaN draw or a meaningless argmax;
inside it, any logit under 1e32 in magnitude stays finite (1e6 in effect forbids repeats)."""


class SamplingSettingsError(ValueError):
    """Invalid sampling settings; ``settings`` names the bad ones (``["temperature"]``)."""

    def __init__(self, message: str, settings: list[str]) -> None:
        super().__init__(message)
        self.settings = settings


class SamplingSettings(BaseModel):
    """How one request picks its tokens. ``temperature=0`` is greedy decoding (the default); the
    other warpers (``top_p``, ``top_k``, ``min_p``) apply only when sampling; ``repetition_penalty``
    applies in both, over the whole sequence (prompt and generated tokens) as in transformers, or
    over the generated tokens only with ``penalize_prompt=False`` (a RAG prompt's sources hold the
    words an answer must repeat). ``loop_guard``: a sequence-level guard against loops that never
    changes a token: the reply ends (``finish_reason="stop"``) as soon as its newest ``loop_guard``
    tokens repeat a span it already generated, so every token before that is plain decoding's.
    ``seed``: the request's own random generator (None: a fresh one); ``stop``: strings that end the
    generation and are never emitted."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: int = Field(256, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(
        0.0, ge=0.0, le=MAX_TEMPERATURE, description="Sampling temperature; 0 (or below 1e-5) is greedy decoding."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set with this mass.")
    top_k: int = Field(0, ge=0, description="Keep only the k likeliest tokens; 0 keeps all.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens under min_p x the top probability.")
    repetition_penalty: float = Field(
        1.0,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="Penalty on tokens already in the sequence; 1 is none.",
    )
    penalize_prompt: bool = Field(True, description="The repetition penalty counts the prompt's tokens too.")
    loop_guard: int = Field(
        0,
        ge=0,
        le=4096,
        description="End the reply once its newest loop_guard tokens repeat a span it already generated (0: off).",
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed of the request's random generator.")
    stop: tuple[str, ...] = Field((), description="Stop strings (never emitted).")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_sequences(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        stops = (value,) if isinstance(value, str) else value
        if not isinstance(stops, (list, tuple)) or any(not isinstance(stop, str) or not stop for stop in stops):
            raise ValueError(f"stop must be a string or a list of non-empty strings, got {value!r}")
        return tuple(stops)

    @property
    def greedy(self) -> bool:
        # Dividing logits by a temperature this small overflows to inf (then NaN probabilities); vLLM
        # treats temperatures under the same epsilon as greedy.
        return self.temperature < GREEDY_BELOW


def sampling_settings(**settings: Any) -> SamplingSettings:
    """Build :class:`SamplingSettings`, turning pydantic's report into one ValueError per call that
    names each bad setting and its value (``temperature=nan: Input should be a finite number``)."""
    try:
        return SamplingSettings(**settings)
    except ValidationError as error:
        problems, names = [], []
        for item in error.errors():
            name = ".".join(str(part) for part in item["loc"]) or "settings"
            value = item.get("input")
            shown = f"{name}={value!r}" if item["type"] != "extra_forbidden" else f"unknown setting {name!r}"
            problems.append(f"{shown}: {item['msg']}")
            names.append(name)
        raise SamplingSettingsError("Invalid generation settings: " + "; ".join(problems), names) from None


@dataclass(frozen=True, eq=False)
class Request:
    """One generation request, ready for the scheduler.

    ``prompt_ids``: the prompt's token ids; ``layout``: its parts as token spans (None: unknown);
    ``sra``: its SRA settings; ``sampling``: its decoding settings; ``logits_processors``: extra
    processors applied after the repetition penalty and before the sampling warpers, with the full
    ids; ``forced_tokens``: score these tokens instead of choosing (teacher forcing, for
    log-likelihoods); ``logprobs``: record each chosen token's log-probability under the model;
    ``readout``: record the question's attention on each document of the layout in the prefill and
    score it with this profile (None: no readout); ``read_only``: run the prompt only as far as
    the readout needs (the profile's layer band) and generate nothing: the stream ends with the
    document attention and no text.
    """

    prompt_ids: tuple[int, ...]
    sra: SRAConfig
    sampling: SamplingSettings
    layout: PromptLayout | None = None
    logits_processors: tuple[LogitsProcessorLike, ...] = ()
    forced_tokens: tuple[int, ...] = ()
    logprobs: bool = False
    readout: ReadoutProfile | None = None
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("The prompt has no tokens.")
        as_sra_config(self.sra)
        if not isinstance(self.sampling, SamplingSettings):
            raise TypeError(f"sampling must be SamplingSettings, got {type(self.sampling).__name__}")
        if self.layout is not None and self.layout.length != len(self.prompt_ids):
            raise ValueError(
                f"The layout describes {self.layout.length} tokens but the prompt has {len(self.prompt_ids)}."
            )
        if self.readout is not None and not isinstance(self.readout, ReadoutProfile):
            raise TypeError(f"readout must be a ReadoutProfile or None, got {type(self.readout).__name__}")
        if self.read_only and (
            self.readout is None or self.layout is None or self.layout.question is None or not self.layout.documents
        ):
            raise ValueError("A read-only request needs a readout profile and a layout with documents and a question.")
        if self.forced_tokens and len(self.forced_tokens) != self.sampling.max_new_tokens:
            raise ValueError("A scoring request generates exactly its forced tokens (max_new_tokens = their count).")

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)


def check_logits_processors(value: object) -> tuple[LogitsProcessorLike, ...]:
    """Check the ``logits_processors`` argument of a request: None, or a sequence of callables."""
    if value is None:
        return ()
    if callable(value) and not isinstance(value, Sequence):
        value = (value,)
    if not isinstance(value, Sequence) or any(not callable(processor) for processor in value):
        raise TypeError(
            "logits_processors must be a list of transformers LogitsProcessor objects (callables taking "
            f"input_ids and scores), got {value!r}"
        )
    return tuple(value)
