"""Which implementation computes SRA's edited rows: fused Triton kernels or the chunked torch path.

``SRA_RAG_KERNEL`` picks it for every call: unset (or ``auto``) uses :data:`CUDA_DEFAULT` on CUDA
tensors when Triton is installed and the chunked torch path everywhere else; ``triton`` forces the
kernels (:mod:`sra_rag.kernels.triton_rows`) on any device (a CPU tensor needs Triton's
interpreter, ``TRITON_INTERPRET=1`` set before Triton is first imported); ``torch`` forces the torch
path. Either way the literal reference (``attn_implementation="sra_reference"``) is the judge.

Triton is imported lazily: CUDA builds of torch ship it, CPU builds do not, and the core imports
without it.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from types import ModuleType
from typing import Literal

import torch

KERNEL_ENV = "SRA_RAG_KERNEL"
Kernel = Literal["triton", "torch"]
CHOICES = ("auto", "triton", "torch")
CUDA_DEFAULT: Kernel = "torch"
"""What ``auto`` runs on CUDA. The kernels are checked against the literal reference under Triton's
interpreter only (which runs their bf16/fp16 products in fp32); until ``make test-cuda`` has passed
on a GPU they are opt-in (``SRA_RAG_KERNEL=triton``) and this stays the torch path."""


@cache
def triton_installed() -> bool:
    """Whether Triton can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module blocked with None
        return False


def load_triton_rows() -> ModuleType:
    """:mod:`sra_rag.kernels.triton_rows`, imported on first use, with an error that says what to
    install where Triton is missing."""
    if not triton_installed():
        raise ImportError(
            f"{KERNEL_ENV}=triton needs Triton: `pip install triton` (Linux; CUDA builds of torch ship it), "
            f"or unset {KERNEL_ENV} to use the torch path"
        )
    from sra_rag.kernels import triton_rows as module

    return module


def kernel_for(device: torch.device) -> Kernel:
    """The implementation of SRA's edited rows for tensors on ``device``, from ``SRA_RAG_KERNEL``
    (see the module docstring). Raises ValueError for an unknown value, ImportError where
    ``triton`` is forced but not installed, and RuntimeError where it is forced on a device that
    Triton cannot run on (a CPU without ``TRITON_INTERPRET=1``)."""
    choice = os.environ.get(KERNEL_ENV, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{KERNEL_ENV}={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "torch":
        return "torch"
    if choice == "auto":
        return CUDA_DEFAULT if device.type == "cuda" and triton_installed() else "torch"
    module = load_triton_rows()
    if device.type != "cuda" and not module.INTERPRETED:
        raise RuntimeError(
            f"{KERNEL_ENV}=triton on {device.type} tensors runs under Triton's interpreter only: set "
            "TRITON_INTERPRET=1 before Triton is first imported (or use a CUDA device)"
        )
    return "triton"
