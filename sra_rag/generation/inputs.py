"""The engine's input side: a prompt rendered and tokenised once (:meth:`InputProcessor.prepare`),
and every setting of a request checked once, at the call (:meth:`InputProcessor.request`), into
the :class:`~sra_rag.generation.request.Request` the scheduler runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from sra_rag.config import SRAConfig, as_sra_config
from sra_rag.generation.chat import PromptTokenizer, TokenizedPrompt, validate_messages
from sra_rag.generation.request import Request, check_logits_processors, sampling_settings
from sra_rag.generation.structured import JsonSchema, JsonSchemaCompiler, JsonSchemaLogitsProcessor
from sra_rag.generation.tools import Tool, tool_request
from sra_rag.layout import PromptLayout, TextLayout, resolve
from sra_rag.readout.calibration import ReadoutProfile

Message = dict[str, str]
Prompt = str | Sequence[Message]


class ContextWindowExceededError(ValueError):
    """A prompt plus the tokens to generate does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_window = context_window
        room = context_window - max_new_tokens
        advice = (
            f"Shorten the prompt to at most {room} tokens or lower max_new_tokens."
            if room > 0
            else f"max_new_tokens alone exceeds the window: lower it to at most {context_window - prompt_tokens}."
            if prompt_tokens < context_window
            else "The prompt alone fills the window: shorten it."
        )
        super().__init__(
            f"The prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"{prompt_tokens + max_new_tokens} tokens do not fit the context window of {context_window}. "
            f"{advice} Nothing was truncated."
        )


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt tokenised once, ready for the model.

    ``input_ids``: ``(1, n)``; ``layout``: its question and document spans (see
    :class:`~sra_rag.layout.PromptLayout`); ``text``: the rendered prompt.
    """

    input_ids: torch.Tensor
    layout: PromptLayout
    text: str = field(default="", repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def tail_length(self) -> int | None:
        """Tokens from the question's first token to the end (the tail of ``SRAConfig(tail="question")``),
        or None when the prompt has no question."""
        start = self.layout.question_start
        return None if start is None else self.num_tokens - start


class InputProcessor:
    """Tokenises prompts for one model and turns a call's settings into a checked request.

    ``name``: the model's name (in messages); ``vocab_size`` and ``eos_token_ids``: for the grammars
    of structured output; ``readout_profile``: how a request's readout is scored.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        vocab_size: int,
        eos_token_ids: frozenset[int],
        readout_profile: ReadoutProfile,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.readout_profile = readout_profile
        self._prompts = PromptTokenizer(tokenizer)
        self.json_schemas = JsonSchemaCompiler(tokenizer, vocab_size=vocab_size, stop_token_ids=eos_token_ids)

    def tokenize(self, prompt: Prompt, chat_template: bool) -> TokenizedPrompt:
        """Validate ``prompt`` and tokenise it as the model reads it: messages (or a string as one
        user message) through the chat template, content literal; a string with
        ``chat_template=False`` (or for a model without a template) as it is."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("The prompt is empty; pass some text or a list of chat messages.")
            if not chat_template or self.tokenizer.chat_template is None:
                return self._prompts.text(prompt, add_special_tokens=True)
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, Sequence):
            if not chat_template:
                raise ValueError("chat_template=False takes an already formatted string, not a list of messages.")
            messages = validate_messages(prompt)
        else:
            raise TypeError(
                "prompt must be a string or a list of {'role': ..., 'content': ...} messages, "
                f"got {type(prompt).__name__}"
            )
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.name} has no chat template; pass a plain string prompt instead of messages.")
        return self._prompts.chat(messages)

    def prepare(
        self,
        prompt: Prompt,
        *,
        tail_from: str | None = None,
        layout: TextLayout | None = None,
        chat_template: bool = True,
    ) -> PreparedPrompt:
        """Apply the chat template (messages, or a string wrapped as one user message) and tokenise
        once, every message's content read as literal text (special-token text in it is not a
        control token). ``layout`` marks the question and documents with text (see
        :class:`~sra_rag.layout.TextLayout`); without a question marker, the question is the last
        user message. ``tail_from="..."`` is shorthand for ``layout=TextLayout(question="...")``.
        ``chat_template=False`` reads a string prompt as already formatted (only the tokenizer's own
        special tokens are added). The ids are on the CPU."""
        markers = _markers(tail_from, layout)
        tokens = self.tokenize(prompt, chat_template)
        if tokens.offsets:
            placed = resolve(tokens.text, tokens.offsets, markers, tokens.question)
        elif markers is not None and (markers.question is not None or markers.documents):
            raise ValueError(f"{self.name}'s tokenizer gives no offset mapping, so layout markers cannot be placed.")
        else:
            placed = PromptLayout(len(tokens.input_ids))
        return PreparedPrompt(torch.tensor([tokens.input_ids]), placed, tokens.text)

    def count_tokens(self, text_or_messages: Prompt) -> int:
        """Tokens of a plain text (no special tokens), or of a whole chat prompt as the model reads
        it (template and generation prompt included) when given a list of messages."""
        if isinstance(text_or_messages, str):
            return len(self.tokenizer(text_or_messages, add_special_tokens=False)["input_ids"])
        return len(self.tokenize(text_or_messages, chat_template=True).input_ids)

    def request(
        self,
        prompt: Prompt,
        *,
        context_window: int,
        default_sra: SRAConfig,
        max_new_tokens: int = 256,
        sra: SRAConfig | None = None,
        stop: Sequence[str] | str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        penalize_prompt: bool = True,
        loop_guard: int = 0,
        seed: int | None = None,
        tail_from: str | None = None,
        layout: TextLayout | None = None,
        chat_template: bool = True,
        logits_processors: Sequence[Any] | None = None,
        logprobs: bool = False,
        json_schema: JsonSchema | None = None,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | bool | Mapping[str, Any] | None = None,
        readout: bool = True,
    ) -> Request:
        """Validate every setting and tokenise the prompt: the :class:`~sra_rag.generation.request.Request`
        that :meth:`submit` runs. Every other generation method calls this, so a bad setting fails
        here, at the call, with a message naming it. The arguments are those of :meth:`stream`."""
        sampling = sampling_settings(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            penalize_prompt=penalize_prompt,
            loop_guard=loop_guard,
            seed=seed,
            stop=stop,
        )
        processors = check_logits_processors(logits_processors)
        prompt, grammar = self.structured(prompt, chat_template, json_schema, tools, tool_choice)
        config = _config(default_sra if sra is None else sra, tail_from)
        prepared = self.prepare(prompt, tail_from=tail_from, layout=layout, chat_template=chat_template)
        check_fits(prepared.num_tokens, sampling.max_new_tokens, context_window)
        if not isinstance(readout, bool):
            raise TypeError(f"readout must be True or False, got {readout!r}")
        # Document reattention ranks the documents by the readout, so it records one whatever ``readout`` says.
        wants_readout = (readout or config.boosts_documents) and prepared.layout.question is not None
        wants_readout = wants_readout and bool(prepared.layout.documents)
        return Request(
            prompt_ids=tuple(prepared.input_ids[0].tolist()),
            sra=config,
            sampling=sampling,
            layout=prepared.layout,
            logits_processors=processors if grammar is None else (*processors, grammar),
            logprobs=_flag(logprobs, "logprobs"),
            readout=self.readout_profile if wants_readout else None,
        )

    def structured(
        self,
        prompt: Prompt,
        chat_template: bool,
        json_schema: JsonSchema | None,
        tools: Sequence[Tool | Mapping[str, Any]] | None,
        tool_choice: str | bool | Mapping[str, Any] | None,
    ) -> tuple[Prompt, JsonSchemaLogitsProcessor | None]:
        """The prompt (with the tools offered) and the grammar processor of a structured request."""
        if tools is None:
            if tool_choice is not None:
                raise ValueError("tool_choice was given without tools; pass tools=[...] as well")
            return prompt, None if json_schema is None else self.json_schemas.processor(json_schema)
        if json_schema is not None:
            raise ValueError("pass json_schema or tools, not both (a tool call has its own schema)")
        if not chat_template:
            raise ValueError("tools are offered in a system message; pass chat messages, not chat_template=False")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else validate_messages(prompt)
        calls = tool_request(messages, tools, tool_choice)
        if calls.schema is None:
            return calls.messages, None
        return calls.messages, self.json_schemas.processor(calls.schema, allow_text=calls.allow_text)


def check_fits(prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
    """Raise :class:`ContextWindowExceededError` unless the prompt and the tokens to generate fit."""
    if prompt_tokens + max_new_tokens > context_window:
        raise ContextWindowExceededError(prompt_tokens, max_new_tokens, context_window)


def _config(sra: SRAConfig, tail_from: str | None) -> SRAConfig:
    """The request's SRA settings; ``tail_from`` turns on the question tail."""
    config = as_sra_config(sra)
    if tail_from is not None and config.tail != "question":
        config = config.model_copy(update={"tail": "question"})
    return config


def _markers(tail_from: str | None, layout: TextLayout | None) -> TextLayout | None:
    if layout is not None and not isinstance(layout, TextLayout):
        raise TypeError(f"layout must be a TextLayout (text markers), got {type(layout).__name__}")
    if tail_from is None:
        return layout
    if not isinstance(tail_from, str) or not tail_from:
        raise ValueError(f"tail_from must be a non-empty string, got {tail_from!r}")
    if layout is not None and layout.question is not None:
        raise ValueError("pass the question either as tail_from or as layout.question, not both")
    return TextLayout(question=tail_from, documents=layout.documents if layout else ())


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
