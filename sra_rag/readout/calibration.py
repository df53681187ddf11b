"""Readout profiles: the layer band and position bias that turn a raw readout into calibrated scores.

A profile is measured without labels by :func:`calibrate` (``sra-rag calibrate --model ...``): on
synthetic prompts whose question asks about someone no document describes, whatever mass a document
receives is position bias, measured per layer as the length-normalised ``log(mass)`` that the profile
scores (:func:`normalised_mass`) over the document's relative position (binned). The layer band is
the one in which bias-corrected scores rank a planted gold document first most often on separate
synthetic prompts (seeded; never the prompts of a report).
Profiles for the PyPI models ship in ``sra_rag/data/readout/<model>.json``
(:func:`sra_rag.models.shipped_profile` finds them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sra_rag.layout import PromptLayout
from sra_rag.readout.recorder import DocumentAttention, Readout


def normalised_mass(readout: Readout, length_exponent: float) -> np.ndarray:
    """``(layers, documents)``: each document's ``log(mass / n ** length_exponent)`` relative to a
    document of the prompt's mean log length: ``log(mass per token)`` with ``1 - length_exponent`` of
    the document's centred log length added back. The one quantity that both the bias is fitted on
    (:func:`fit_bias`) and scores are computed from (:meth:`ReadoutProfile.layer_scores`)."""
    density = readout.log_density().numpy()
    if length_exponent == 1.0:
        return density
    lengths = np.log(np.asarray(readout.lengths, dtype=np.float64))
    return density + (1.0 - length_exponent) * (lengths - lengths.mean())


class ReadoutProfile(BaseModel):
    """How to score one model's readout.

    ``layers``: the band ``[lo, hi)`` of layer indices averaged; ``positions``: relative document
    positions (0: the first document's start, 1: the last one's end) at which ``bias`` is given;
    ``bias[layer][i]``: the expected :func:`normalised_mass` of a document at ``positions[i]`` that
    the question does not concern. An uncalibrated profile has no bias (``calibrated=False``).
    ``length_exponent``: how a document's mass is normalised by its length ``n`` tokens, as
    ``mass / n ** e`` relative to a document of the prompt's mean (log) length: 1 is mass per token,
    which lets a short chunk that repeats the question's words outrank the long one that answers it;
    0 (the default, chosen on dev prompts with chunks of mixed lengths) compares total mass. With
    documents of equal length the two rank alike.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    num_layers: int = Field(ge=1)
    layers: tuple[int, int]
    positions: tuple[float, ...] = ()
    bias: tuple[tuple[float, ...], ...] = ()
    calibrated: bool = True
    length_exponent: float = Field(default=0.0, ge=0.0, le=1.0)
    details: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ReadoutProfile:
        low, high = self.layers
        if not 0 <= low < high <= self.num_layers:
            raise ValueError(f"layers {self.layers} is not a band inside [0, {self.num_layers})")
        if self.calibrated:
            if len(self.bias) != self.num_layers or any(len(row) != len(self.positions) for row in self.bias):
                raise ValueError("bias must hold one row per layer with one value per position")
            if len(self.positions) < 2 or list(self.positions) != sorted(self.positions):
                raise ValueError("positions must be at least two increasing relative positions")
        return self

    @classmethod
    def uncalibrated(cls, model: str, num_layers: int) -> ReadoutProfile:
        """Raw scores over the upper half of the layers (lower layers carry little signal)."""
        return cls(model=model, num_layers=num_layers, layers=(num_layers // 2, num_layers), calibrated=False)

    def layer_scores(self, readout: Readout) -> np.ndarray:
        """``(layers, documents)``: each layer's log length-normalised mass, minus the bias if calibrated."""
        if readout.num_layers != self.num_layers:
            raise ValueError(
                f"the readout has {readout.num_layers} layers but the profile for {self.model} expects "
                f"{self.num_layers}; calibrate this model with `sra-rag calibrate`"
            )
        return self._minus_bias(readout, range(self.num_layers))

    def _minus_bias(self, readout: Readout, layers: range) -> np.ndarray:
        """``(len(layers), documents)``: :func:`normalised_mass` of ``readout`` (whose rows are
        ``layers``), minus those layers' bias at each document's position if calibrated."""
        density = normalised_mass(readout, self.length_exponent)
        if not self.calibrated:
            return density
        where = np.asarray(readout.positions)
        bias = np.stack([np.interp(where, self.positions, self.bias[layer]) for layer in layers])
        return density - bias

    def band_scores(self, layout: PromptLayout, mass: Mapping[int, Sequence[float]]) -> list[float]:
        """The scores of :meth:`score` from the band's layers alone (``mass[layer][document]``), for
        use inside a prefill that has read the band but not yet the later layers."""
        low, high = self.layers
        missing = [layer for layer in range(low, high) if layer not in mass]
        if missing:
            raise ValueError(f"the readout misses layers {missing} of the band {self.layers}")
        band = Readout(layout, tuple(tuple(mass[layer]) for layer in range(low, high)))
        return [float(value) for value in self._minus_bias(band, range(low, high)).mean(axis=0)]

    def score(self, readout: Readout) -> DocumentAttention:
        """One score per document (higher = read more): the band's mean of :meth:`layer_scores`.
        ``readout`` holds every layer, or the layers up to the band's end (a read-only prefill,
        :meth:`~sra_rag.engine.SRAEngine.read`)."""
        low, high = self.layers
        if readout.num_layers == high < self.num_layers:
            scores = np.asarray(self.band_scores(readout.layout, dict(enumerate(readout.mass))))
        else:
            scores = self.layer_scores(readout)[low:high].mean(axis=0)
        return DocumentAttention(
            tuple(float(value) for value in scores), self.calibrated, self.layers, readout, self.model
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReadoutProfile:
        return cls.model_validate_json(Path(path).read_text())


# Positions at which the bias is given, and the kernel width (in relative position) that smooths it.
BIAS_POSITIONS = tuple(float(x) for x in np.linspace(0.0, 1.0, 21))
BIAS_BANDWIDTH = 0.04
MIN_BAND = 2


def fit_bias(absent: Sequence[Readout], length_exponent: float = 0.0) -> tuple[tuple[float, ...], ...]:
    """Per layer, the expected :func:`normalised_mass` (with ``length_exponent``, as the profile
    will score) at each of :data:`BIAS_POSITIONS`: a Gaussian-kernel mean over the documents of
    prompts that no document answers."""
    if not absent:
        raise ValueError("the bias needs at least one prompt whose question no document answers")
    where = np.concatenate([np.asarray(readout.positions) for readout in absent])
    density = np.concatenate([normalised_mass(readout, length_exponent) for readout in absent], axis=1)
    weights = np.exp(-0.5 * ((np.asarray(BIAS_POSITIONS)[:, None] - where[None]) / BIAS_BANDWIDTH) ** 2)
    bias = density @ weights.T / weights.sum(axis=1)  # (layers, positions)
    return tuple(tuple(float(value) for value in row) for row in bias)


def rank_of_gold(scores: Sequence[float] | np.ndarray, gold: int) -> int:
    """0 when the gold document scores highest (ties count against it)."""
    values = np.asarray(scores, dtype=np.float64)
    return int((values >= values[gold]).sum()) - 1


def _margin(scores: np.ndarray, gold: int) -> float:
    """How far the gold document's score leads the best other one, in units of the scores' spread."""
    others = np.delete(scores, gold)
    return float((scores[gold] - others.max()) / (scores.std() + 1e-9)) if others.size else 0.0


def choose_band(profile: ReadoutProfile, gold: Sequence[tuple[Readout, int]]) -> tuple[int, int]:
    """The contiguous layer band (at least :data:`MIN_BAND` layers) whose calibrated scores rank the
    gold document first most often; ties go to the higher mean reciprocal rank, then to the larger
    mean margin of the gold document over the best other one."""
    if not gold:
        raise ValueError("choosing the layer band needs at least one prompt with a gold document")
    layer_scores = [(profile.layer_scores(readout), index) for readout, index in gold]
    cumulative = [np.vstack([np.zeros((1, scores.shape[1])), scores.cumsum(axis=0)]) for scores, _ in layer_scores]
    best: tuple[float, float, float] | None = None
    band = (0, profile.num_layers)
    for low in range(profile.num_layers):
        for high in range(low + MIN_BAND, profile.num_layers + 1):
            pairs = [(c[high] - c[low], index) for c, (_, index) in zip(cumulative, layer_scores, strict=True)]
            ranks = [rank_of_gold(scores, index) for scores, index in pairs]
            key = (
                float(np.mean([rank == 0 for rank in ranks])),
                float(np.mean([1 / (1 + rank) for rank in ranks])),
                float(np.mean([_margin(scores, index) for scores, index in pairs])),
            )
            if best is None or key > best:
                best, band = key, (low, high)
    return band


def fit_profile(
    model: str,
    absent: Sequence[Readout],
    gold: Sequence[tuple[Readout, int]],
    details: dict[str, object],
    length_exponent: float = 0.0,
) -> ReadoutProfile:
    """A profile from readouts of prompts without an answer (the bias) and with a known gold
    document (the band), scoring with ``length_exponent`` (see :class:`ReadoutProfile`)."""
    bias = fit_bias(absent, length_exponent)
    num_layers = len(bias)
    draft = ReadoutProfile(
        model=model,
        num_layers=num_layers,
        layers=(0, num_layers),
        positions=BIAS_POSITIONS,
        bias=bias,
        length_exponent=length_exponent,
    )
    band = choose_band(draft, gold)
    return draft.model_copy(update={"layers": band, "details": details})
