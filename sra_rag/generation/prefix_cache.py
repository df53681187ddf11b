"""Automatic prefix caching: the KV of prompt prefixes already run, kept for the next request that
starts the same way (a follow-up question over the same retrieved documents, one system prompt
shared by many users, the ranking and answer passes of attention-ordered stuffing).

The design is vLLM's automatic prefix caching on a small scale. A prompt is cut into blocks of
``block_tokens`` tokens; a block is found by its parent block and its own tokens (a chain of exact
keys, so two prefixes never collide), and holds the KV of its tokens at every layer, one tensor
``(layers, 2, kv_heads, block_tokens, head_dim)`` (2: keys, values). A request takes the longest
chain of whole blocks that matches its prompt and prefills only the rest; a prefilled request leaves
its blocks behind. The blocks' bytes never exceed ``budget_bytes``: the least recently used block
that no other block continues is evicted first.

Only stock KV is ever stored or reused, so the cache never changes a result. SRA edits some rows of a
prompt (:mod:`sra_rag.schedule`), and an edited row changes the KV of every later position at the
next layers; the rows before a request's first edited row are stock attention at every layer
(:func:`stock_prefix`). A request stores at most that prefix, and takes from the cache at most its
own: the rows it edits, or reads with a readout, are always prefilled by it, after the cached prefix
(the attention function's ``sra_suffix``). With the question tail and the paper's inner loop off
(the ``recommended`` and ``documents`` presets) that prefix is everything before the question; the
paper's inner loop edits document rows from early on, so its requests share only their first tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sra_rag.generation.request import Request
from sra_rag.schedule import layer_edits

DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
"""The default budget of an engine's prefix cache: 1 GiB (about 22k tokens of SmolLM2-135M's fp32 KV,
43k of Qwen2.5-0.5B's)."""

DEFAULT_BLOCK_TOKENS = 64
"""Tokens per cached block: a request recomputes at most this many tokens of a cached prefix."""


def stock_prefix(request: Request, num_layers: int) -> int:
    """Tokens at the start of ``request``'s prompt that no SRA edit and no readout touches: their KV is
    stock attention at every layer, equal for any request that starts with the same tokens.

    The first row any layer's edit changes (:func:`~sra_rag.schedule.layer_edits`), and the question's
    first token when the request records a readout (document reattention needs one too); the
    prompt's length when there is neither.
    """
    n = request.num_prompt_tokens
    layout = request.layout
    question = None if layout is None else layout.question_start
    first = n
    for layer in range(num_layers):
        for edit in layer_edits(n, layer, num_layers, request.sra, question):
            first = min(first, edit.row_start)
    if request.readout is not None and question is not None:
        first = min(first, question)
    return first


@dataclass(eq=False)
class _Block:
    """One cached block: ``tokens`` after the chain ``parent``; ``kv (layers, 2, kv_heads, tokens, head_dim)``."""

    key: tuple[int, tuple[int, ...]]  # (the parent's id, 0 for the first block; this block's tokens)
    id: int
    parent: _Block | None
    kv: torch.Tensor
    children: int = 0


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made. ``lookups``: prefills that asked; ``hits``: those that
    reused at least one block; ``prompt_tokens`` / ``cached_tokens``: prompt tokens those prefills
    had / took from the cache; ``bytes``, ``blocks``: held now; ``evictions``: blocks dropped."""

    lookups: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    bytes: int = 0
    blocks: int = 0
    evictions: int = 0
    budget_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens served from the cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(eq=False)
class PrefixCache:
    """Cached KV blocks keyed by their token prefix, at most ``budget_bytes`` of them, LRU-evicted.

    Used by one thread (the scheduler's worker); ``stats`` may be read from any thread.
    """

    budget_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    _blocks: OrderedDict[tuple[int, tuple[int, ...]], _Block] = field(default_factory=OrderedDict)
    _next_id: int = 1

    def __post_init__(self) -> None:
        for name, value in (("budget_bytes", self.budget_bytes), ("block_tokens", self.block_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.stats.budget_bytes = self.budget_bytes

    def _chunks(self, ids: Sequence[int], limit: int) -> list[tuple[int, ...]]:
        """The whole blocks of ``ids[:limit]``."""
        whole = max(0, min(limit, len(ids))) // self.block_tokens
        return [tuple(ids[i * self.block_tokens : (i + 1) * self.block_tokens]) for i in range(whole)]

    def _chain(self, ids: Sequence[int], limit: int) -> list[_Block]:
        """The cached blocks that continue each other from the start of ``ids[:limit]``, marked used."""
        chain: list[_Block] = []
        parent = 0
        for tokens in self._chunks(ids, limit):
            block = self._blocks.get((parent, tokens))
            if block is None:
                break
            self._blocks.move_to_end(block.key)
            chain.append(block)
            parent = block.id
        return chain

    def lookup(self, ids: Sequence[int], limit: int) -> torch.Tensor | None:
        """The KV ``(layers, 2, kv_heads, tokens, head_dim)`` of the longest cached prefix of ``ids``
        of at most ``limit`` tokens (whole blocks), or None. Counts the lookup in :attr:`stats`."""
        chain = self._chain(ids, limit)
        self.stats.lookups += 1
        self.stats.prompt_tokens += len(ids)
        if not chain:
            return None
        self.stats.hits += 1
        self.stats.cached_tokens += len(chain) * self.block_tokens
        return torch.cat([block.kv for block in chain], dim=3)

    def insert(self, ids: Sequence[int], limit: int, kv_of: Callable[[int, int], torch.Tensor]) -> int:
        """Keep the blocks of ``ids[:limit]`` that are not cached yet; ``kv_of(start, stop)`` gives the
        KV ``(layers, 2, kv_heads, stop - start, head_dim)`` of tokens ``[start, stop)`` (a copy: the
        cache keeps it). Returns the blocks added (fewer when the budget is full of this chain)."""
        chunks = self._chunks(ids, limit)
        chain = self._chain(ids, limit)
        parent = chain[-1] if chain else None
        added = 0
        for index in range(len(chain), len(chunks)):
            start = index * self.block_tokens
            kv = kv_of(start, start + self.block_tokens).contiguous()
            size = kv.numel() * kv.element_size()
            if not self._make_room(size, protected=parent):
                break
            block = _Block((parent.id if parent else 0, chunks[index]), self._next_id, parent, kv)
            self._next_id += 1
            self._blocks[block.key] = block
            if parent is not None:
                parent.children += 1
            self.stats.bytes += size
            self.stats.blocks += 1
            parent = block
            added += 1
        return added

    def _make_room(self, size: int, protected: _Block | None) -> bool:
        """Evict least recently used leaf blocks until ``size`` more bytes fit the budget; never
        ``protected`` or its ancestors (the chain being extended). Whether it fits."""
        keep = set()
        while protected is not None:
            keep.add(protected.id)
            protected = protected.parent
        while self.stats.bytes + size > self.budget_bytes:
            victim = next((b for b in self._blocks.values() if b.children == 0 and b.id not in keep), None)
            if victim is None:
                return False
            del self._blocks[victim.key]
            if victim.parent is not None:
                victim.parent.children -= 1
            self.stats.bytes -= victim.kv.numel() * victim.kv.element_size()
            self.stats.blocks -= 1
            self.stats.evictions += 1
        return True

    def clear(self) -> None:
        """Drop every block (the counters of lookups and hits stay)."""
        self._blocks.clear()
        self.stats.bytes = 0
        self.stats.blocks = 0
