"""Which rows and columns each layer edits: the geometry of ``shared/SRA_SPEC.md`` as pure functions.

All positions are in a sequence's own coordinates: ``0..n-1`` over its real (unpadded) tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sra_rag.config import SRAConfig


@dataclass(frozen=True)
class Edit:
    """One loop's edit at one layer: query rows ``[row_start, row_stop)`` re-attend to target
    columns ``[target_start, target_stop)``; weights below ``tau`` are removed and ``beta`` times
    their mass is added to the target block."""

    loop: str  # "inner" or "outer"
    row_start: int
    row_stop: int
    target_start: int
    target_stop: int
    tau: float
    beta: float

    @property
    def rows(self) -> range:
        return range(self.row_start, self.row_stop)

    @property
    def targets(self) -> range:
        return range(self.target_start, self.target_stop)


def inner_edit(
    n: int, layer_idx: int, num_layers: int, config: SRAConfig, question_start: int | None = None
) -> Edit | None:
    """The inner loop at ``layer_idx`` (spec: "Inner loop"), or None where it is inactive."""
    b, t = config.begin_length, config.tail_for(n, question_start)
    if not config.inner or layer_idx > num_layers - 2 or n <= b + t + 3:
        return None
    c = math.ceil((n - b - t - 3) / (num_layers + 3))
    s = (layer_idx + 3) * c + b + 3
    e = min(s + c, n - t)
    if e <= s:
        return None
    width = e - s
    return Edit("inner", s, e, s - 3 * width, s - 2 * width, config.alpha_inner / (s - b), config.beta_inner)


def outer_edit(
    n: int, layer_idx: int, num_layers: int, config: SRAConfig, question_start: int | None = None
) -> Edit | None:
    """The outer loop at ``layer_idx`` (spec: "Outer loop"), or None where it is inactive.

    With ``outer_target="attention"`` the returned target block is the schedule's block size; the
    attention function moves it to where the tail's attention mass is largest.
    """
    t = config.tail_for(n, question_start)
    if not config.outer or not 1 <= layer_idx <= num_layers - 2 or n <= t + 3 or t == 0:
        return None
    low, high = config.outer_layers
    if not low <= layer_idx / (num_layers - 1) < high:
        return None
    c = math.ceil((n - t - 3) / (num_layers + 3))
    start = (layer_idx + 2) * c + 3
    stop = min((layer_idx + 3) * c + 3, n - t)
    if stop <= start:
        return None
    return Edit("outer", n - t, n, start, stop, config.alpha_outer / (n - t), config.beta_outer)


def layer_edits(
    n: int, layer_idx: int, num_layers: int, config: SRAConfig, question_start: int | None = None
) -> list[Edit]:
    """Every edit of one layer for a sequence of ``n`` real tokens (empty when SRA is off);
    ``question_start``: the question's first token, for ``config.tail == "question"``."""
    if not config.enabled:
        return []
    edits = (
        inner_edit(n, layer_idx, num_layers, config, question_start),
        outer_edit(n, layer_idx, num_layers, config, question_start),
    )
    return [edit for edit in edits if edit is not None]
