"""SRAEngine: a causal LM with Scaled ReAttention, its tokenizer, and one generation path.

The engine is the public facade over :mod:`sra_rag.generation`:

- loading: :meth:`SRAEngine.from_pretrained` (:mod:`sra_rag.models` finds the files);
- the input side: :meth:`~SRAEngine.prepare` and :meth:`~SRAEngine.request` render, tokenise and check a
  call once (:class:`~sra_rag.generation.inputs.InputProcessor`);
- running: :meth:`~SRAEngine.submit` hands the request to the
  :class:`~sra_rag.generation.scheduler.Scheduler`, which batches every request of the engine into
  shared forward passes (continuous batching);
- the calls: blocking, streaming and async generation (:meth:`~SRAEngine.complete`,
  :meth:`~SRAEngine.stream`, :meth:`~SRAEngine.astream`), the readout without an answer
  (:meth:`~SRAEngine.read`, :meth:`~SRAEngine.attribute`), a constrained choice
  (:meth:`~SRAEngine.choose`) and scoring (:meth:`~SRAEngine.log_likelihood`), all through that one path.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sra_rag.attention import IMPLEMENTATION, register
from sra_rag.config import ModelDefaults, SRAConfig, WeightFormat, as_sra_config
from sra_rag.generation.compute import in_passing_thread
from sra_rag.generation.inputs import ContextWindowExceededError, InputProcessor, PreparedPrompt, Prompt, check_fits
from sra_rag.generation.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixCacheStats
from sra_rag.generation.request import Request
from sra_rag.generation.scheduler import DEFAULT_MAX_BATCH_SIZE, DEFAULT_PREFILL_TOKENS, Scheduler
from sra_rag.generation.streaming import FinishReason, TextStream
from sra_rag.generation.structured import JsonSchemaCompiler
from sra_rag.generation.weights import apply_weights, default_weights
from sra_rag.layout import PromptLayout, TextLayout
from sra_rag.models import (
    ModelSource,
    check_model,
    default_model,
    load,
    resolve_source,
    shipped_defaults,
    shipped_profile,
)
from sra_rag.readout.calibration import ReadoutProfile
from sra_rag.readout.recorder import DocumentAttention

__all__ = ["Completion", "ContextWindowExceededError", "PreparedPrompt", "SRAEngine", "TextStream"]


@dataclass
class Completion:
    """The result of :meth:`SRAEngine.complete`. ``prefill_seconds`` is the wall time of the prompt's
    forward pass (not compared: two equal completions may take different times);
    ``document_attention``: how much the question read each document of the layout (None when the
    prompt has no documents or the readout was turned off)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    prefill_seconds: float = field(default=0.0, compare=False)
    document_attention: DocumentAttention | None = field(default=None, compare=False)


class SRAEngine:
    """A causal LM with Scaled ReAttention, its tokenizer and per-request generation.

    Thread-safe: any number of threads (or tasks) may call it at once; their requests are batched
    together by the engine's scheduler, each with its own settings. ``max_batch_size``: requests
    decoded together at most; ``prefill_tokens``: padded prompt tokens prefilled in one forward pass
    at most; ``num_threads``: torch's CPU threads (None: at most the CPUs this process may use,
    unless you set torch's threads or ``OMP_NUM_THREADS`` yourself); ``readout_profile``: how the
    question's attention on each document is scored (a :class:`~sra_rag.readout.calibration.ReadoutProfile`
    or its JSON file; None: the profile shipped for the model, else raw, uncalibrated scores);
    ``defaults``: the model's default SRA settings and answer decoding
    (:class:`~sra_rag.config.ModelDefaults`; None: those shipped for the model, else
    :data:`~sra_rag.config.SAFE_DEFAULTS`); ``sra``: the settings of calls that pass none (None: the
    defaults' preset); ``prefix_cache_bytes``: the budget of the automatic prefix cache, which keeps the KV of prompt
    prefixes already run for the next request that starts the same way (0 turns it off; see
    :mod:`sra_rag.generation.prefix_cache`).
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
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
        num_threads: int | None = None,
        readout_profile: ReadoutProfile | str | os.PathLike[str] | None = None,
        defaults: ModelDefaults | None = None,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        check_model(model)
        register()
        if model.config._attn_implementation != attn_implementation:
            model.set_attn_implementation(attn_implementation)
        model.eval()
        configure_threads(num_threads)
        self.model = model
        self.tokenizer = tokenizer
        text_config = model.config.get_text_config()
        window = context_window or getattr(text_config, "max_position_embeddings", None)
        if not window:
            raise ValueError("The model config has no max_position_embeddings; pass context_window=...")
        self.context_window = int(window)
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.defaults = shipped_defaults(self.name) if defaults is None else defaults
        self.sra = self.defaults.sra if sra is None else as_sra_config(sra)
        self.readout_profile = _readout_profile(readout_profile, self.name, text_config.num_hidden_layers)
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self.eos_token_ids = frozenset(int(token) for token in eos if token is not None)
        self.scheduler = Scheduler(
            model,
            tokenizer,
            self.eos_token_ids,
            max_batch_size=max_batch_size,
            prefill_tokens=prefill_tokens,
            prefix_cache_bytes=prefix_cache_bytes,
        )
        self.inputs = InputProcessor(
            tokenizer,
            name=self.name,
            vocab_size=text_config.vocab_size,
            eos_token_ids=self.eos_token_ids,
            readout_profile=self.readout_profile,
        )
        self.weights: WeightFormat = "fp32"  # the linear layers' weights (from_pretrained's ``weights``)

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
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
        num_threads: int | None = None,
        readout_profile: ReadoutProfile | str | os.PathLike[str] | None = None,
        defaults: ModelDefaults | None = None,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        weights: WeightFormat | None = None,
        **model_kwargs: Any,
    ) -> SRAEngine:
        """Load a model with SRA attention.

        ``model=None`` loads the default model, Qwen2.5-Coder-0.5B-Instruct (``$SRA_RAG_MODEL`` names
        another; :func:`sra_rag.models.default_model`); otherwise a model installed from PyPI (a key of
        :data:`sra_rag.models.PACKAGED_MODELS`: ``"qwen2.5-coder-0.5b"``, ``"smollm2-135m"``), a hub
        id (read from the local cache), a local folder or a ``.gguf`` file. ``device=None`` picks CUDA
        when available, else the CPU; ``dtype=None`` picks bfloat16 on CUDA and float32 on the CPU.
        ``weights``: the linear layers' weights on the CPU, ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"int4"``
        (activations and attention stay fp32; :mod:`sra_rag.generation.weights`); None is the model's
        measured format (:attr:`~sra_rag.config.ModelDefaults.weights`) on a CPU that multiplies bf16
        natively, else fp32 (docs/bench/cpu-weights.md).
        """
        source: ModelSource = resolve_source(model, gguf_file)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = _torch_dtype(dtype, device)
        model_defaults = shipped_defaults(source.display_name) if defaults is None else defaults
        chosen = default_weights(device, torch_dtype, model_defaults.weights) if weights is None else weights
        if chosen != "fp32" and (device.type != "cpu" or torch_dtype != torch.float32):
            raise ValueError(f"weights={chosen!r} is a CPU option for fp32 models; on {device} use dtype=...")
        register()

        def prepare() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
            loaded, tokenizer = load(
                source,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
                attn_implementation=attn_implementation,
                **model_kwargs,
            )
            return apply_weights(loaded, chosen).to(device), tokenizer

        # Loading and converting run many parallel CPU kernels; in a passing thread their OpenMP
        # threads end with them, so the caller's thread keeps none (sra_rag.generation.compute).
        prepared, tokenizer = in_passing_thread(prepare)
        engine = cls(
            prepared,
            tokenizer,
            sra=sra,
            context_window=context_window,
            name=source.display_name,
            attn_implementation=attn_implementation,
            max_batch_size=max_batch_size,
            prefill_tokens=prefill_tokens,
            num_threads=num_threads,
            readout_profile=readout_profile,
            defaults=model_defaults,
            prefix_cache_bytes=prefix_cache_bytes,
        )
        engine.weights = chosen
        return engine

    _shared: dict[tuple[Any, ...], SRAEngine] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, model: str | os.PathLike[str] | None = None, **kwargs: Any) -> SRAEngine:
        """Like :meth:`from_pretrained`, but one engine per distinct set of arguments is loaded once
        per process and reused (framework adapters share models this way); ``None`` is the default
        model's name, so it shares that model's engine."""
        named = default_model() if model is None else model
        key = (os.fspath(named), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.from_pretrained(named, **kwargs)
            return cls._shared[key]

    def with_context_window(self, context_window: int) -> SRAEngine:
        """A view of this engine (same model, tokenizer and scheduler, no reload) whose prompts must
        fit a smaller ``context_window``, for example to leave memory headroom or to test long-input
        policies."""
        if not isinstance(context_window, int) or not 0 < context_window <= self.context_window:
            raise ValueError(f"context_window must be an integer in [1, {self.context_window}], got {context_window!r}")
        view = copy.copy(self)
        view.context_window = context_window
        return view

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def json_schemas(self) -> JsonSchemaCompiler:
        """The compiler of structured output's grammars (the input side's)."""
        return self.inputs.json_schemas

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats | None:
        """The prefix cache's counters (hit rate, cached bytes, ...), or None when it is off."""
        cache = self.scheduler.prefix_cache
        return None if cache is None else cache.stats

    def close(self) -> None:
        """Stop the engine's scheduler (its views from :meth:`with_context_window` share it):
        unfinished requests end with an error and later calls are refused."""
        self.scheduler.close()

    # -- the input side ----------------------------------------------------------------------------

    def prepare(self, prompt: Prompt, **markers: Any) -> PreparedPrompt:
        """The prompt rendered and tokenised once, on the engine's device; ``tail_from``, ``layout``
        and ``chat_template`` as :meth:`~sra_rag.generation.inputs.InputProcessor.prepare` takes them."""
        prepared = self.inputs.prepare(prompt, **markers)
        return replace(prepared, input_ids=prepared.input_ids.to(self.device))

    def count_tokens(self, text_or_messages: Prompt) -> int:
        """Tokens of a plain text (no special tokens), or of a whole chat prompt as the model reads
        it (template and generation prompt included) when given a list of messages."""
        return self.inputs.count_tokens(text_or_messages)

    def request(self, prompt: Prompt, **settings: Any) -> Request:
        """Validate every setting and tokenise the prompt: the :class:`~sra_rag.generation.request.Request`
        that :meth:`submit` runs. Every other generation method calls this, so a bad setting fails
        here, at the call, with a message naming it. The settings are those of :meth:`stream`."""
        return self.inputs.request(prompt, context_window=self.context_window, default_sra=self.sra, **settings)

    # -- requests ----------------------------------------------------------------------------------

    def submit(self, request: Request) -> TextStream:
        """Run a prepared request; returns its stream at once (generation runs on the scheduler)."""
        if not isinstance(request, Request):
            raise TypeError(f"submit takes a Request (see SRAEngine.request), got {type(request).__name__}")
        return self.scheduler.submit(request)

    # -- generation --------------------------------------------------------------------------------

    def stream(self, prompt: Prompt, **settings: Any) -> TextStream:
        """Generate, yielding text pieces as they are decoded. Returns a :class:`TextStream`; read it
        from any thread, or with ``async for``; ``close()`` it to cancel.

        Settings (all per request): ``max_new_tokens`` (256), ``sra`` (an :class:`SRAConfig`; the
        engine's by default), ``stop`` (strings, never emitted), ``temperature`` (0: greedy),
        ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty`` (``penalize_prompt=False``: over
        the generated tokens only), ``loop_guard`` (end the reply once its newest ``loop_guard``
        tokens repeat a span it already generated; 0: off; changes no token), ``seed``,
        ``logprobs`` (record each token's log-probability in
        ``TextStream.logprobs``), ``layout`` (a
        :class:`~sra_rag.layout.TextLayout`), ``tail_from`` (shorthand for a question marker that
        also turns on the question tail), ``chat_template`` and ``logits_processors`` (transformers
        ``LogitsProcessor`` s called with the request's full ids), ``readout`` (True: when the
        layout marks documents and a question, the stream's ``document_attention`` tells how much
        the question read each document; ~1.0x prefill cost; always on with an ``sra`` that boosts
        documents, which ranks them by it).

        Structured output, by constrained decoding: ``json_schema`` (a JSON schema dict, a pydantic
        model class, or True for any JSON object) makes the reply JSON that fits it; ``tools`` (a list
        of :class:`~sra_rag.generation.tools.Tool` or OpenAI tool dicts) and ``tool_choice`` (``"auto"``,
        ``"required"``, ``"none"`` or a tool's name) offer tools in a system message and hold a call
        to ``{"name": ..., "arguments": ...}`` of a chosen tool (read it with
        :func:`sra_rag.generation.tools.parse_tool_call`). A reply cut by ``max_new_tokens`` ends with
        ``finish_reason="length"`` and is incomplete."""
        return self.submit(self.request(prompt, **settings))

    def complete(self, prompt: Prompt, **settings: Any) -> Completion:
        """Generate the whole completion; returns text, token counts and why it ended. Same
        settings as :meth:`stream`."""
        return _completion(self.stream(prompt, **settings))

    def generate(self, prompt: Prompt, **settings: Any) -> str:
        """Generate the whole completion and return its text. Same settings as :meth:`stream`."""
        return self.complete(prompt, **settings).text

    async def astream(self, prompt: Prompt, **settings: Any) -> TextStream:
        """:meth:`stream` for async code: the prompt is tokenised off the event loop; iterate the
        result with ``async for``."""
        request = await asyncio.to_thread(self.request, prompt, **settings)
        return self.submit(request)

    async def acomplete(self, prompt: Prompt, **settings: Any) -> Completion:
        """:meth:`complete` for async code (never blocks the event loop)."""
        stream = await self.astream(prompt, **settings)
        async for _ in stream:
            pass
        return _completion(stream)

    def read(
        self,
        prompt: Prompt,
        *,
        layout: TextLayout | None = None,
        sra: SRAConfig | None = None,
        tail_from: str | None = None,
        chat_template: bool = True,
    ) -> Completion:
        """How much the question reads each document, without answering: the prompt runs only up to
        the end of the readout profile's layer band (the later layers and the first token are not
        computed) and the completion has no text, only ``document_attention`` and
        ``prefill_seconds``. What attention-ordered stuffing (:mod:`sra_rag.rag.ordering`) reads
        before it re-orders; the scores equal those of a full prefill's readout."""
        request = self.request(
            prompt, max_new_tokens=1, sra=sra, tail_from=tail_from, layout=layout, chat_template=chat_template
        )
        if request.readout is None:
            raise ValueError(
                "read needs a prompt whose layout marks a question and at least one document: "
                "pass layout=TextLayout(question=..., documents=[...])"
            )
        return _completion(self.submit(replace(request, read_only=True)))

    def attribute(
        self,
        prompt: Prompt,
        reply: str,
        *,
        layout: TextLayout | None = None,
        sra: SRAConfig | None = None,
        chat_template: bool = True,
    ) -> DocumentAttention:
        """How much a reply read each document: the prompt, followed by the ``reply`` the model gave
        to it (its tokens exactly as generation appends them), runs up to the end of the readout
        profile's layer band, and the readout's rows are the reply's tokens instead of the question's.
        Scored by the same profile as the question's readout (one score per document of ``layout``,
        higher = read more). One read-only pass, the cost of :meth:`read` over a slightly longer
        prompt. Where the reply's reading differs from the question's, the reply may have been copied
        from another document than the one the question found."""
        if not isinstance(reply, str) or not reply.strip():
            raise ValueError("reply must be a non-empty string: the text the model answered to the prompt")
        request = self.request(prompt, max_new_tokens=1, sra=sra, layout=layout, chat_template=chat_template)
        if request.layout is None or not request.layout.documents:
            raise ValueError(
                "attribute needs a prompt whose layout marks at least one document: "
                "pass layout=TextLayout(documents=[...])"
            )
        reply_ids = tuple(self.tokenizer(reply, add_special_tokens=False)["input_ids"])
        prompt_ids = request.prompt_ids + reply_ids
        check_fits(len(prompt_ids), 1, self.context_window)
        spans = PromptLayout(len(prompt_ids), (len(request.prompt_ids), len(prompt_ids)), request.layout.documents)
        read = replace(request, prompt_ids=prompt_ids, layout=spans, readout=self.readout_profile, read_only=True)
        attention = _completion(self.submit(read)).document_attention
        if attention is None:
            raise RuntimeError("the read-only prefill returned no readout")
        return attention

    def choose(
        self,
        prompt: Prompt,
        options: Sequence[str],
        *,
        reply: str = "",
        layout: TextLayout | None = None,
        sra: SRAConfig | None = None,
        chat_template: bool = True,
    ) -> int:
        """Which of ``options`` the model writes next, after the start of a ``reply`` to ``prompt``
        (its tokens appended exactly as generation appends them): greedy decoding constrained to
        the options (one prefill, then a few tokens). Returns the chosen option's index. How the
        reader has a model that does not cite name its source (:mod:`sra_rag.rag.citing`)."""
        if not isinstance(reply, str):
            raise TypeError(f"reply must be a string, got {type(reply).__name__}")
        processor = self.json_schemas.choice_processor(options)  # checks the options
        longest = max(len(self.tokenizer(option, add_special_tokens=False)["input_ids"]) for option in options)
        request = self.request(
            prompt,
            max_new_tokens=longest + 1,
            sra=sra,
            layout=layout,
            chat_template=chat_template,
            logits_processors=[processor],
            readout=False,
        )
        prompt_ids = request.prompt_ids + tuple(self.tokenizer(reply, add_special_tokens=False)["input_ids"])
        check_fits(len(prompt_ids), longest + 1, self.context_window)
        spans = None if request.layout is None else replace(request.layout, length=len(prompt_ids))
        text = _completion(self.submit(replace(request, prompt_ids=prompt_ids, layout=spans))).text
        if text not in options:
            raise RuntimeError(f"constrained decoding ended outside the options: {text!r}")
        return list(options).index(text)

    def log_likelihood(
        self,
        prompt: Prompt,
        continuation: str,
        *,
        sra: SRAConfig | None = None,
        tail_from: str | None = None,
        layout: TextLayout | None = None,
        chat_template: bool = True,
    ) -> float:
        """Log-probability (natural log, summed over tokens) that the model replies to ``prompt``
        with ``continuation``, read exactly as generation reads it (the same requests, batched the
        same way): the prompt's forward pass is the SRA prefill, and the continuation's tokens are
        fed as decoding steps (ordinary attention). A continuous measure of what a setting does to a
        known answer, more sensitive than the exact match of a greedy completion."""
        if not isinstance(continuation, str) or not continuation:
            raise ValueError("continuation must be a non-empty string")
        target = tuple(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        request = self.request(
            prompt, max_new_tokens=len(target), sra=sra, tail_from=tail_from, layout=layout, chat_template=chat_template
        )
        stream = self.submit(
            Request(
                request.prompt_ids, request.sra, request.sampling, request.layout, forced_tokens=target, logprobs=True
            )
        )
        for _ in stream:
            pass
        return float(sum(stream.logprobs))

    # -- helpers -----------------------------------------------------------------------------------


_threads_configured = False
_threads_lock = threading.Lock()


def configure_threads(num_threads: int | None = None) -> None:
    """Set torch's CPU threads for generation, once per process. ``num_threads`` is used as given;
    None keeps torch's count, lowered to the CPUs this process may use (a container often sees more
    cores than it gets, and oversubscribed threads slow every forward pass down), and leaves it
    alone when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set. Never raises a count you set."""
    global _threads_configured
    if num_threads is not None:
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        torch.set_num_threads(num_threads)
        _threads_configured = True
        return
    with _threads_lock:
        if _threads_configured or os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
            return
        _threads_configured = True
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if torch.get_num_threads() > usable:
            torch.set_num_threads(usable)


def _completion(stream: TextStream) -> Completion:
    for _ in stream:
        pass
    assert stream.finish_reason is not None
    return Completion(
        stream.text,
        stream.prompt_tokens,
        stream.completion_tokens,
        stream.finish_reason,
        stream.prefill_seconds or 0.0,
        stream.document_attention,
    )


def _readout_profile(
    profile: ReadoutProfile | str | os.PathLike[str] | None, name: str, num_layers: int
) -> ReadoutProfile:
    """The engine's readout profile: the one given (or its file), the one shipped for the model, or
    raw scores (uncalibrated) over the upper half of the layers."""
    if profile is None:
        profile = shipped_profile(name) or ReadoutProfile.uncalibrated(name, num_layers)
    elif not isinstance(profile, ReadoutProfile):
        profile = ReadoutProfile.load(profile)
    if profile.num_layers != num_layers:
        raise ValueError(
            f"The readout profile for {profile.model} has {profile.num_layers} layers, but {name} has {num_layers}; "
            "make one for this model with `sra-rag calibrate`."
        )
    return profile


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
