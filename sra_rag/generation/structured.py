"""Structured output: constrain generation to a JSON schema with xgrammar.

A JSON schema (a dict, a pydantic model class, or ``True`` for any JSON object, OpenAI's
``json_object`` mode) is validated once, compiled by xgrammar for the model's tokenizer, and applied
as a transformers :class:`~transformers.LogitsProcessor`: at every step, tokens that cannot continue
valid JSON get ``-inf``; once the JSON is complete only the stop tokens remain, so generation ends
there. ::

    compiler = JsonSchemaCompiler(tokenizer, vocab_size=model.config.vocab_size)
    processor = compiler.processor(MyModel)           # one processor per request
    model.generate(input_ids, logits_processor=[processor], max_new_tokens=64)

The processor follows transformers' contract: it reads the full input ids (prompt and tokens
generated so far) and advances one grammar matcher per row from the tokens it has not seen yet, so it
works inside ``model.generate`` and inside a decoding loop that hands it one request's row.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
import xgrammar
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase
from transformers.generation.logits_process import LogitsProcessor

JsonSchema: TypeAlias = Mapping[str, Any] | type[BaseModel] | bool
"""What ``json_schema=`` accepts: a JSON Schema dict, a pydantic model class, or ``True`` for any
JSON object."""

_XGRAMMAR_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
"""The time stamp and C++ source location that start xgrammar's error messages."""

_CONTROL = re.compile(rb"[\x00-\x1f]")

_TEXT = xgrammar.Grammar.from_ebnf("root ::= [^{] [^]*")
"""Plain text that does not begin with ``{``: the other branch of a reply that may be text or JSON."""

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
"""The schema ``json_schema=True`` stands for: one JSON object with any keys (OpenAI's JSON mode)."""


def json_schema_dict(schema: JsonSchema) -> dict[str, Any]:
    """Validate ``schema`` and return it as a JSON Schema dict.

    ``True`` is :data:`ANY_JSON_OBJECT`; a pydantic model class gives its ``model_json_schema()``;
    a mapping must be a valid JSON Schema (checked against its declared draft, 2020-12 by default)
    made of JSON values. Anything else is a ``TypeError``, an invalid schema a ``ValueError``.
    """
    if schema is True:
        return dict(ANY_JSON_OBJECT)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if not isinstance(schema, Mapping):
        raise TypeError(
            f"json_schema must be a JSON Schema dict, a pydantic model class or True (any JSON object), got {schema!r}"
        )
    try:
        plain = json.loads(json.dumps(schema))
    except (TypeError, ValueError) as error:
        message = f"json_schema must hold only JSON values (str, number, bool, None, list, dict): {error}"
        raise TypeError(message) from None
    try:
        validator_for(plain).check_schema(plain)
    except SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise ValueError(f"json_schema is not a valid JSON Schema at {where}: {error.message}") from None
    return dict(plain)


class JsonSchemaCompiler:
    """Compiles JSON schemas for one tokenizer into :class:`JsonSchemaLogitsProcessor` objects.

    ``vocab_size`` is the width of the model's logits (``model.config.vocab_size``; it may exceed
    the tokenizer's vocabulary), ``stop_token_ids`` the tokens that end generation (default: the
    tokenizer's EOS). The vocabulary is read on first use (a fraction of a second), and compiled
    grammars are cached by xgrammar, so a schema used again costs nothing. Thread-safe; keep one per
    tokenizer.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        vocab_size: int | None = None,
        stop_token_ids: Iterable[int] | None = None,
    ) -> None:
        stops = sorted({int(token) for token in stop_token_ids or ()} or {tokenizer.eos_token_id} - {None})
        if not stops:
            raise ValueError("The tokenizer has no EOS token; pass stop_token_ids=[...] (the tokens that end a reply).")
        self.tokenizer = tokenizer
        self.stop_token_ids: tuple[int, ...] = tuple(stops)
        self._vocab_size = vocab_size
        self._lock = threading.Lock()
        self._vocabulary: _Vocabulary | None = None

    @property
    def vocabulary(self) -> _Vocabulary:
        """The tokenizer as xgrammar reads it, and the token sets masked besides the grammar."""
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary = _Vocabulary.read(self.tokenizer, self._vocab_size, self.stop_token_ids)
            return self._vocabulary

    def compile(self, schema: JsonSchema, *, allow_text: bool = False) -> xgrammar.CompiledGrammar:
        """Validate ``schema`` (see :func:`json_schema_dict`) and compile it (cached). With
        ``allow_text``, the grammar also admits plain text that does not begin with ``{``."""
        plain = json.dumps(json_schema_dict(schema))
        compiler = self.vocabulary.compiler
        try:
            # One line, ", " and ": " between items: a small model given free whitespace may emit
            # newlines until max_new_tokens (vLLM's --disable-any-whitespace addresses the same).
            if not allow_text:
                return compiler.compile_json_schema(plain, any_whitespace=False)
            json_grammar = xgrammar.Grammar.from_json_schema(plain, any_whitespace=False)
            return compiler.compile_grammar(xgrammar.Grammar.union(json_grammar, _TEXT))
        except RuntimeError as error:
            reason = _XGRAMMAR_LOCATION.sub("", str(error)).strip()
            raise ValueError(f"json_schema cannot be used for constrained decoding: {reason}") from None

    def choice_processor(self, options: Sequence[str]) -> JsonSchemaLogitsProcessor:
        """A fresh processor that holds the reply to exactly one of ``options`` (distinct non-empty
        strings), then a stop token: the model picks among them by its own next-token scores."""
        if (
            isinstance(options, str)
            or not options
            or not all(isinstance(o, str) and o for o in options)
            or len(set(options)) != len(options)
        ):
            raise ValueError(f"options must be a non-empty list of distinct non-empty strings, got {options!r}")
        ebnf = "root ::= " + " | ".join(json.dumps(option, ensure_ascii=False) for option in options)
        vocabulary = self.vocabulary
        return JsonSchemaLogitsProcessor(
            vocabulary.compiler.compile_grammar(ebnf),
            self.stop_token_ids,
            special_token_ids=vocabulary.special_token_ids,
        )

    def processor(self, schema: JsonSchema, *, allow_text: bool = False) -> JsonSchemaLogitsProcessor:
        """A fresh processor constraining one request (every row of its batch) to ``schema``; with
        ``allow_text``, a row may instead hold plain text that does not begin with ``{`` (the first
        token decides)."""
        grammar = self.compile(schema, allow_text=allow_text)
        vocabulary = self.vocabulary
        return JsonSchemaLogitsProcessor(
            grammar,
            self.stop_token_ids,
            special_token_ids=vocabulary.special_token_ids,
            control_token_ids=vocabulary.control_token_ids,
            json_start_token_ids=vocabulary.brace_token_ids if allow_text else None,
        )


@dataclass(frozen=True)
class _Vocabulary:
    """A tokenizer read for xgrammar, its grammar compiler, and the tokens masked besides the grammar:
    special tokens such as ``<|im_start|>`` (xgrammar reads them as plain text a JSON string may hold,
    and decoding would drop them from the reply), tokens with a raw control character (never valid in
    compact JSON, yet admitted by xgrammar 0.2 in strings with maxLength or minLength:
    https://github.com/mlc-ai/xgrammar/issues/800), and the tokens that begin with ``{``."""

    info: xgrammar.TokenizerInfo
    compiler: xgrammar.GrammarCompiler
    special_token_ids: tuple[int, ...]
    control_token_ids: tuple[int, ...]
    brace_token_ids: frozenset[int]

    @classmethod
    def read(cls, tokenizer: PreTrainedTokenizerBase, vocab_size: int | None, stops: tuple[int, ...]) -> _Vocabulary:
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stops))
        tokens = info.decoded_vocab
        special = {t for t in tokenizer.all_special_ids if 0 <= t < info.vocab_size} - set(stops)
        control = {i for i, token in enumerate(tokens) if _CONTROL.search(token)} - set(stops) - special
        return cls(
            info,
            xgrammar.GrammarCompiler(info),
            tuple(sorted(special)),
            tuple(sorted(control)),
            frozenset(i for i, token in enumerate(tokens) if token.startswith(b"{")),
        )


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks every token that cannot continue JSON valid under a compiled schema.

    Called as transformers calls processors: ``input_ids`` ``(batch, n)`` are the full ids of each
    row (prompt and generated tokens), ``scores`` ``(batch, vocab)`` the next-token logits. The first
    call fixes the batch size and the prompt length; each later call feeds each row's matcher the
    tokens generated since the call before. A row whose JSON is complete may only emit a stop token;
    once it has, the row is left as it is (``model.generate`` pads finished rows). Use one processor
    per request: it holds that request's state.
    """

    def __init__(
        self,
        grammar: xgrammar.CompiledGrammar,
        stop_token_ids: Iterable[int],
        *,
        special_token_ids: Iterable[int] = (),
        control_token_ids: Iterable[int] = (),
        json_start_token_ids: frozenset[int] | None = None,
    ) -> None:
        self.grammar = grammar
        self.vocab_size: int = grammar.tokenizer_info.vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._text_masked = torch.tensor(list(special_token_ids), dtype=torch.long)
        self._json_masked = torch.cat([self._text_masked, torch.tensor(list(control_token_ids), dtype=torch.long)])
        self._json_start_token_ids = json_start_token_ids
        self._matchers: list[xgrammar.GrammarMatcher] = []
        self._is_json: list[bool] = []
        self._bitmask: torch.Tensor | None = None
        self._prompt_length = 0
        self._seen = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        if scores.shape[-1] != self.vocab_size:
            raise ValueError(
                f"The logits have {scores.shape[-1]} columns but the grammar was compiled for {self.vocab_size} "
                "tokens; build the JsonSchemaCompiler with vocab_size=model.config.vocab_size."
            )
        if not self._matchers:
            self._matchers = [
                xgrammar.GrammarMatcher(self.grammar, override_stop_tokens=self._stop_token_ids) for _ in range(batch)
            ]
            self._is_json = [self._json_start_token_ids is None] * batch
            self._bitmask = xgrammar.allocate_token_bitmask(batch, self.vocab_size)
            self._prompt_length = length
        elif batch != len(self._matchers):
            raise ValueError(
                f"This processor constrains a batch of {len(self._matchers)} rows and was called with {batch}; "
                "use one processor per request."
            )
        generated = length - self._prompt_length
        if generated < self._seen:
            raise ValueError(
                f"The input ids got shorter ({length} tokens after {self._prompt_length + self._seen}); "
                "use one processor per request."
            )
        assert self._bitmask is not None
        new_tokens = input_ids[:, self._prompt_length + self._seen :].tolist()
        if self._json_start_token_ids is not None and self._seen == 0 and generated > 0:
            self._is_json = [tokens[0] in self._json_start_token_ids for tokens in new_tokens]
        self._seen = generated
        json_rows: list[int] = []
        text_rows: list[int] = []
        for row, (matcher, tokens) in enumerate(zip(self._matchers, new_tokens, strict=True)):
            for token in tokens:
                if matcher.is_terminated():
                    break  # padding after the stop token
                if not matcher.accept_token(token):
                    raise ValueError(
                        f"Token {token} in row {row} does not follow the grammar: the sampler chose a token "
                        "this processor had masked (it must run before sampling, after any processor that "
                        "could rule out every allowed token)."
                    )
            if matcher.is_terminated():
                xgrammar.reset_token_bitmask(self._bitmask[row : row + 1])
            else:
                matcher.fill_next_token_bitmask(self._bitmask, row)
                (json_rows if self._is_json[row] else text_rows).append(row)
        # Masked in place; logits made in inference mode can only be changed in place inside it.
        with torch.inference_mode() if scores.is_inference() else contextlib.nullcontext():
            _apply_bitmask(scores, self._bitmask)
            for rows, masked in ((json_rows, self._json_masked), (text_rows, self._text_masked)):
                if rows and len(masked):
                    scores[torch.tensor(rows, device=scores.device)[:, None], masked.to(scores.device)] = -float("inf")
        return scores

    @property
    def is_completed(self) -> bool:
        """Whether every row holds complete JSON (its stop token accepted or still to come)."""
        return bool(self._matchers) and all(m.is_terminated() or m.is_completed() for m in self._matchers)


def _apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set masked logits to ``-inf`` in place; xgrammar has CPU and CUDA kernels, other devices
    round-trip through the CPU."""
    if scores.device.type == "cuda":
        xgrammar.apply_token_bitmask_inplace(scores, bitmask.to(scores.device, non_blocking=True))
    elif scores.device.type == "cpu":
        xgrammar.apply_token_bitmask_inplace(scores, bitmask)
    else:
        on_cpu = scores.cpu()
        xgrammar.apply_token_bitmask_inplace(on_cpu, bitmask)
        scores.copy_(on_cpu)
