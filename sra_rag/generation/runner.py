"""The model runner: the forward passes of the scheduler's batches and the KV caches they fill.

A prefill runs a group of prompts left-padded into a new cache, each row with its own SRA settings,
layout and readout recorder (``sra_config``, ``sra_layout`` and ``sra_readout`` hold one entry per
row); a decoding step feeds one token per row at the row's own position. Caches of plain
``DynamicLayer`` s can be narrowed to some of their rows and merged with another batch's (both
left-padded to the longer length); what to run, and when, is the scheduler's business.

With a prefix cache (:mod:`sra_rag.generation.prefix_cache`), :meth:`ModelRunner.prefill_cached`
prefills one prompt after the cached KV of its first tokens, and :meth:`ModelRunner.row_kv` copies a
prefilled row's KV out for the cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from sra_rag.generation.request import Request
from sra_rag.readout.recorder import ReadoutComplete, ReadoutRecorder


@dataclass(eq=False)
class PaddedCache:
    """A KV cache of rows left-padded to a common length: row ``i``'s real tokens are the last
    ``length - pads[i]`` positions."""

    cache: DynamicCache
    pads: list[int]

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    @property
    def real_tokens(self) -> int:
        return sum(self.length - pad for pad in self.pads)


@dataclass
class Prefill:
    """What a prefill returns: the model's outputs (None when a read-only pass stopped early), the
    cache it filled and the seconds it took."""

    outputs: Any
    kv: PaddedCache
    seconds: float


class ModelRunner:
    """Runs one model's forward passes. ``pad_token_id`` fills the left padding of a batch."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.batchable = batchable(model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prefill(self, requests: Sequence[Request], recorders: Sequence[ReadoutRecorder | None]) -> Prefill:
        """The prefill forward pass of ``requests``, left-padded into a new cache, recording each
        row's readout; the logits of each row's last position only."""
        longest = max(request.num_prompt_tokens for request in requests)
        pads = [longest - request.num_prompt_tokens for request in requests]
        input_ids = torch.full((len(requests), longest), self.pad_token_id, dtype=torch.long)
        for index, request in enumerate(requests):
            input_ids[index, pads[index] :] = torch.tensor(request.prompt_ids)
        padding: dict[str, torch.Tensor] = {}
        if any(pads):
            offsets = torch.tensor(pads)[:, None]
            positions = torch.arange(longest)[None] - offsets
            padding["attention_mask"] = (positions >= 0).long().to(self.device)
            padding["position_ids"] = positions.clamp(min=0).to(self.device)
        cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()
        outputs = None
        with torch.inference_mode(), contextlib.suppress(ReadoutComplete):
            outputs = self.model(
                input_ids=input_ids.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                sra_config=[request.sra for request in requests],
                sra_layout=[request.layout for request in requests],
                sra_readout=list(recorders),
                **padding,
            )
        return Prefill(outputs, PaddedCache(cache, pads), time.perf_counter() - start)

    def prefill_cached(self, request: Request, recorder: ReadoutRecorder | None, prefix: torch.Tensor) -> Prefill:
        """The prefill of one ``request`` whose first ``k`` tokens' KV is ``prefix (layers, 2,
        kv_heads, k, head_dim)`` (from the prefix cache; ``k`` < the prompt's length): only the other
        tokens run, at positions ``k..n-1``, and SRA edits their rows as a full prefill would
        (``sra_suffix``). The new cache starts from a copy of ``prefix``."""
        cached = prefix.shape[3]
        cache = DynamicCache(config=self.model.config)
        for layer in range(prefix.shape[0]):
            # DynamicLayer.update concatenates, so the cache gets a copy and the blocks stay as they are
            cache.update(prefix[layer, 0][None], prefix[layer, 1][None], layer)
        suffix = torch.tensor([request.prompt_ids[cached:]], device=self.device)
        positions = torch.arange(cached, request.num_prompt_tokens, device=self.device)[None]
        start = time.perf_counter()
        outputs = None
        with torch.inference_mode(), contextlib.suppress(ReadoutComplete):
            outputs = self.model(
                input_ids=suffix,
                cache=cache,
                use_cache=True,
                position_ids=positions,
                logits_to_keep=1,
                sra_config=[request.sra],
                sra_layout=[request.layout],
                sra_readout=[recorder],
                sra_suffix=True,
            )
        return Prefill(outputs, PaddedCache(cache, [0]), time.perf_counter() - start)

    def row_kv(self, kv: PaddedCache, row: int, start: int, stop: int) -> torch.Tensor:
        """A copy of row ``row``'s KV at its real tokens ``[start, stop)``, every layer:
        ``(layers, 2, kv_heads, stop - start, head_dim)``."""
        first = kv.pads[row] + start
        last = first + (stop - start)
        return torch.stack(
            [
                torch.stack([layer.keys[row, :, first:last], layer.values[row, :, first:last]])
                for layer in kv.cache.layers
            ]
        )

    def decode(self, kv: PaddedCache, tokens: Sequence[int]) -> torch.Tensor:
        """One decoding step: row ``i`` feeds ``tokens[i]`` at its own next position. Returns the
        next-token logits ``(rows, vocab)`` in fp32; the cache grows by one position."""
        length = kv.length
        input_ids = torch.tensor([[token] for token in tokens], device=self.device)
        positions = torch.tensor([[length - pad] for pad in kv.pads], device=self.device)
        padding: dict[str, torch.Tensor] = {}
        if any(kv.pads):
            columns = torch.arange(length + 1)[None]
            padding["attention_mask"] = (columns >= torch.tensor(kv.pads)[:, None]).long().to(self.device)
        with torch.inference_mode():
            outputs = self.model(input_ids=input_ids, cache=kv.cache, use_cache=True, position_ids=positions, **padding)
            return outputs.logits[:, -1, :].float()

    def select(self, kv: PaddedCache, rows: Sequence[int]) -> None:
        """Narrow ``kv`` in place to ``rows`` (indices, in order), dropping the padding none of them needs."""
        pads = [kv.pads[i] for i in rows]
        trim = min(pads)
        selected = torch.tensor(list(rows), device=self.device)
        for layer in kv.cache.layers:
            if layer.is_initialized:
                layer.keys = layer.keys[selected, :, trim:]
                layer.values = layer.values[selected, :, trim:]
        kv.pads = [pad - trim for pad in pads]

    def merge(self, kv: PaddedCache, joining: PaddedCache) -> None:
        """Append ``joining``'s rows to ``kv`` in place: both caches are left-padded to the longer
        length and concatenated on the batch dimension."""
        length = max(kv.length, joining.length)
        grow, grow_joining = length - kv.length, length - joining.length
        for layer, other in zip(kv.cache.layers, joining.cache.layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, grow), _left_pad(other.keys, grow_joining)])
            layer.values = torch.cat([_left_pad(layer.values, grow), _left_pad(other.values, grow_joining)])
        kv.pads = [pad + grow for pad in kv.pads] + [pad + grow_joining for pad in joining.pads]


def batchable(model: PreTrainedModel) -> bool:
    """Whether the model's cache is made of plain ``DynamicLayer`` s, which can be left-padded and
    concatenated on the batch dimension (sliding-window layers, for one, cannot)."""
    cache = DynamicCache(config=model.config)
    if not cache.layers:
        return getattr(cache, "layer_class_to_replicate", None) is DynamicLayer
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(states: torch.Tensor, size: int) -> torch.Tensor:
    """``states (batch, heads, length, head_dim)`` with ``size`` zero positions in front."""
    if size == 0:
        return states
    return torch.cat([states.new_zeros(*states.shape[:2], size, states.shape[3]), states], dim=2)
