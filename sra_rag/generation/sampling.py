"""Choosing the next token of one request from transformers' ``LogitsProcessor``s.

The order is transformers' own (``GenerationMixin._get_logits_processor``): the repetition penalty,
then the request's extra processors (e.g. a grammar), then, when sampling, the warpers temperature,
top-k, top-p and min-p. Every processor is called with the request's full ids (prompt and generated
tokens), as their contract says. Each request draws from its own ``torch.Generator``, so a seeded
request samples the same tokens alone and inside a batch.
"""

from __future__ import annotations

import random

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sra_rag.generation.request import LogitsProcessorLike, SamplingSettings


def build_processors(
    settings: SamplingSettings, extra: tuple[LogitsProcessorLike, ...] = (), prompt_tokens: int = 0
) -> LogitsProcessorList:
    """The processors of one request, in transformers' order (warpers only when sampling);
    ``prompt_tokens``: the prompt's length, left out of the repetition penalty when
    ``settings.penalize_prompt`` is False."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        ignored = None if settings.penalize_prompt else prompt_tokens
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty, prompt_ignore_length=ignored))
    processors.extend(extra)
    if not settings.greedy:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
        if settings.min_p > 0.0:
            processors.append(MinPLogitsWarper(settings.min_p))
    return processors


class LoopGuard:
    """Detects a reply that loops: :meth:`push` each generated token; it returns True once the newest
    ``span`` tokens equal an earlier span of the reply (the prompt is not looked at, so copying the
    sources never counts). O(1) per token: the spans seen are kept as a set of tuples.

    A per-token repetition penalty punishes every digit or word piece that recurs, so it turns
    copied numbers into others ("7007" into "7012"); this guard changes no token, it only ends a
    reply that has started to repeat itself."""

    def __init__(self, span: int) -> None:
        if span < 1:
            raise ValueError(f"a loop guard needs a span of at least 1 token, got {span}")
        self.span = span
        self._tokens: list[int] = []
        self._seen: set[tuple[int, ...]] = set()

    def push(self, token: int) -> bool:
        self._tokens.append(token)
        if len(self._tokens) < self.span:
            return False
        newest = tuple(self._tokens[-self.span :])
        if newest in self._seen:
            return True
        self._seen.add(newest)
        return False


class InvalidScoresError(FloatingPointError):
    """The next-token scores hold NaN or +inf, or rule out every token: no token can be chosen."""


def check_scores(scores: torch.Tensor) -> None:
    """Raise :class:`InvalidScoresError` unless ``scores (rows, vocab)`` can be chosen from: an argmax
    over NaN or +inf is meaningless (a run of special tokens, an empty reply with counted tokens) and
    a softmax over them is NaN."""
    if bool(torch.isnan(scores).any()) or bool(torch.isposinf(scores).any()):
        raise InvalidScoresError("the next-token scores are not finite (NaN or inf); the request was stopped")
    if not bool(torch.isfinite(scores).any(-1).all()):
        raise InvalidScoresError("the next-token scores rule out every token; the request was stopped")


class Sampler:
    """Picks one request's tokens: its processors and its random generator."""

    def __init__(
        self,
        settings: SamplingSettings,
        extra: tuple[LogitsProcessorLike, ...],
        device: torch.device,
        prompt_tokens: int = 0,
    ) -> None:
        self.greedy = settings.greedy
        self.processors = build_processors(settings, extra, prompt_tokens)
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(settings.seed if settings.seed is not None else random.getrandbits(63))

    @property
    def needs_ids(self) -> bool:
        """Whether choosing reads anything but the logits (else the argmax of the batch will do)."""
        return bool(self.processors) or not self.greedy

    def choose(self, input_ids: torch.Tensor, logits: torch.Tensor) -> int:
        """The next token. input_ids: ``(1, length)`` the full sequence so far; logits: ``(1, vocab)``
        in fp32, the model's raw scores for the next token."""
        scores = self.processors(input_ids, logits) if self.processors else logits
        check_scores(scores)
        if self.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
