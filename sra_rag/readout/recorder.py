"""Which documents the model read: the question's attention mass on each document, per layer.

In the prefill, the attention function gives every row that asks for it (``sra_readout=`` a
:class:`ReadoutRecorder` per batch row, beside ``sra_config`` and ``sra_layout``) the attention mass
that the question's rows (the question's first token to the end of the prompt: the rows of
``SRAConfig(tail="question")``) put on each document span of the row's
:class:`~sra_rag.layout.PromptLayout`, averaged over heads and question rows: ``(layers, documents)``.
Only those rows' probabilities are materialised, so the cost is that of the outer loop.

Raw mass favours some positions whatever the question (the first and last documents, long ones), so
a :class:`~sra_rag.readout.calibration.ReadoutProfile` turns it into a score per document: the mean over a
layer band of the log of its length-normalised mass minus the position bias it measured on questions that no
document answers (``sra-rag calibrate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from sra_rag.layout import PromptLayout


class BandScorer(Protocol):
    """What a recorder needs of a profile (:class:`~sra_rag.readout.calibration.ReadoutProfile`) to
    rank the documents while the prefill runs: its layer band and its scores over that band."""

    @property
    def layers(self) -> tuple[int, int]: ...

    def band_scores(self, layout: PromptLayout, mass: Mapping[int, Sequence[float]]) -> list[float]: ...


# The paper's token classes by attention weight: Linchpins above 0.05, Hidden Gems / Context Fillers
# from 0.01 to 0.05, Small Potatoes below 0.01.
CLASS_EDGES = (0.01, 0.05)
CLASS_NAMES = ("Small Potatoes (< 0.01)", "Hidden Gems / Context Fillers (0.01-0.05)", "Linchpins (> 0.05)")


class ReadoutComplete(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the attention function once every row of a read-only prefill has recorded the
    layers it needs (:attr:`ReadoutRecorder.until`): the layers after them are not run."""


@dataclass
class ReadoutRecorder:
    """Filled by the attention function during one row's prefill: ``mass[layer]`` holds the question
    rows' attention mass on each of the layout's documents (in prompt order). With
    ``token_classes=True``, ``classes[layer]`` also holds the shares of the question rows' attention
    mass carried by weights of each of the paper's classes (:data:`CLASS_NAMES`). ``until``: a
    read-only prefill, which needs layers ``[0, until)`` and nothing after them (:func:`stop_if_read`)."""

    layout: PromptLayout
    token_classes: bool = False
    profile: BandScorer | None = None
    until: int | None = None
    mass: dict[int, list[float]] = field(default_factory=dict)
    classes: dict[int, list[float]] = field(default_factory=dict)
    _ranking: list[int] | None = field(default=None, init=False, repr=False)

    def ranking(self, layer: int) -> list[int] | None:
        """Document indices, most read first, by the ``profile``'s calibrated scores over its layer
        band; None at layers up to the band's end (the band is not read yet) or without a profile.
        What document reattention (``SRAConfig.document_boost``) targets at ``layer``."""
        if self.profile is None or layer < self.profile.layers[1]:
            return None
        if self._ranking is None:
            scores = self.profile.band_scores(self.layout, self.mass)
            self._ranking = sorted(range(len(scores)), key=lambda index: -scores[index])
        return self._ranking

    @property
    def wanted(self) -> bool:
        """Whether the layout has what a readout needs: a question and at least one document."""
        return self.layout.question is not None and bool(self.layout.documents)

    def record(self, layer: int, column_mass: torch.Tensor) -> None:
        """Store layer ``layer``'s readout from ``column_mass (n,)``: the question rows' attention per
        key position of the row's real tokens, averaged over heads and rows."""
        cumulative = torch.cat([column_mass.new_zeros(1), column_mass.double().cumsum(0)])
        self.mass[layer] = [float(cumulative[stop] - cumulative[start]) for start, stop in self.layout.documents]

    def class_mass(self, probs: torch.Tensor) -> torch.Tensor:
        """``(3,)``: the mass of ``probs (heads, rows, keys)`` in each token class, summed (float64)."""
        low, high = CLASS_EDGES
        probs = probs.double()
        small = probs.masked_fill(probs >= low, 0.0).sum()
        linchpins = probs.masked_fill(probs <= high, 0.0).sum()
        return torch.stack([small, probs.sum() - small - linchpins, linchpins])

    def record_classes(self, layer: int, class_mass: torch.Tensor) -> None:
        """Store layer ``layer``'s token-class shares from the question rows' summed class mass ``(3,)``."""
        self.classes[layer] = [float(value) for value in class_mass / class_mass.sum()]

    def readout(self) -> Readout | None:
        """The finished readout, or None when nothing was recorded."""
        if not self.mass:
            return None
        layers = sorted(self.mass)
        if layers != list(range(len(layers))):
            raise ValueError(f"the readout misses layers: recorded {layers}")
        return Readout(self.layout, tuple(tuple(self.mass[layer]) for layer in layers))


def stop_if_read(recorders: Sequence[ReadoutRecorder | None], layer: int) -> None:
    """Raise :class:`ReadoutComplete` after ``layer`` when every row of the batch is a read-only
    prefill that has now recorded all the layers it needs."""
    if recorders and all(item is not None and item.until is not None and layer + 1 >= item.until for item in recorders):
        raise ReadoutComplete


@dataclass(frozen=True)
class Readout:
    """The question's attention mass on each document: ``mass[layer][document]`` (fractions of the
    question rows' attention, averaged over heads and rows), with the prompt's ``layout``."""

    layout: PromptLayout
    mass: tuple[tuple[float, ...], ...]

    @property
    def num_layers(self) -> int:
        return len(self.mass)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Tokens of each document."""
        return tuple(stop - start for start, stop in self.layout.documents)

    @property
    def positions(self) -> tuple[float, ...]:
        """Each document's relative position in the documents' region: its middle token, 0 at the
        first document's start and 1 at the last one's end."""
        spans = self.layout.documents
        first, last = spans[0][0], spans[-1][1]
        return tuple(((start + stop) / 2 - first) / max(1, last - first) for start, stop in spans)

    def log_density(self) -> torch.Tensor:
        """``log(mass per token)`` of each document at each layer: ``(layers, documents)``, float64."""
        mass = torch.tensor(self.mass, dtype=torch.float64)
        lengths = torch.tensor(self.lengths, dtype=torch.float64)
        return torch.log(mass.clamp(min=1e-12) / lengths)


@dataclass(frozen=True)
class DocumentAttention:
    """How much the model read each document of a prompt, as one score per document (prompt order;
    higher = read more), with the raw readout behind it.

    ``scores``: mean over ``layers`` of the log of each document's length-normalised mass (the
    profile's ``length_exponent``) minus the profile's position bias;
    ``calibrated``: False when no profile exists for the model (the scores are then raw, and the
    first and last documents look read more than they are); ``profile``: the profile's name.
    """

    scores: tuple[float, ...]
    calibrated: bool
    layers: tuple[int, int]
    readout: Readout = field(repr=False)
    profile: str = ""

    @property
    def ranking(self) -> list[int]:
        """Document indices, most read first."""
        return sorted(range(len(self.scores)), key=lambda index: -self.scores[index])

    def summary(self) -> dict[str, object]:
        """The scores as plain data for response metadata: ``scores`` (per document, prompt order),
        ``calibrated``, ``layers`` and ``profile``."""
        return {
            "scores": [round(score, 4) for score in self.scores],
            "calibrated": self.calibrated,
            "layers": list(self.layers),
            "profile": self.profile,
        }
