"""SRAEngine: run a Hugging Face causal LM with Scaled ReAttention; count, generate and stream.

Blocking and streaming generation share :meth:`SRAEngine.prepare` and one decoding loop, so they
cannot drift apart. The SRA settings of a request travel as the ``sra_config`` keyword of the prefill
forward call; decoding steps are ordinary attention (spec: "Prefill and decoding").
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from sra_rag.attention import IMPLEMENTATION, register
from sra_rag.config import SRAConfig
from sra_rag.models import ModelSource, check_model, load, resolve_source

Message = Mapping[str, str]
Prompt = str | Sequence[Message]
FinishReason = Literal["stop", "length"]


class ContextWindowExceededError(ValueError):
    """A prompt plus the tokens to generate does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_window = context_window
        super().__init__(
            f"The prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"{prompt_tokens + max_new_tokens} tokens do not fit the context window of {context_window}. "
            f"Shorten the prompt to at most {context_window - max_new_tokens} tokens or lower max_new_tokens. "
            "Nothing was truncated."
        )


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt tokenised once, ready for the model.

    input_ids: ``(1, n)``; ``tail_length``: tokens from the question (``tail_from``) to the end, or
    None when the request did not mark a tail.
    """

    input_ids: torch.Tensor
    tail_length: int | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """The result of :meth:`SRAEngine.complete`. ``prefill_seconds`` is the wall time of the prompt's
    forward pass (not compared: two equal completions may take different times)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    prefill_seconds: float = field(default=0.0, compare=False)


@dataclass
class TextStream:
    """Iterator over text pieces as they are generated; after it is exhausted, ``text``,
    ``completion_tokens`` and ``finish_reason`` describe the whole completion. ``prefill_seconds``
    (the prompt's forward pass, SRA included) is set once the first piece is computed."""

    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    text: str = ""
    prefill_seconds: float | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self.pieces)

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield the pieces without blocking the event loop: one worker thread (``sra-stream``)
        generates the whole stream and hands pieces over, so there is no thread hop per token.
        When the consumer stops early, the worker stops after the next piece."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
        stopped = threading.Event()

        def put(item: object, error: BaseException | None = None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (item, error))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stopped.set()

        def consume() -> None:
            try:
                for piece in self:
                    if stopped.is_set():
                        return
                    put(piece)
            except BaseException as error:  # handed to the consumer, which re-raises it
                put(_DONE, error)
            else:
                put(_DONE)

        threading.Thread(target=consume, name="sra-stream", daemon=True).start()
        try:
            while True:
                item, error = await queue.get()
                if error is not None:
                    raise error
                if item is _DONE:
                    return
                assert isinstance(item, str)
                yield item
        finally:
            stopped.set()


_DONE = object()


def _longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that begins some stop sequence (held back in a stream)."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


class SRAEngine:
    """A causal LM with Scaled ReAttention, its tokenizer and per-request generation.

    Thread-safe: each call has its own cache, settings and random generator, so several threads may
    share one engine with different settings.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        sra: SRAConfig | None = None,
        context_window: int | None = None,
        name: str | None = None,
        attn_implementation: str = IMPLEMENTATION,
    ) -> None:
        check_model(model)
        register()
        if model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.sra = sra if sra is not None else SRAConfig()
        if not isinstance(self.sra, SRAConfig):
            raise TypeError(f"sra must be an SRAConfig, got {type(self.sra).__name__}")
        text_config = model.config.get_text_config()
        window = context_window or getattr(text_config, "max_position_embeddings", None)
        if not window:
            raise ValueError("The model config has no max_position_embeddings; pass context_window=...")
        self.context_window = int(window)
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self.eos_token_ids = frozenset(int(token) for token in eos if token is not None)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        sra: SRAConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        gguf_file: str | None = None,
        context_window: int | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = True,
        attn_implementation: str = IMPLEMENTATION,
        **model_kwargs: Any,
    ) -> SRAEngine:
        """Load a model with SRA attention.

        ``model=None`` loads the embedded SmolLM2-135M-Instruct; otherwise a model installed from
        PyPI (a key of :data:`sra_rag.models.PACKAGED_MODELS`, e.g. ``"qwen2.5-coder-0.5b"``), a hub
        id (read from the local cache), a local folder or a ``.gguf`` file. ``device=None`` picks CUDA
        when available, else the CPU; ``dtype=None`` picks bfloat16 on CUDA and float32 on the CPU.
        """
        source: ModelSource = resolve_source(model, gguf_file)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = _torch_dtype(dtype, device)
        register()
        loaded, tokenizer = load(
            source,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            attn_implementation=attn_implementation,
            **model_kwargs,
        )
        return cls(
            loaded.to(device),
            tokenizer,
            sra=sra,
            context_window=context_window,
            name=source.display_name,
            attn_implementation=attn_implementation,
        )

    _shared: dict[tuple[Any, ...], SRAEngine] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, model: str | os.PathLike[str] | None = None, **kwargs: Any) -> SRAEngine:
        """Like :meth:`from_pretrained`, but one engine per distinct set of arguments is loaded once
        per process and reused (framework adapters share models this way)."""
        key = (None if model is None else os.fspath(model), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.from_pretrained(model, **kwargs)
            return cls._shared[key]

    def with_context_window(self, context_window: int) -> SRAEngine:
        """A view of this engine (same model and tokenizer, no reload) whose prompts must fit a smaller
        ``context_window``, for example to leave memory headroom or to test long-input policies."""
        if not isinstance(context_window, int) or not 0 < context_window <= self.context_window:
            raise ValueError(f"context_window must be an integer in [1, {self.context_window}], got {context_window!r}")
        view = copy.copy(self)
        view.context_window = context_window
        return view

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- tokens ------------------------------------------------------------------------------------

    def _render(self, prompt: Prompt, chat_template: bool) -> tuple[str, bool]:
        """Validate ``prompt`` and render it to the exact text the model reads; the flag says
        whether the tokenizer should add its special tokens (plain prompts only)."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("The prompt is empty; pass some text or a list of chat messages.")
            if not chat_template or self.tokenizer.chat_template is None:
                return prompt, True
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, Sequence):
            if not chat_template:
                raise ValueError("chat_template=False takes an already formatted string, not a list of messages.")
            messages = _validate_messages(prompt)
        else:
            raise TypeError(
                "prompt must be a string or a list of {'role': ..., 'content': ...} messages, "
                f"got {type(prompt).__name__}"
            )
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.name} has no chat template; pass a plain string prompt instead of messages.")
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered), False

    def prepare(self, prompt: Prompt, *, tail_from: str | None = None, chat_template: bool = True) -> PreparedPrompt:
        """Apply the chat template (messages, or a string wrapped as one user message) and tokenise
        once. ``tail_from`` marks the question: the SRA tail then spans from its last occurrence in
        the prompt to the end (instruction and generation prompt included). ``chat_template=False``
        reads a string prompt as already formatted (only the tokenizer's own special tokens are added)."""
        text, add_special_tokens = self._render(prompt, chat_template)
        encoding = self.tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=tail_from is not None
        )
        input_ids = encoding["input_ids"]
        tail_length = None
        if tail_from is not None:
            start = text.rfind(tail_from) if tail_from else -1
            if start < 0:
                raise ValueError(f"tail_from={tail_from!r} does not occur in the prompt.")
            offsets = encoding["offset_mapping"]
            first = next(i for i, (_, end) in enumerate(offsets) if end > start)
            tail_length = len(input_ids) - first
        return PreparedPrompt(torch.tensor([input_ids], device=self.device), tail_length)

    def count_tokens(self, text_or_messages: Prompt) -> int:
        """Tokens of a plain text (no special tokens), or of a whole chat prompt as the model reads
        it (template and generation prompt included) when given a list of messages."""
        if isinstance(text_or_messages, str):
            return len(self.tokenizer(text_or_messages, add_special_tokens=False)["input_ids"])
        return self.prepare(text_or_messages).num_tokens

    # -- generation --------------------------------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        sra: SRAConfig | None = None,
        stop: Sequence[str] | str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        tail_from: str | None = None,
        chat_template: bool = True,
    ) -> TextStream:
        """Generate, yielding text pieces as they are decoded. Returns a :class:`TextStream`.

        The stream may be read from any thread (each model step enters inference mode itself)."""
        settings = _sampling(max_new_tokens, stop, temperature, top_p, seed)
        prepared, config = self._request(prompt, sra, tail_from, chat_template, settings.max_new_tokens)
        stream = TextStream(iter(()), prompt_tokens=prepared.num_tokens)
        stream.pieces = self._decode(prepared, config, settings, stream)
        return stream

    def complete(self, prompt: Prompt, **kwargs: Any) -> Completion:
        """Generate the whole completion; returns text, token counts and why it ended."""
        stream = self.stream(prompt, **kwargs)
        for _ in stream:
            pass
        assert stream.finish_reason is not None
        return Completion(
            stream.text,
            stream.prompt_tokens,
            stream.completion_tokens,
            stream.finish_reason,
            stream.prefill_seconds or 0.0,
        )

    def generate(self, prompt: Prompt, **kwargs: Any) -> str:
        """Generate the whole completion and return its text. Same arguments as :meth:`stream`."""
        return self.complete(prompt, **kwargs).text

    def log_likelihood(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        sra: SRAConfig | None = None,
        tail_from: str | None = None,
        chat_template: bool = True,
    ) -> float:
        """Log-probability (natural log, summed over tokens) that the model replies to ``prompt``
        with ``continuation``, read exactly as generation would read it: the prompt's forward pass
        is the SRA prefill, and the continuation's tokens go through the KV cache like decoding
        steps (ordinary attention). A continuous measure of what a setting does to a known answer,
        more sensitive than the exact match of a greedy completion."""
        if not isinstance(continuation, str) or not continuation:
            raise ValueError("continuation must be a non-empty string")
        target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        prepared, config = self._request(prompt, sra, tail_from, chat_template, len(target))
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            prefill = self.model(
                input_ids=prepared.input_ids, cache=cache, use_cache=True, logits_to_keep=1, sra_config=config
            )
            logits = [prefill.logits[0, -1:]]
            if len(target) > 1:
                rest = torch.tensor([target[:-1]], device=self.device)
                logits.append(self.model(input_ids=rest, cache=cache, use_cache=True, sra_config=config).logits[0])
            log_probs = torch.log_softmax(torch.cat(logits).float(), dim=-1)
            chosen = log_probs.gather(-1, torch.tensor(target, device=self.device)[:, None])
        return float(chosen.sum())

    def _request(
        self, prompt: Prompt, sra: SRAConfig | None, tail_from: str | None, chat_template: bool, new_tokens: int
    ) -> tuple[PreparedPrompt, SRAConfig]:
        """What generation and scoring share: the tokenised prompt (checked to fit with
        ``new_tokens`` more) and the call's SRA settings, with the tail set to the question when
        ``tail_from`` is given."""
        config = self._request_config(sra)
        prepared = self.prepare(prompt, tail_from=tail_from, chat_template=chat_template)
        self._check_fits(prepared.num_tokens, new_tokens)
        if prepared.tail_length is not None:
            config = config.model_copy(update={"tail_length": prepared.tail_length, "dynamic_tail": False})
        return prepared, config

    def _request_config(self, sra: SRAConfig | None) -> SRAConfig:
        if sra is None:
            return self.sra
        if not isinstance(sra, SRAConfig):
            raise TypeError(f"sra must be an SRAConfig, got {type(sra).__name__}")
        return sra

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_window:
            raise ContextWindowExceededError(prompt_tokens, max_new_tokens, self.context_window)

    def _next_token(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        config: SRAConfig,
        warpers: Sequence[LogitsProcessor],
        generator: torch.Generator,
    ) -> int:
        """One forward step (the SRA prefill, or a cached decoding step) and the chosen next token.
        Inference mode is entered per step, not across the caller's ``yield``: it is thread-local,
        and a stream may be resumed on another thread (``asyncio.to_thread``)."""
        with torch.inference_mode():
            outputs = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, sra_config=config)
            logits = outputs.logits[:, -1, :].float()
            for warper in warpers:
                logits = warper(input_ids, logits)
            if warpers:
                return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            return int(logits.argmax(-1))

    def _decode(
        self, prepared: PreparedPrompt, config: SRAConfig, settings: SamplingSettings, stream: TextStream
    ) -> Iterator[str]:
        """The one decoding loop: SRA prefill, then cached decoding steps; stop sequences are
        matched on the decoded text and never emitted."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(settings.seed if settings.seed is not None else random.getrandbits(63))
        warpers: list[LogitsProcessor] = []
        if settings.temperature > 0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_p < 1.0:
                warpers.append(TopPLogitsWarper(settings.top_p))
        cache = DynamicCache(config=self.model.config)
        tokens: list[int] = []
        emitted = 0
        text = ""
        finish: FinishReason = "length"
        start = time.perf_counter()
        next_token = self._next_token(prepared.input_ids, cache, config, warpers, generator)
        stream.prefill_seconds = time.perf_counter() - start
        while True:
            if next_token in self.eos_token_ids:
                finish = "stop"
                break
            tokens.append(next_token)
            stream.completion_tokens = len(tokens)
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
            hit = _find_stop(text, settings.stop, emitted)
            if hit is not None:
                text = text[:hit]
                finish = "stop"
                break
            # Hold back an incomplete character and anything that may begin a stop sequence.
            ready = len(text) - _longest_stop_prefix(text, settings.stop)
            if text.endswith("\ufffd"):
                ready = min(ready, len(text.rstrip("\ufffd")))
            if ready > emitted:
                stream.text = text[:ready]
                yield text[emitted:ready]
                emitted = ready
            if len(tokens) >= settings.max_new_tokens:
                break
            step = torch.tensor([[next_token]], device=self.device)
            next_token = self._next_token(step, cache, config, warpers, generator)
        stream.text = text
        stream.finish_reason = finish
        if len(text) > emitted:
            yield text[emitted:]


def _find_stop(text: str, stops: Sequence[str], emitted: int) -> int | None:
    """Index of the earliest stop sequence in ``text`` that is not inside already emitted text."""
    hits = [index for stop in stops if (index := text.find(stop, max(0, emitted - len(stop) + 1))) >= 0]
    return min(hits) if hits else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def _torch_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use for example 'float32', 'bfloat16' or 'float16'")
        return resolved
    return dtype


def _validate_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Check a chat message list and return it as plain dicts."""
    if not messages:
        raise ValueError("The message list is empty; pass at least one {'role': 'user', 'content': ...} message.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise TypeError(f"message {index} must be a mapping with a string 'role' and 'content', got {message!r}")
        if not isinstance(message.get("content"), str):
            raise TypeError(f"message {index} has non-string content {message.get('content')!r}")
    if not any(str(message["content"]).strip() for message in messages):
        raise ValueError("Every message is empty; there is nothing to answer.")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _sampling(
    max_new_tokens: int, stop: Sequence[str] | str | None, temperature: float, top_p: float, seed: int | None
) -> SamplingSettings:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy decoding), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop sequences must be non-empty strings, got {stop!r}")
    return SamplingSettings(max_new_tokens, float(temperature), float(top_p), seed, stops)
