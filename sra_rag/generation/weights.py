"""Lower-precision weights for CPU decoding: every linear layer's weight in bf16, int8 or int4,
activations (and so attention, which SRA edits in fp32) left in the model's fp32.

A decoding step reads every weight once for one token, so on a CPU its time is the weights' bytes
over the memory bandwidth: fp32 weights de-quantised from a 4-bit GGUF file read four times the
bytes they need. ``weights="bf16"`` halves them (bf16 matrix products, native on CPUs with
AVX512-BF16 or AMX); ``weights="int8"`` quarters them: per-output-channel symmetric int8 with fp32
scales, multiplied by ATen's ``_weight_int8pack_mm`` kernel (the one torchao's and gpt-fast's int8
weight-only modes call on the CPU) on bf16 activations; ``weights="int4"`` reads an eighth:
asymmetric 4-bit codes in groups of 32 input columns (the block size of the GGUF formats the packaged
models ship in), each group with a bf16 scale and offset, multiplied by ATen's
``_weight_int4pack_mm_for_cpu`` (torchao's ``Int4WeightOnlyConfig`` CPU kernel). int4 is a mix, as
llama.cpp's Q4_K_M is: the attention value and feed-forward down projections of half the layers
(:func:`more_bits`) are int8, and so is a layer the 4-bit kernel cannot pack (out_features not a
multiple of 16 or in_features not of 32).

The output layer keeps 8-bit scores under int8 and int4, as llama.cpp's 4-bit mixes keep it at 6 or 8
bits (one wrong score there is a wrong token), at the cost of a 4-bit one (:class:`RescoredOutput`):
it is the largest matrix of a small model (151936 x 896 on Qwen2.5-0.5B, a third of the bytes an
int4 decoding step reads), and ATen's int8 kernel streams it at about half the int4 kernel's rate. Every
token is scored from 4-bit weights, then the :data:`SHORTLIST` best are scored again from the 8-bit
rows, so greedy decoding picks the 8-bit layer's token (its best is among the 4-bit layer's 64
best) and reads the bytes of the 4-bit one. Each layer casts its input to the kernel's
type and its output back, so the residual stream, the norms, the rotary embedding and attention keep
fp32. Measured in docs/bench/cpu-weights.md.
"""

from __future__ import annotations

import torch
from torch import nn

from sra_rag.config import WEIGHT_FORMATS, WeightFormat

INT4_GROUP = 32  # input columns per 4-bit group (one scale and one offset each)
SHORTLIST = 64  # tokens whose output scores RescoredOutput recomputes from 8-bit weights
PRODUCT_ROWS = 16
"""Rows (tokens) from which an int8 layer multiplies through a bf16 product of its codes instead of
ATen's int8 kernel (faster from about 14 rows of a 4864 x 896 layer on 2 cores; 2.5x at 512)."""


MORE_BITS = ("v_proj", "down_proj")
"""The projections int4 keeps at 8 bits in :func:`more_bits` layers (llama.cpp's Q4_K_M gives its
``attn_v`` and ``ffn_down`` 6 or 8 bits there; the packaged Qwen2.5-Coder GGUF keeps them at 6-8 bits
in 12 of its 24 layers too, a different 12)."""


def more_bits(layer: int, layers: int) -> bool:
    """Whether decoder layer ``layer`` of ``layers`` is one whose :data:`MORE_BITS` projections int4
    keeps at 8 bits: llama.cpp's ``use_more_bits``, the first and last eighth of the layers and
    every third one between (12 of Qwen2.5-0.5B's 24)."""
    eighth = layers // 8
    return layer < eighth or layer >= 7 * layers // 8 or (layer - eighth) % 3 == 2


def _int4_keeps_8_bits(name: str, layers: int) -> bool:
    """Whether the linear layer ``name`` (``model.layers.5.mlp.down_proj``) is int8 under int4."""
    parts = name.split(".")
    if parts[-1] not in MORE_BITS or "layers" not in parts[:-1]:
        return False
    index = parts.index("layers") + 1
    return index < len(parts) and parts[index].isdigit() and more_bits(int(parts[index]), layers)


def int4_packable(out_features: int, in_features: int) -> bool:
    """Whether ATen's CPU 4-bit kernel can pack a weight of this shape."""
    return out_features % 16 == 0 and in_features % INT4_GROUP == 0


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed codes, scales_and_zeros)`` of an fp32 ``(out, in)`` weight: per group of
    :data:`INT4_GROUP` input columns, 16 evenly spaced levels from the group's minimum to its maximum.
    ``scales_and_zeros`` is ``(in / group, out, 2)`` bf16: each group's step and its value at code 8,
    the layout ``_weight_int4pack_mm_for_cpu`` reads (``w = (code - 8) * step + zero``)."""
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    step = ((high - low) / 15.0).clamp(min=1e-12)
    codes = ((groups - low) / step).round().clamp(0, 15).to(torch.int32).reshape(out_features, in_features)
    zero = low + 8.0 * step
    scales_and_zeros = torch.stack([step.squeeze(-1).t(), zero.squeeze(-1).t()], dim=-1)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return packed, scales_and_zeros.contiguous().to(torch.bfloat16)


class LowPrecisionLinear(nn.Module):
    """A linear layer whose weight is bf16, int8 with one scale per output channel, or int4 in groups
    (:func:`quantize_int4`).

    ``forward``: ``x (..., in_features)`` in any float dtype to ``(..., out_features)`` in ``x``'s dtype.
    """

    weight: torch.Tensor
    scales: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, weights: WeightFormat) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weights = weights
        weight = linear.weight.detach().float()
        if weights == "bf16":
            self.register_buffer("weight", weight.to(torch.bfloat16))
            self.register_buffer("scales", None)
        elif weights == "int8":
            scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
            self.register_buffer("weight", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(torch.bfloat16))
        elif weights == "int4":
            if not int4_packable(self.out_features, self.in_features):
                raise ValueError(
                    f"int4 packs weights with out_features a multiple of 16 and in_features of {INT4_GROUP}, "
                    f"got {self.out_features}x{self.in_features}; use int8 for this layer"
                )
            packed, scales_and_zeros = quantize_int4(weight)
            self.register_buffer("weight", packed)
            self.register_buffer("scales", scales_and_zeros)
        else:
            raise ValueError(f"LowPrecisionLinear takes 'bf16', 'int8' or 'int4' weights, got {weights!r}")
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.weights == "int8" and self.scales is not None and flat.shape[0] >= PRODUCT_ROWS:
            # ATen's int8 kernel re-reads the weight for every row (its time grows with the rows), so
            # a prompt's rows go through one bf16 product of the codes (exact in bf16), scaled in fp32
            out = torch.nn.functional.linear(flat, self.weight.to(torch.bfloat16)).float() * self.scales.float()
        elif self.weights == "int8":
            out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.weight, self.scales)
        elif self.weights == "int4":
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.contiguous(), self.weight, INT4_GROUP, self.scales)
        else:
            out = torch.nn.functional.linear(flat, self.weight)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.weights}"


class RescoredOutput(nn.Module):
    """An output layer with int8 scores for its best tokens at the cost of an int4 layer: every
    token's score from 4-bit weights, then the ``shortlist`` best tokens per row scored again from
    8-bit weights (per-output-channel, as :class:`LowPrecisionLinear` ``("int8")``), their 8-bit
    scores in place of the 4-bit ones. Greedy decoding so picks the 8-bit layer's token whenever
    it is among the 4-bit layer's ``shortlist`` best; the other tokens keep 4-bit scores.

    ``forward``: ``x (..., in_features)`` to ``(..., out_features)`` in ``x``'s dtype.
    """

    def __init__(self, linear: nn.Linear, shortlist: int = SHORTLIST) -> None:
        super().__init__()
        if shortlist < 1:
            raise ValueError(f"shortlist must be at least 1 token, got {shortlist}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shortlist = min(shortlist, self.out_features)
        self.coarse = LowPrecisionLinear(linear, "int4")
        self.fine = LowPrecisionLinear(linear, "int8")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.coarse(x).reshape(-1, self.out_features)
        best = scores.topk(self.shortlist, dim=-1).indices  # (rows, shortlist)
        inputs = x.reshape(-1, self.in_features).to(torch.bfloat16).float()
        rows = self.fine.weight[best].float()  # (rows, shortlist, in_features)
        scales = self.fine.scales
        assert scales is not None  # an int8 layer always has them
        exact = torch.einsum("ri,rki->rk", inputs, rows) * scales[best].float()
        exact = exact.to(torch.bfloat16).to(scores.dtype)  # the int8 kernel's output dtype
        if self.fine.bias is not None:
            exact = exact + self.fine.bias[best].to(scores.dtype)
        return scores.scatter(-1, best, exact).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, shortlist={self.shortlist}"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): the int8, int4 and bf16
    formats compute on bf16 activations, which other CPUs emulate slowly."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_weights(device: torch.device, dtype: torch.dtype, preferred: WeightFormat | None = None) -> WeightFormat:
    """The weight format of a model loaded without ``weights=``: the model's ``preferred`` format
    (:attr:`sra_rag.config.ModelDefaults.weights`, chosen on held-out answers against fp32) for an
    fp32 model on a CPU with :func:`native_bf16`, else fp32."""
    if preferred is None or device.type != "cpu" or dtype != torch.float32 or not native_bf16():
        return "fp32"
    return preferred


def apply_weights(model: nn.Module, weights: WeightFormat) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of an fp32 ``model`` (its output layer included: a
    tied embedding keeps its fp32 copy) by a :class:`LowPrecisionLinear` of ``weights``; "fp32"
    leaves the model as it is. Under "int8" and "int4" the output layer is a :class:`RescoredOutput`
    where the 4-bit kernel can pack it (else int8); under "int4" the :data:`MORE_BITS` projections of
    :func:`more_bits` layers and the other layers it cannot pack are int8. Returns the model."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {list(WEIGHT_FORMATS)}, got {weights!r}")
    if weights == "fp32":
        return model
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    layers = int(getattr(text_config, "num_hidden_layers", 0) or 0)
    for name, linear in targets:
        if linear.weight.dtype != torch.float32:
            raise ValueError(f"weights={weights!r} converts fp32 models; {name} is {linear.weight.dtype}")
        packable = int4_packable(linear.out_features, linear.in_features)
        layer: nn.Module
        if linear is output and weights in ("int8", "int4") and packable:
            layer = RescoredOutput(linear)
        else:
            eight = weights == "int4" and (not packable or _int4_keeps_8_bits(name, layers))
            layer = LowPrecisionLinear(linear, "int8" if eight else weights)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        # The output layer is no longer the embedding's weight; keep transformers from re-tying them.
        config.tie_word_embeddings = False
    return model
