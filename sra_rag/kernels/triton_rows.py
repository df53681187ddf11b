"""Fused Triton kernels for the rows that SRA changes (``shared/SRA_SPEC.md``, "The edit").

The chunked torch path materialises each edited row's probabilities over every key it sees. These
kernels never do: a program takes a block of query rows of one KV head's group (the group's heads
stacked, row by row, so grouped heads read each key once) and streams over the keys those rows can
see, keeping everything in fp32 registers:

- :func:`edit_rows` (one loop's edit): pass 1 finds each row's max and softmax normaliser; pass 2
  accumulates the kept output ``sum_j [p_j >= tau] p_j v_j`` and the kept mass; two short passes over
  the target block find its weights ``w`` (100 for survivors, 5 otherwise), their sum and the
  eligibility ``max_T p > tau``, then add ``beta * removed * w / sum(w)`` times the target values.
  Eligible rows are written over the stock output; the others keep it.
- :func:`column_mass` (the readout, and the tail's mass for ``outer_target="attention"``): a first
  kernel stores the rows' max and normaliser, a second one, over key blocks, sums each key's
  probability over the rows and the group's heads (and, for the readout's token classes, the mass
  of the small and the large weights). No atomics: one partial sum per KV head, added on the host.
- :func:`boost_rows` (document reattention): one online-softmax pass with ``log(boost)`` added to the
  boosted documents' scores, which equals multiplying their probabilities and renormalising.

Scores are ``q k^T * scaling`` in fp32. On a GPU, half-precision query and key go into ``tl.dot``
as they are (their products are exact in the fp32 accumulator); fp32 inputs and every product with
probabilities use ``input_precision="ieee"`` (no TF32). Under Triton's interpreter the query and key
are upcast first, because the interpreter of Triton 3.9 computes ``tl.dot`` of bfloat16 operands
wrongly (it multiplies their bit patterns as integers); it also rounds fp32 to bfloat16 towards zero
where a GPU rounds to nearest, one unit in the last place of a bfloat16 output. Padding and
sliding-window masks are read as they are (boolean or additive); a row never sees keys after itself.

The kernels round differently from ``torch.softmax``, so a weight within rounding of ``tau`` may be
kept by one path and dropped by the other (the spec's threshold is a step): that (row, head) output
moves by about ``tau * |v|``, or more where the weight is in the target block. Tests allow it for a
rare pair at real sizes.

Importing this module imports Triton; :func:`sra_rag.kernels.load_triton_rows` does it lazily.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Block sizes: (head, row) pairs per program and keys per step. tl.dot needs 16 or more on a GPU.
BLOCK_ROWS = 64
BLOCK_KEYS = 64
MASK_NONE, MASK_BOOL, MASK_ADDITIVE = 0, 1, 2


@triton.jit
def _scores(
    q,
    key_ptr,
    mask_ptr,
    kv_head,
    row,
    row_ok,
    cols,
    col_ok,
    d,
    d_ok,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mm,
    stride_mn,
    scaling,
    mask_hidden,
    MASK: tl.constexpr,
    HALF_DOT: tl.constexpr,
):
    """Scores ``(rows, keys)`` of the query tile ``q`` against the keys ``cols`` of ``kv_head``, in fp32;
    -inf where a key is hidden (after the row, masked, or outside the block)."""
    key = tl.load(
        key_ptr + kv_head * stride_kh + cols[:, None] * stride_kn + d[None, :] * stride_kd,
        mask=col_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if HALF_DOT:
        scores = tl.dot(q, tl.trans(key))
    else:
        scores = tl.dot(q.to(tl.float32), tl.trans(key.to(tl.float32)), input_precision="ieee")
    scores = scores * scaling
    visible = row_ok[:, None] & col_ok[None, :] & (cols[None, :] <= row[:, None])
    if MASK == 1:
        allowed = tl.load(mask_ptr + row[:, None] * stride_mm + cols[None, :] * stride_mn, mask=visible, other=0)
        visible = visible & (allowed != 0)
    if MASK == 2:
        additive = tl.load(mask_ptr + row[:, None] * stride_mm + cols[None, :] * stride_mn, mask=visible, other=0)
        visible = visible & (additive.to(tl.float32) > mask_hidden)
    return tl.where(visible, scores, float("-inf"))


@triton.jit
def _values(value_ptr, kv_head, cols, col_ok, d, d_ok, stride_vh, stride_vn, stride_vd):
    """The value tile ``(keys, head_dim)`` of ``kv_head`` at ``cols``, in fp32 (zero outside the block)."""
    value = tl.load(
        value_ptr + kv_head * stride_vh + cols[:, None] * stride_vn + d[None, :] * stride_vd,
        mask=col_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    return value.to(tl.float32)


@triton.jit
def _row_tile(
    query_ptr,
    stride_qh,
    stride_qm,
    stride_qd,
    group,
    row_start,
    row_count,
    pair_start,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HALF_DOT: tl.constexpr,
):
    """The (head, row) pairs ``[pair_start, pair_start + BLOCK_M)`` of KV head ``program_id(0)``'s
    group, stacked row by row (pair ``m`` is row ``row_start + m // group`` of the group's head
    ``m % group``): their pair index, head, row, validity, and the query tile ``(BLOCK_M, BLOCK_D)``."""
    kv_head = tl.program_id(0)
    pairs = pair_start + tl.arange(0, BLOCK_M)
    row_ok = pairs < row_count * group
    row = (row_start + pairs // group).to(tl.int64)
    head = (kv_head * group + pairs % group).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(
        query_ptr + head[:, None] * stride_qh + row[:, None] * stride_qm + d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if not HALF_DOT:
        q = q.to(tl.float32)
    return pairs, head, row, row_ok, q


@triton.jit
def _edit_rows_kernel(
    query_ptr,
    key_ptr,
    value_ptr,
    mask_ptr,
    out_ptr,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mm,
    stride_mn,
    stride_om,
    stride_oh,
    stride_od,
    group,
    row_start,
    row_count,
    key_start,
    target_start,
    target_stop,
    tau,
    beta,
    scaling,
    mask_hidden,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
    HALF_DOT: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kv_head = tl.program_id(0)
    pair_start = tl.program_id(1) * BLOCK_M
    pairs, head, row, row_ok, q = _row_tile(
        query_ptr, stride_qh, stride_qm, stride_qd, group, row_start, row_count, pair_start,
        HEAD_DIM, BLOCK_M, BLOCK_D, HALF_DOT,
    )  # fmt: skip
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    # The block's last row sees keys up to itself; no row of the block sees further.
    key_stop = row_start + (tl.minimum(pair_start + BLOCK_M, row_count * group) - 1) // group + 1

    # Pass 1: each row's max score and softmax normaliser.
    row_max = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    normaliser = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(key_start, key_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, cols < key_stop, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        normaliser = normaliser * tl.exp(row_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), 1)
        row_max = new_max
    normaliser = tl.where(normaliser > 0, normaliser, 1.0)  # padding pairs of the block

    # Pass 2 (spec steps 2-3): the kept output and the kept mass.
    output = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    kept = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(key_start, key_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < key_stop
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, col_ok, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        probs = tl.exp(scores - row_max[:, None]) / normaliser[:, None]
        probs = tl.where(probs >= tau, probs, 0.0)
        kept += tl.sum(probs, 1)
        value = _values(value_ptr, kv_head, cols, col_ok, d, d_ok, stride_vh, stride_vn, stride_vd)
        output += tl.dot(probs, value, input_precision="ieee")
    removed = 1.0 - kept

    # The target block (spec steps 1 and 4): its weights' sum and the eligibility first ...
    weight_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    target_max = tl.full((BLOCK_M,), -1.0, dtype=tl.float32)
    for start in range(target_start, target_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < target_stop
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, col_ok, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        probs = tl.exp(scores - row_max[:, None]) / normaliser[:, None]
        weights = tl.where(col_ok[None, :], tl.where(probs >= tau, 100.0, 5.0), 0.0)
        weight_sum += tl.sum(weights, 1)
        target_max = tl.maximum(target_max, tl.max(tl.where(col_ok[None, :], probs, -1.0), 1))
    # ... then beta times the removed mass, shared by the weights, onto the target values.
    share = beta * removed / tl.where(weight_sum > 0, weight_sum, 1.0)
    for start in range(target_start, target_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < target_stop
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, col_ok, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        probs = tl.exp(scores - row_max[:, None]) / normaliser[:, None]
        weights = tl.where(col_ok[None, :], tl.where(probs >= tau, 100.0, 5.0), 0.0)
        value = _values(value_ptr, kv_head, cols, col_ok, d, d_ok, stride_vh, stride_vn, stride_vd)
        output += tl.dot(weights * share[:, None], value, input_precision="ieee")
    if RENORMALIZE:
        output = output / (kept + beta * removed)[:, None]

    eligible = row_ok & (target_max > tau)
    tl.store(
        out_ptr + row[:, None] * stride_om + head[:, None] * stride_oh + d[None, :] * stride_od,
        output.to(out_ptr.dtype.element_ty),
        mask=eligible[:, None] & d_ok[None, :],
    )


@triton.jit
def _row_stats_kernel(
    query_ptr,
    key_ptr,
    mask_ptr,
    max_ptr,
    normaliser_ptr,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mm,
    stride_mn,
    group,
    row_start,
    row_count,
    key_start,
    scaling,
    mask_hidden,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
    HALF_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kv_head = tl.program_id(0)
    pair_start = tl.program_id(1) * BLOCK_M
    pairs, head, row, row_ok, q = _row_tile(
        query_ptr, stride_qh, stride_qm, stride_qd, group, row_start, row_count, pair_start,
        HEAD_DIM, BLOCK_M, BLOCK_D, HALF_DOT,
    )  # fmt: skip
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    key_stop = row_start + (tl.minimum(pair_start + BLOCK_M, row_count * group) - 1) // group + 1
    row_max = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    normaliser = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(key_start, key_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, cols < key_stop, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        normaliser = normaliser * tl.exp(row_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), 1)
        row_max = new_max
    index = kv_head * row_count * group + pairs
    tl.store(max_ptr + index, row_max, mask=row_ok)
    tl.store(normaliser_ptr + index, tl.where(normaliser > 0, normaliser, 1.0), mask=row_ok)


@triton.jit
def _column_mass_kernel(
    query_ptr,
    key_ptr,
    mask_ptr,
    max_ptr,
    normaliser_ptr,
    mass_ptr,
    small_ptr,
    large_ptr,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mm,
    stride_mn,
    group,
    row_start,
    row_count,
    key_start,
    key_count,
    scaling,
    mask_hidden,
    small_below,
    large_above,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
    HALF_DOT: tl.constexpr,
    CLASSES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kv_head = tl.program_id(0)
    cols = key_start + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < key_start + key_count
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    mass = tl.zeros((BLOCK_N,), dtype=tl.float32)
    small = tl.zeros((BLOCK_N,), dtype=tl.float32)
    large = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # Rows before the block's first key see none of it: start at the first pair block that has one.
    first_row = tl.maximum(key_start + tl.program_id(1) * BLOCK_N - row_start, 0)
    for pair_start in range((first_row * group) // BLOCK_M * BLOCK_M, row_count * group, BLOCK_M):
        pairs, head, row, row_ok, q = _row_tile(
            query_ptr, stride_qh, stride_qm, stride_qd, group, row_start, row_count, pair_start,
            HEAD_DIM, BLOCK_M, BLOCK_D, HALF_DOT,
        )  # fmt: skip
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, col_ok, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        index = kv_head * row_count * group + pairs
        row_max = tl.load(max_ptr + index, mask=row_ok, other=0.0)
        normaliser = tl.load(normaliser_ptr + index, mask=row_ok, other=1.0)
        probs = tl.exp(scores - row_max[:, None]) / normaliser[:, None]
        mass += tl.sum(probs, 0)
        if CLASSES:
            small += tl.sum(tl.where(probs < small_below, probs, 0.0), 0)
            large += tl.sum(tl.where(probs > large_above, probs, 0.0), 0)
    out = kv_head * key_count + cols - key_start
    tl.store(mass_ptr + out, mass, mask=col_ok)
    if CLASSES:
        tl.store(small_ptr + out, small, mask=col_ok)
        tl.store(large_ptr + out, large, mask=col_ok)


@triton.jit
def _boost_rows_kernel(
    query_ptr,
    key_ptr,
    value_ptr,
    mask_ptr,
    bias_ptr,
    out_ptr,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mm,
    stride_mn,
    stride_om,
    stride_oh,
    stride_od,
    group,
    row_start,
    row_count,
    key_start,
    scaling,
    mask_hidden,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
    HALF_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kv_head = tl.program_id(0)
    pair_start = tl.program_id(1) * BLOCK_M
    pairs, head, row, row_ok, q = _row_tile(
        query_ptr, stride_qh, stride_qm, stride_qd, group, row_start, row_count, pair_start,
        HEAD_DIM, BLOCK_M, BLOCK_D, HALF_DOT,
    )  # fmt: skip
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    key_stop = row_start + (tl.minimum(pair_start + BLOCK_M, row_count * group) - 1) // group + 1
    row_max = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    normaliser = tl.zeros((BLOCK_M,), dtype=tl.float32)
    output = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(key_start, key_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < key_stop
        scores = _scores(
            q, key_ptr, mask_ptr, kv_head, row, row_ok, cols, col_ok, d, d_ok, stride_kh, stride_kn,
            stride_kd, stride_mm, stride_mn, scaling, mask_hidden, MASK, HALF_DOT,
        )  # fmt: skip
        scores += tl.load(bias_ptr + cols - key_start, mask=col_ok, other=0.0)[None, :]
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp(row_max - new_max)
        probs = tl.exp(scores - new_max[:, None])
        normaliser = normaliser * rescale + tl.sum(probs, 1)
        value = _values(value_ptr, kv_head, cols, col_ok, d, d_ok, stride_vh, stride_vn, stride_vd)
        output = output * rescale[:, None] + tl.dot(probs, value, input_precision="ieee")
        row_max = new_max
    output = output / tl.where(normaliser > 0, normaliser, 1.0)[:, None]
    tl.store(
        out_ptr + row[:, None] * stride_om + head[:, None] * stride_oh + d[None, :] * stride_od,
        output.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


# Whether the kernels run under Triton's interpreter: TRITON_INTERPRET=1 when Triton decorated them.
INTERPRETED = isinstance(_edit_rows_kernel, InterpretedFunction)


def _mask_arguments(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int, int, float]:
    """``(tensor, stride over rows, stride over keys, MASK kind, hidden below)`` for a row's mask
    ``(q_len, kv_len)``: None (causal), boolean, or additive (hidden below half the dtype's minimum)."""
    if mask is None:
        return like, 0, 0, MASK_NONE, 0.0
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), mask.stride(0), mask.stride(1), MASK_BOOL, 0.0
    return mask, mask.stride(0), mask.stride(1), MASK_ADDITIVE, torch.finfo(mask.dtype).min / 2


def _settings(query: torch.Tensor, key: torch.Tensor) -> dict[str, Any]:
    """A launch's compile-time settings: the head size and its power-of-two block, the half-precision
    dot (not under the interpreter, see the module docstring) and the block sizes, halved in rows for
    heads over 128 so that the fp32 output tile stays in registers."""
    head_dim = query.shape[-1]
    half = query.dtype in (torch.float16, torch.bfloat16) and key.dtype == query.dtype
    block_d = max(16, triton.next_power_of_2(head_dim))
    return {
        "HEAD_DIM": head_dim,
        "HALF_DOT": half and not INTERPRETED,
        "BLOCK_D": block_d,
        "BLOCK_M": BLOCK_ROWS if block_d <= 128 else max(16, BLOCK_ROWS // 2),
        "BLOCK_N": BLOCK_KEYS,
    }


def _on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it the tensors' (a model split over GPUs)."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None) -> int:
    """The query heads per KV head, after checking the shapes: query ``(heads, q_len, head_dim)``,
    key and value ``(kv_heads, kv_len, head_dim)``."""
    heads, kv_heads = query.shape[0], key.shape[0]
    if heads % kv_heads or query.shape[-1] != key.shape[-1] or (value is not None and value.shape != key.shape):
        raise ValueError(
            f"query {tuple(query.shape)}, key {tuple(key.shape)} and value "
            f"{None if value is None else tuple(value.shape)} do not form grouped attention"
        )
    return heads // kv_heads


def edit_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    output: torch.Tensor,
    *,
    rows: tuple[int, int],
    key_start: int,
    targets: tuple[int, int],
    tau: float,
    beta: float,
    scaling: float,
    renormalize: bool = False,
) -> None:
    """One loop's edit of query rows ``[rows)`` (spec: "The edit"), written in place into ``output``.

    query: ``(heads, q_len, head_dim)``; key, value: ``(kv_heads, kv_len, head_dim)``; mask: the
    row's ``(q_len, kv_len)`` boolean or additive mask, or None (causal); output: ``(q_len, heads,
    head_dim)``, the stock output, whose eligible rows are overwritten. A row sees the keys from
    ``key_start`` (its first real token) up to itself; ``targets``: the target block's columns, in
    the same coordinates as the rows.
    """
    group = _check(query, key, value)
    first, stop = rows
    count = stop - first
    if count <= 0 or targets[1] <= targets[0]:
        return
    mask_tensor, stride_mm, stride_mn, mask_kind, hidden = _mask_arguments(mask, key)
    settings = _settings(query, key)
    grid = (key.shape[0], triton.cdiv(count * group, settings["BLOCK_M"]))
    with _on_device(query):
        _edit_rows_kernel[grid](
            query, key, value, mask_tensor, output,
            *query.stride(), *key.stride(), *value.stride(), stride_mm, stride_mn, *output.stride(),
            group, first, count, key_start, targets[0], targets[1], tau, beta, scaling, hidden,
            MASK=mask_kind, RENORMALIZE=renormalize, **settings,
        )  # fmt: skip


def column_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    rows: tuple[int, int],
    key_start: int,
    key_count: int,
    scaling: float,
    classes: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention mass of query rows ``[rows)`` on each key ``[key_start, key_start + key_count)``,
    summed over the rows and every head: ``(key_count,)`` in float64.

    Shapes as in :func:`edit_rows`. ``classes=(low, high)`` also returns the mass ``(3,)`` (float64)
    carried by weights below ``low``, between, and above ``high`` (the readout's token classes).
    """
    group = _check(query, key, None)
    first, stop = rows
    count = stop - first
    kv_heads = key.shape[0]
    device = query.device
    if count <= 0 or key_count <= 0:
        empty = torch.zeros(max(key_count, 0), dtype=torch.float64, device=device)
        return empty, None if classes is None else torch.zeros(3, dtype=torch.float64, device=device)
    mask_tensor, stride_mm, stride_mn, mask_kind, hidden = _mask_arguments(mask, key)
    settings = _settings(query, key)
    row_max = torch.empty(kv_heads * group * count, dtype=torch.float32, device=device)
    normaliser = torch.empty_like(row_max)
    # Per KV head: the mass on each key, then (with classes) that of the small and the large weights.
    sums = torch.empty(1 if classes is None else 3, kv_heads, key_count, dtype=torch.float32, device=device)
    low, high = classes if classes is not None else (0.0, 0.0)
    with _on_device(query):
        _row_stats_kernel[(kv_heads, triton.cdiv(count * group, settings["BLOCK_M"]))](
            query, key, mask_tensor, row_max, normaliser,
            *query.stride(), *key.stride(), stride_mm, stride_mn,
            group, first, count, key_start, scaling, hidden,
            MASK=mask_kind, **settings,
        )  # fmt: skip
        _column_mass_kernel[(kv_heads, triton.cdiv(key_count, settings["BLOCK_N"]))](
            query, key, mask_tensor, row_max, normaliser, sums[0], sums[min(1, len(sums) - 1)], sums[-1],
            *query.stride(), *key.stride(), stride_mm, stride_mn,
            group, first, count, key_start, key_count, scaling, hidden, low, high,
            MASK=mask_kind, CLASSES=classes is not None, **settings,
        )  # fmt: skip
    per_key = sums.double().sum(dim=1)
    if classes is None:
        return per_key[0], None
    total, small, large = per_key.sum(dim=1)
    return per_key[0], torch.stack([small, total - small - large, large])


def boost_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    output: torch.Tensor,
    *,
    rows: tuple[int, int],
    key_start: int,
    spans: list[tuple[int, int]] | tuple[tuple[int, int], ...],
    boost: float,
    scaling: float,
) -> None:
    """Document reattention of query rows ``[rows)``: their attention on the key ``spans`` (counted
    from ``key_start``) multiplied by ``boost`` and renormalised; every row's output is overwritten
    in ``output``. Shapes as in :func:`edit_rows`."""
    group = _check(query, key, value)
    first, stop = rows
    count = stop - first
    if count <= 0:
        return
    bias = torch.zeros(stop - key_start, dtype=torch.float32, device=query.device)
    for start, end in spans:
        bias[start:end] = math.log(boost)
    mask_tensor, stride_mm, stride_mn, mask_kind, hidden = _mask_arguments(mask, key)
    settings = _settings(query, key)
    grid = (key.shape[0], triton.cdiv(count * group, settings["BLOCK_M"]))
    with _on_device(query):
        _boost_rows_kernel[grid](
            query, key, value, mask_tensor, bias, output,
            *query.stride(), *key.stride(), *value.stride(), stride_mm, stride_mn, *output.stride(),
            group, first, count, key_start, scaling, hidden,
            MASK=mask_kind, **settings,
        )  # fmt: skip
