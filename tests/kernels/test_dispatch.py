"""Which implementation computes SRA's edited rows (``SRA_RAG_KERNEL``), and the core without Triton."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sra_rag.kernels as kernels
from sra_rag.kernels import kernel_for

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def test_auto_uses_the_cuda_default_where_triton_is_installed(monkeypatch):
    monkeypatch.delenv("SRA_RAG_KERNEL", raising=False)
    monkeypatch.setattr(kernels, "triton_installed", lambda: True)
    monkeypatch.setattr(kernels, "CUDA_DEFAULT", "triton")
    assert (kernel_for(CUDA), kernel_for(CPU)) == ("triton", "torch")
    monkeypatch.setenv("SRA_RAG_KERNEL", "auto")
    assert kernel_for(CUDA) == "triton"
    monkeypatch.setattr(kernels, "triton_installed", lambda: False)
    assert kernel_for(CUDA) == "torch"
    monkeypatch.undo()
    # Not yet run on a GPU: the kernels stay opt-in there.
    assert kernels.CUDA_DEFAULT == "torch"


def test_torch_is_forced_on_any_device(monkeypatch):
    monkeypatch.setenv("SRA_RAG_KERNEL", "torch")
    monkeypatch.setattr(kernels, "triton_installed", lambda: True)
    assert (kernel_for(CUDA), kernel_for(CPU)) == ("torch", "torch")


def test_triton_is_forced_with_clear_errors(monkeypatch):
    monkeypatch.setenv("SRA_RAG_KERNEL", " Triton ")
    monkeypatch.setattr(kernels, "load_triton_rows", lambda: SimpleNamespace(INTERPRETED=True))
    assert (kernel_for(CUDA), kernel_for(CPU)) == ("triton", "triton")
    monkeypatch.setattr(kernels, "load_triton_rows", lambda: SimpleNamespace(INTERPRETED=False))
    assert kernel_for(CUDA) == "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernel_for(CPU)
    monkeypatch.undo()
    monkeypatch.setenv("SRA_RAG_KERNEL", "triton")
    monkeypatch.setattr(kernels, "triton_installed", lambda: False)
    with pytest.raises(ImportError, match="pip install triton"):
        kernel_for(CUDA)
    monkeypatch.setenv("SRA_RAG_KERNEL", "cuda")
    with pytest.raises(ValueError, match="auto, triton, torch"):
        kernel_for(CPU)


def test_the_core_runs_without_triton():
    """A Python without Triton (CPU builds of torch do not ship it) imports the core and runs SRA on the
    torch path; forcing the kernels there says what to install."""
    script = textwrap.dedent(
        """
        import os, sys
        sys.modules["triton"] = None  # import triton now fails, as where it is not installed
        import torch
        from sra_rag import SRAConfig
        from sra_rag.attention import sra_attention_forward
        from tests.test_attention import module, random_qkv
        config = SRAConfig(begin_length=4, tail_length=12)
        output, _ = sra_attention_forward(module(2), *random_qkv(n=64), None, sra_config=config)
        assert output.isfinite().all() and "sra_rag.kernels.triton_rows" not in sys.modules
        os.environ["SRA_RAG_KERNEL"] = "triton"
        try:
            sra_attention_forward(module(2), *random_qkv(n=64), None, sra_config=config)
        except ImportError as error:
            print(error)
        """
    )
    root = Path(__file__).parents[2]
    environment = {"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "SRA_RAG_KERNEL=triton needs Triton: `pip install triton`" in result.stdout
