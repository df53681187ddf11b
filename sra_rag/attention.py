"""Scaled ReAttention as attention functions registered with transformers.

Two implementations of ``shared/SRA_SPEC.md`` live side by side and are held equal by the tests:

- :func:`sra_attention_forward` (``attn_implementation="sra"``), the fast path: stock SDPA for every
  row, then the probabilities of only the rows the spec edits (inner block and tail) are
  materialised, in row chunks, and those rows' outputs are recomputed. Extra memory is
  ``O(heads * chunk * n)``, never ``O(n^2)``. Each row-level step (the readout, document
  reattention, each loop's edit) is a unit (:class:`RowUnit`) over one batch row's record
  (:class:`BatchRow`), listed by :func:`row_units`.
- :func:`sra_reference_attention_forward` (``attn_implementation="sra_reference"``), the literal
  path: the full ``(heads, n, n)`` probability matrix, edited row by row exactly as the spec's steps
  read.

Settings travel with the call: ``model(..., sra_config=SRAConfig(...))`` reaches the attention
function as a keyword argument (transformers forwards extra ``forward`` kwargs to it). Where a call
cannot carry it (``model.generate``), :func:`sra_settings` sets a context-local value instead. In a
batch, ``sra_config`` may hold one config per row, and ``sra_layout`` one
:class:`~sra_rag.layout.PromptLayout` (or None) per row: the question span that
``SRAConfig(tail="question")`` reads, in the row's own coordinates. ``sra_readout`` may hold one
:class:`~sra_rag.readout.recorder.ReadoutRecorder` (or None) per row: the prefill records in it the question
rows' attention mass on each document (stock attention, before this layer's edits), whether SRA is
enabled or not.

A prefill may continue a cached prefix (``sra_suffix=True``, passed by the engine's prefix cache): the
query is then the last ``q_len`` rows of a sequence whose ``kv_len`` keys include the cached ones, and
both paths edit the rows they would edit in a full prefill, in the sequence's coordinates shifted by
``kv_len - q_len``. The cached rows themselves must be stock (no edit inside them); a call whose edits
or readout reach into the prefix raises ValueError (the prefix cache never makes one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from sra_rag.config import SRAConfig, as_sra_config
from sra_rag.kernels import Kernel, kernel_for, load_triton_rows
from sra_rag.layout import PromptLayout
from sra_rag.readout.recorder import CLASS_EDGES, ReadoutRecorder, stop_if_read
from sra_rag.schedule import Edit, layer_edits

logger = logging.getLogger(__name__)

IMPLEMENTATION = "sra"
REFERENCE_IMPLEMENTATION = "sra_reference"

# Rows of probabilities materialised at once by the fast path, as a number of fp32 elements
# (heads * rows * keys). 2**22 elements = 16 MiB per buffer.
ROW_CHUNK_ELEMENTS = 2**22
# On a GPU each chunk costs a fixed ~0.4 ms of kernel launches, so the CPU's budget (4 rows of a
# 32-head model at 32k tokens) made SRA launch-bound: 15x SDPA's prefill at 32k on an H200. There a
# chunk holds this many (head, row) pairs whatever the length (128 rows of 32 heads), so a chunk
# grows with the prompt like the model's own activations do: 2.0-2.3x SDPA's time at 1.02-1.03x its
# peak memory from 8k to 32k tokens, where fixed budgets traded one for the other (docs/bench/gpu.md).
CUDA_CHUNK_HEAD_ROWS = 4096

_DEFAULT_CONFIG = SRAConfig()
_context_config: ContextVar[SRAConfig | None] = ContextVar("sra_config", default=None)


@contextmanager
def sra_settings(config: SRAConfig) -> Iterator[SRAConfig]:
    """Use ``config`` for SRA attention calls made in this context (thread or task) that do not
    pass ``sra_config`` themselves, for example inside ``model.generate(...)``."""
    as_sra_config(config, "sra_settings' config")
    token = _context_config.set(config)
    try:
        yield config
    finally:
        _context_config.reset(token)


def resolve_config(config: SRAConfig | None) -> SRAConfig:
    """The settings of this call: the keyword argument, else the context's, else the spec defaults."""
    if config is None:
        config = _context_config.get()
    if config is None:
        return _DEFAULT_CONFIG
    return as_sra_config(config, "sra_config")


RowConfig = SRAConfig | Sequence[SRAConfig] | None
RowLayout = PromptLayout | Sequence[PromptLayout | None] | None
RowReadout = ReadoutRecorder | Sequence[ReadoutRecorder | None] | None


def resolve_rows(config: RowConfig, layout: RowLayout, batch: int) -> list[tuple[SRAConfig, PromptLayout | None]]:
    """Each batch row's settings and layout: one value for every row, or a sequence with one per row."""

    def per_row(value: object, name: str) -> list:
        if isinstance(value, Sequence):
            if len(value) != batch:
                raise ValueError(f"{name} has {len(value)} entries for a batch of {batch} rows; pass one per row")
            return list(value)
        return [value] * batch

    configs = [resolve_config(item) for item in per_row(config, "sra_config")]
    layouts = per_row(layout, "sra_layout")
    for item in layouts:
        if item is not None and not isinstance(item, PromptLayout):
            raise TypeError(f"sra_layout must hold PromptLayout objects or None, got {type(item).__name__}")
    return list(zip(configs, layouts, strict=True))


def resolve_readouts(readout: RowReadout, batch: int) -> list[ReadoutRecorder | None]:
    """Each batch row's readout recorder (None: no readout), checked: one per row, or one for a
    single-row batch. Recorders whose layout lacks a question or documents are dropped."""
    if readout is None:
        return [None] * batch
    recorders = [readout] if isinstance(readout, ReadoutRecorder) else list(readout)
    if len(recorders) != batch:
        raise ValueError(f"sra_readout has {len(recorders)} entries for a batch of {batch} rows; pass one per row")
    for item in recorders:
        if item is not None and not isinstance(item, ReadoutRecorder):
            raise TypeError(f"sra_readout must hold ReadoutRecorder objects or None, got {type(item).__name__}")
    return [item if item is not None and item.wanted else None for item in recorders]


def _question_start(layout: PromptLayout | None, n: int, row: int) -> int | None:
    """The question's first token of a row of ``n`` real tokens, checked against the layout's length."""
    if layout is None:
        return None
    if layout.length != n:
        raise ValueError(f"sra_layout of row {row} describes {layout.length} tokens, but the row has {n} real tokens")
    return layout.question_start


def register() -> None:
    """Register ``"sra"`` and ``"sra_reference"`` with transformers' attention and mask interfaces.

    Explicit and idempotent: call it before ``from_pretrained(..., attn_implementation="sra")`` or
    ``model.set_attn_implementation("sra")``. Both use SDPA's boolean masks, so padding and sliding
    windows reach the attention function exactly as they reach stock SDPA.
    """
    AttentionInterface.register(IMPLEMENTATION, sra_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    AttentionInterface.register(REFERENCE_IMPLEMENTATION, sra_reference_attention_forward)
    AttentionMaskInterface.register(REFERENCE_IMPLEMENTATION, sdpa_mask)


def _layer_position(module: torch.nn.Module) -> tuple[int, int]:
    layer_idx = getattr(module, "layer_idx", None)
    config = getattr(module, "config", None)
    num_layers = getattr(config, "num_hidden_layers", None)
    if layer_idx is None or num_layers is None:
        raise ValueError(
            f"SRA needs the layer index and layer count of {type(module).__name__}; it supports decoder "
            "attention modules with `layer_idx` and `config.num_hidden_layers` (Llama, Qwen2, Mistral, Gemma, ...)."
        )
    return int(layer_idx), int(num_layers)


def _visible(attention_mask: torch.Tensor) -> torch.Tensor:
    """A boolean view of a mask: SDPA's boolean masks as they are, additive float masks (0 visible,
    the dtype's minimum hidden) compared against half the minimum."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def real_positions(
    attention_mask: torch.Tensor | None, batch_index: int, length: int, device: torch.device
) -> torch.Tensor:
    """Indices ``(n,)`` of the real (unpadded) tokens of one sequence in a prefill of ``length`` keys.

    A token is real when it may attend to itself: padding keys are masked for every query, and the
    diagonal is inside every causal or sliding window. A query shorter than the keys (a prefill
    after a cached prefix, left-padded, causal, no window) has no full diagonal: there a key is real
    when the last query row, the sequence's last token, sees it.
    """
    if attention_mask is None:
        return torch.arange(length, device=device)
    mask = attention_mask[batch_index, 0]
    if mask.shape[-2] != mask.shape[-1]:  # prefix-cache suffix: (q_len, kv_len)
        return _visible(mask[-1]).nonzero().flatten()
    return _visible(mask.diagonal()).nonzero().flatten()


def _threshold_below(tau: float) -> float:
    """The largest fp32 number below fp32(tau): ``x > _threshold_below(tau)`` is ``x >= tau`` in fp32,
    so one ``threshold_`` pass implements the spec's "keep P >= tau" exactly."""
    tau32 = torch.tensor(tau, dtype=torch.float32)
    return float(torch.nextafter(tau32, torch.tensor(float("-inf"))))


def edit_probabilities(
    probs: torch.Tensor, targets: slice | torch.Tensor, tau: float, beta: float, renormalize: bool = False
) -> torch.Tensor:
    """Apply the spec's edit (steps 1-4) in place to rows ``probs (heads, rows, keys)``.

    ``targets`` selects the target columns. Returns the eligibility ``(heads, rows)``. Every row is
    edited; the caller keeps the stock output of the ineligible ones. ``renormalize`` (a variant,
    ``SRAConfig.renormalize``) divides each edited row by its sum.
    """
    target_probs = probs[..., targets].clone()
    eligible = target_probs.amax(dim=-1) > tau
    torch.nn.functional.threshold(probs, _threshold_below(tau), 0.0, inplace=True)
    removed = 1.0 - probs.sum(dim=-1, keepdim=True)
    weights = torch.where(target_probs >= tau, 100.0, 5.0)
    probs[..., targets] += beta * removed * weights / weights.sum(dim=-1, keepdim=True)
    if renormalize:
        probs /= probs.sum(dim=-1, keepdim=True)
    return eligible


@dataclass(frozen=True)
class BatchRow:
    """One batch row of a prefill, the one record that every row-level unit (:class:`RowUnit`) reads.

    query: ``(heads, q_len, head_dim)``; key, value: ``(kv_heads, kv_len, head_dim)`` as the model gives
    them (:attr:`key_f32` and :attr:`value_f32`: their fp32 copies, made once, when a unit first needs
    them); attention_mask: the batch's boolean ``(batch, 1, q_len, kv_len)`` mask or None (causal). The
    row's real tokens are ``[offset, offset + n)`` in the batch's coordinates (key positions); query row
    ``i`` is key position ``shift + i`` (``shift = kv_len - q_len``: 0 in a full prefill, the cached
    length after a cached prefix, see :meth:`query_rows`). ``kernel``: which
    implementation the units use (:func:`~sra_rag.kernels.kernel_for`): the fused Triton kernels or
    the chunked torch path of :meth:`probabilities` and :meth:`output`.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    batch_index: int
    offset: int
    n: int
    scaling: float
    kernel: Kernel = "torch"
    shift: int = 0

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def heads(self) -> int:
        return self.query.shape[0]

    @property
    def mask(self) -> torch.Tensor | None:
        """The row's mask ``(q_len, kv_len)`` (boolean or additive), or None (causal)."""
        return None if self.attention_mask is None else self.attention_mask[self.batch_index, 0]

    @cached_property
    def key_f32(self) -> torch.Tensor:
        """``(kv_heads, kv_len, head_dim)`` in fp32."""
        return self.key.float()

    @cached_property
    def value_f32(self) -> torch.Tensor:
        """``(kv_heads, kv_len, head_dim)`` in fp32."""
        return self.value.float()

    def chunks(self, start: int, stop: int, keys: int) -> list[slice]:
        """Query rows ``[start, stop)`` (the batch's coordinates) in chunks of :func:`_chunk_rows` rows
        of probabilities over ``keys`` keys."""
        step = _chunk_rows(self.device, self.heads, keys)
        return [slice(first, min(first + step, stop)) for first in range(start, stop, step)]

    def query_rows(self, rows: slice) -> slice:
        """The query (and output) rows of key positions ``rows``."""
        return slice(rows.start - self.shift, rows.stop - self.shift)

    def probabilities(self, rows: slice) -> torch.Tensor:
        """Softmax probabilities in fp32 of query rows ``rows`` over the keys ``[offset, rows.stop)``:
        ``(heads, rows, keys)``. A row never sees keys after itself, so a chunk reads only keys up to
        its last row. The rows of each KV head's query group are stacked, so grouped heads need
        neither repeated keys nor a broadcast copy."""
        heads, _, head_dim = self.query.shape
        key = self.key_f32
        kv_heads = key.shape[0]
        count = rows.stop - rows.start
        rows_q = self.query_rows(rows)
        stacked = (self.query[:, rows_q].float() * self.scaling).reshape(kv_heads, heads // kv_heads * count, head_dim)
        scores = torch.bmm(stacked, key[:, self.offset : rows.stop].transpose(1, 2)).view(heads, count, -1)
        if self.attention_mask is None:
            # Causal: only the chunk's own square of keys (the last ``count`` columns) has a hidden part.
            hidden = torch.ones(count, count, dtype=torch.bool, device=scores.device).triu(1)
            scores[..., -count:].masked_fill_(hidden, float("-inf"))
        else:
            visible = _visible(self.attention_mask[self.batch_index][:, rows_q, self.offset : rows.stop])
            scores.masked_fill_(~visible, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def output(self, probs: torch.Tensor, rows: slice) -> torch.Tensor:
        """The attention output ``(rows, heads, head_dim)`` in fp32 of probabilities
        ``probs (heads, rows, keys)`` from :meth:`probabilities`, grouped heads stacked as there."""
        heads, count, _ = probs.shape
        value = self.value_f32
        kv_heads = value.shape[0]
        stacked = probs.view(kv_heads, heads // kv_heads * count, -1)
        return torch.bmm(stacked, value[:, self.offset : rows.stop]).view(heads, count, -1).transpose(0, 1)


def _attention_target(edit: Edit, column_mass: torch.Tensor, begin: int) -> range:
    """The ``outer_target="attention"`` variant: the block of the schedule's width, inside the
    document span ``[begin, n - t)``, that the tail rows attend to most (summed over heads and rows).

    column_mass: ``(n,)`` attention mass per real key position.
    """
    width = edit.target_stop - edit.target_start
    start, stop = begin, edit.row_start
    if stop <= start:
        return edit.targets
    mass = column_mass[start:stop]
    if mass.numel() <= width:
        return range(start, stop)
    windows = mass.unfold(0, width, 1).sum(dim=-1)
    best = start + int(windows.argmax())
    return range(best, best + width)


def _chunk_rows(device: torch.device, heads: int, n: int) -> int:
    """Rows per chunk of probabilities over ``n`` keys: at most :data:`ROW_CHUNK_ELEMENTS` elements,
    on CUDA :data:`CUDA_CHUNK_HEAD_ROWS` (head, row) pairs."""
    if device.type == "cuda":
        return max(1, CUDA_CHUNK_HEAD_ROWS // heads)
    return max(1, ROW_CHUNK_ELEMENTS // max(1, heads * n))


def _real_span(
    attention_mask: torch.Tensor | None, batch_index: int, length: int, device: torch.device
) -> tuple[int, int]:
    """``(offset, n)``: the sequence's real tokens are ``[offset, offset + n)`` (left or right padding)."""
    positions = real_positions(attention_mask, batch_index, length, device)
    if positions.numel() == 0:
        return 0, 0
    offset, n = int(positions[0]), int(positions.numel())
    if int(positions[-1]) != offset + n - 1:
        raise ValueError(
            "SRA needs each sequence's real tokens to be contiguous (left or right padding); "
            "packed or interleaved masks are not supported."
        )
    return offset, n


def _boosted_spans(config: SRAConfig, recorder: ReadoutRecorder | None, layer_idx: int) -> list[tuple[int, int]]:
    """The document spans (the row's real-token coordinates) whose attention document reattention
    raises at this layer: the readout's top ``document_top_k``, once its band has been read."""
    if not config.boosts_documents or recorder is None:
        return []
    ranking = recorder.ranking(layer_idx)
    if ranking is None:
        return []
    return [recorder.layout.documents[index] for index in ranking[: config.document_top_k]]


def boost_documents(probs: torch.Tensor, spans: Sequence[tuple[int, int]], boost: float) -> None:
    """Document reattention, in place on rows ``probs (..., keys)``: multiply the columns of
    ``spans`` by ``boost`` and renormalise every row."""
    for start, stop in spans:
        probs[..., start:stop] *= boost
    probs /= probs.sum(dim=-1, keepdim=True)


class RowUnit(Protocol):
    """One row-level step of the fast path on one batch row, composed like kvpress's presses: it reads
    the row's tensors and probabilities through :class:`BatchRow` and may rewrite rows of its output.
    A new row-level edit is a new unit (and a line in :func:`row_units`)."""

    def apply(self, row: BatchRow, output: torch.Tensor) -> None:
        """Run on ``row``; output: the row's ``(q_len, heads, head_dim)`` stock output, edited in place."""


@dataclass(frozen=True)
class ReadoutRecording:
    """The readout of one row at ``layer_idx``: the question rows' stock probabilities, in row chunks,
    summed into a mass per key position and averaged over heads and rows, recorded in ``recorder``
    (with the token classes' mass if it asks for them). Leaves the output as it is."""

    recorder: ReadoutRecorder
    layer_idx: int

    def apply(self, row: BatchRow, output: torch.Tensor) -> None:
        recorder = self.recorder
        _question_start(recorder.layout, row.n, row.batch_index)  # checks the layout's length against the row
        start = row.offset + int(recorder.layout.question_start or 0)
        _check_after_prefix(start, row.shift, "the readout's question rows")
        if row.kernel == "triton":
            column_mass, class_mass = load_triton_rows().column_mass(
                row.query, row.key, row.mask, rows=(start, row.offset + row.n), key_start=row.offset,
                key_count=row.n, scaling=row.scaling, classes=CLASS_EDGES if recorder.token_classes else None,
            )  # fmt: skip
            recorder.record(self.layer_idx, column_mass / (row.heads * (row.offset + row.n - start)))
            if class_mass is not None:
                recorder.record_classes(self.layer_idx, class_mass)
            return
        column_mass = torch.zeros(row.n, dtype=torch.float64, device=row.device)
        class_mass = torch.zeros(3, dtype=torch.float64, device=row.device)
        for rows in row.chunks(start, row.offset + row.n, row.n):
            probs = row.probabilities(rows)
            column_mass[: rows.stop - row.offset] += probs.sum(dim=(0, 1)).double()
            if recorder.token_classes:
                class_mass += recorder.class_mass(probs)
        recorder.record(self.layer_idx, column_mass / (row.heads * (row.offset + row.n - start)))
        if recorder.token_classes:
            recorder.record_classes(self.layer_idx, class_mass)


@dataclass(frozen=True)
class DocumentBoost:
    """Document reattention of one row: the question rows (``question_start`` to the end, the row's
    real-token coordinates) multiply their attention on ``spans`` by ``boost`` and are renormalised
    (:func:`boost_documents`); their outputs are recomputed."""

    spans: tuple[tuple[int, int], ...]
    boost: float
    question_start: int

    def apply(self, row: BatchRow, output: torch.Tensor) -> None:
        _check_after_prefix(row.offset + self.question_start, row.shift, "document reattention's question rows")
        if row.kernel == "triton":
            load_triton_rows().boost_rows(
                row.query, row.key, row.value, row.mask, output, rows=(row.offset + self.question_start,
                row.offset + row.n), key_start=row.offset, spans=self.spans, boost=self.boost, scaling=row.scaling,
            )  # fmt: skip
            return
        for rows in row.chunks(row.offset + self.question_start, row.offset + row.n, row.n):
            probs = row.probabilities(rows)
            boost_documents(probs, self.spans, self.boost)
            output[row.query_rows(rows)] = row.output(probs, rows).to(output.dtype)


@dataclass(frozen=True)
class LoopEdit:
    """One loop's edit of one row (spec: "The edit"): the rows of ``edit`` are recomputed from their
    edited probabilities, in row chunks; ineligible rows keep their stock output. ``config`` gives the
    variants: ``outer_target="attention"`` (the target block follows the tail's attention mass) and
    ``renormalize``."""

    edit: Edit
    config: SRAConfig

    def apply(self, row: BatchRow, output: torch.Tensor) -> None:
        _check_after_prefix(row.offset + self.edit.row_start, row.shift, f"the {self.edit.loop} loop's rows")
        if row.kernel == "triton":
            self._apply_triton(row, output)
            return
        edit, config = self.edit, self.config
        chunks = row.chunks(row.offset + edit.row_start, row.offset + edit.row_stop, row.offset + edit.row_stop)
        targets = edit.targets
        if edit.loop == "outer" and config.outer_target == "attention":
            column_mass = torch.zeros(edit.row_stop, device=row.device)
            for rows in chunks:
                column_mass[: rows.stop - row.offset] += row.probabilities(rows).sum(dim=(0, 1))
            targets = _attention_target(edit, column_mass, config.begin_length)

        for rows in chunks:
            probs = row.probabilities(rows)
            eligible = edit_probabilities(
                probs, slice(targets.start, targets.stop), edit.tau, edit.beta, config.renormalize
            )
            # Skipping a chunk with no eligible row saves a product on a CPU; on a GPU the check would
            # wait for the device at every chunk, which costs more than the product.
            if row.device.type != "cuda" and not bool(eligible.any()):
                continue
            edited = row.output(probs, rows).to(output.dtype)
            rows_q = row.query_rows(rows)
            output[rows_q] = torch.where(eligible.transpose(0, 1).unsqueeze(-1), edited, output[rows_q])

    def _apply_triton(self, row: BatchRow, output: torch.Tensor) -> None:
        """The same edit by the fused kernels: for ``outer_target="attention"`` the tail's mass per key
        first (:func:`~sra_rag.kernels.triton_rows.column_mass`), then the edit itself."""
        kernels = load_triton_rows()
        edit, config = self.edit, self.config
        rows = (row.offset + edit.row_start, row.offset + edit.row_stop)
        targets = edit.targets
        if edit.loop == "outer" and config.outer_target == "attention":
            column_mass, _ = kernels.column_mass(
                row.query, row.key, row.mask, rows=rows, key_start=row.offset, key_count=edit.row_stop,
                scaling=row.scaling,
            )  # fmt: skip
            targets = _attention_target(edit, column_mass, config.begin_length)
        kernels.edit_rows(
            row.query, row.key, row.value, row.mask, output, rows=rows, key_start=row.offset,
            targets=(row.offset + targets.start, row.offset + targets.stop), tau=edit.tau, beta=edit.beta,
            scaling=row.scaling, renormalize=config.renormalize,
        )  # fmt: skip


def row_units(
    row: BatchRow,
    config: SRAConfig,
    layout: PromptLayout | None,
    recorder: ReadoutRecorder | None,
    layer_idx: int,
    num_layers: int,
) -> Iterator[RowUnit]:
    """The units of one batch row at this layer, in the order they run: the readout (stock attention,
    before any edit), document reattention, then each loop's edit (their rows never overlap, spec
    "The per-layer schedule"). Built one at a time, after the unit before has run, so the layouts are
    checked and the readout's ranking is read exactly when the row reaches them."""
    if recorder is not None:
        yield ReadoutRecording(recorder, layer_idx)
    if not config.enabled:
        return
    spans = _boosted_spans(config, recorder, layer_idx)
    if spans and recorder is not None:
        question_start = _question_start(recorder.layout, row.n, row.batch_index) or 0
        yield DocumentBoost(tuple(spans), config.document_boost, question_start)
    for edit in layer_edits(row.n, layer_idx, num_layers, config, _question_start(layout, row.n, row.batch_index)):
        yield LoopEdit(edit, config)


def _is_prefill(query: torch.Tensor, key: torch.Tensor, suffix: bool = False) -> bool:
    """Whether this call is a prefill that SRA edits: the query covers the whole key, or
    (``suffix``, a prefill after a cached prefix) is its last ``q_len`` rows. A decoding step (one
    row, no ``suffix``) is ordinary attention."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if suffix:
        return 0 < q_len <= kv_len
    if q_len > 1 and q_len != kv_len:
        logger.debug("SRA skipped: the query (%d) does not cover the whole key (%d)", q_len, kv_len)
    return q_len > 1 and q_len == kv_len


def _check_after_prefix(first_row: int, shift: int, what: str) -> None:
    """Raise ValueError when the key position ``first_row`` lies in a cached prefix of ``shift`` keys:
    its output was computed (stock) by an earlier prefill and cannot be edited any more."""
    if first_row < shift:
        raise ValueError(
            f"{what} start at token {first_row}, inside the cached prefix of {shift} tokens; "
            "prefill the whole prompt (the prefix cache bypasses such requests)"
        )


def sra_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sra_config: RowConfig = None,
    sra_layout: RowLayout = None,
    sra_readout: RowReadout = None,
    sra_suffix: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SRA attention, fast path. Same signature and result layout as transformers' SDPA function.

    query: ``(batch, heads, q_len, head_dim)``; key, value: ``(batch, kv_heads, kv_len, head_dim)``;
    attention_mask: boolean ``(batch, 1, q_len, kv_len)`` or None (causal). ``sra_config``,
    ``sra_layout`` and ``sra_readout``: one value, or one per batch row. ``sra_suffix``: the query is
    the last ``q_len`` rows of the sequence (a prefill after a cached prefix of ``kv_len - q_len``
    keys; layouts still describe the whole sequence).
    Returns ``(batch, q_len, heads, head_dim)`` and no attention weights.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    if sra_suffix and attention_mask is None and q_len != kv_len:
        # SDPA's own causal flag aligns a short query with the first keys; a suffix is the last rows.
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        attention_mask = causal.expand(query.shape[0], 1, q_len, kv_len)
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )
    rows = resolve_rows(sra_config, sra_layout, query.shape[0])
    readouts = resolve_readouts(sra_readout, query.shape[0])
    wanted = any(config.enabled for config, _ in rows) or any(item is not None for item in readouts)
    if not wanted or not _is_prefill(query, key, sra_suffix):
        return output, None
    layer_idx, num_layers = _layer_position(module)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    length = key.shape[2]
    shift = length - q_len  # query row i is key shift + i (0 unless after a cached prefix)
    # The fused kernels assume a full prefill; a suffix after a cached prefix takes the torch path.
    kernel: Kernel = kernel_for(query.device) if shift == 0 else "torch"
    for batch_index, ((config, layout), recorder) in enumerate(zip(rows, readouts, strict=True)):
        if not config.enabled and recorder is None:
            continue
        offset, n = _real_span(attention_mask, batch_index, length, query.device)
        tensors = query[batch_index], key[batch_index], value[batch_index]
        row = BatchRow(*tensors, attention_mask, batch_index, offset, n, scaling, kernel=kernel, shift=shift)
        for unit in row_units(row, config, layout, recorder, layer_idx, num_layers):
            unit.apply(row, output[batch_index])
    stop_if_read(readouts, layer_idx)
    return output, None


def sra_reference_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sra_config: RowConfig = None,
    sra_layout: RowLayout = None,
    sra_readout: RowReadout = None,
    sra_suffix: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SRA attention, literal path: the spec's steps on full ``(batch, heads, q_len, kv_len)``
    probability matrices in fp32, one selected row at a time. Memory ``O(heads * n^2)``.

    Same shapes and arguments as :func:`sra_attention_forward`; with ``sra_suffix`` the sequence's
    token at key position ``p`` is query row ``p - (kv_len - q_len)``.
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("SRA attention does not support attention logit soft-capping.")
    rows = resolve_rows(sra_config, sra_layout, query.shape[0])
    readouts = resolve_readouts(sra_readout, query.shape[0])
    groups = query.shape[1] // key.shape[1]
    key_r, value_r = repeat_kv(key, groups).float(), repeat_kv(value, groups).float()
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key_r.transpose(2, 3)) * scaling
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask.float()
    # Fully masked rows (padding queries) give NaN; they attend to nothing.
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    shift = kv_len - q_len  # the query's first row is key position `shift` (a cached prefix before it)
    prefill = _is_prefill(query, key, sra_suffix)

    if prefill:
        for b, recorder in enumerate(readouts):
            if recorder is None:
                continue
            positions = real_positions(attention_mask, b, kv_len, query.device)
            question_start = _question_start(recorder.layout, len(positions), b)
            _check_after_prefix(int(positions[question_start or 0]), shift, "the readout's question rows")
            # The question rows (question to the end) over the row's real keys, mean over heads and rows.
            question_rows = probs[b][:, positions[question_start:] - shift][..., positions]
            recorder.record(_layer_position(module)[0], question_rows.double().mean(dim=(0, 1)))
            if recorder.token_classes:
                recorder.record_classes(_layer_position(module)[0], recorder.class_mass(question_rows))
            spans = _boosted_spans(rows[b][0], recorder, _layer_position(module)[0])
            if spans:  # document reattention: the question rows, every head
                question, columns = positions[question_start:, None] - shift, positions[None, :]
                edited = probs[b][:, question, columns]  # (heads, question rows, real keys): a copy
                boost_documents(edited, spans, rows[b][0].document_boost)
                probs[b][:, question, columns] = edited
        stop_if_read(readouts, _layer_position(module)[0])

    if any(config.enabled for config, _ in rows) and prefill:
        layer_idx, num_layers = _layer_position(module)
        for b, (config, layout) in enumerate(rows):
            positions = real_positions(attention_mask, b, kv_len, query.device)
            question_start = _question_start(layout, len(positions), b)
            for edit in layer_edits(len(positions), layer_idx, num_layers, config, question_start):
                _check_after_prefix(int(positions[edit.row_start]), shift, f"the {edit.loop} loop's rows")
                targets = edit.targets
                if edit.loop == "outer" and config.outer_target == "attention":
                    tail = positions[edit.row_start : edit.row_stop] - shift
                    column_mass = probs[b][:, tail].sum(dim=(0, 1))[positions]
                    targets = _attention_target(edit, column_mass, config.begin_length)
                columns = positions[targets.start : targets.stop]
                for i in edit.rows:
                    row = int(positions[i]) - shift  # the query row of sequence token i
                    for head in range(query.shape[1]):
                        p = probs[b, head, row]
                        # Step 1: only rows that already attend to the target block are edited.
                        if not p[columns].max() > edit.tau:
                            continue
                        # Step 2: eliminate the negligible weights.
                        edited = torch.where(p >= edit.tau, p, torch.zeros_like(p))
                        # Step 3: the removed mass.
                        removed = 1.0 - edited.sum()
                        # Step 4: hand beta times that mass to the target block, favouring its survivors.
                        weights = torch.where(p[columns] >= edit.tau, 100.0, 5.0)
                        edited[columns] += edit.beta * removed * weights / weights.sum()
                        if config.renormalize:  # a variant; the spec's step 5 keeps the row as it is
                            edited = edited / edited.sum()
                        probs[b, head, row] = edited

    # Step 5: rows are not renormalised.
    output = torch.matmul(probs, value_r).to(query.dtype)
    return output.transpose(1, 2).contiguous(), None
