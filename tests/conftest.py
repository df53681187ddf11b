"""Tiny offline engines for the core tests: a byte-level BPE tokenizer with ChatML turn markers,
trained in memory, and random Llama / Gemma 3 models (transformers' ModelTester pattern)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sra_rag import SRAEngine

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The harbour master keeps the ferry log. The lighthouse keeper's house has a green door.",
    "Question: what colour is the door? Answer briefly and cite the sources, like [1].",
    "Sources: [1] handbook.md [2] history.txt. Leave is approved by the team lead in October.",
    "system user assistant The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ~400-token byte-level BPE tokenizer with ``<|im_start|>``/``<|im_end|>`` special tokens and a
    ChatML chat template (``<|im_end|>`` ends a turn and is the end-of-sequence token)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


def tiny_model(family: str, vocab_size: int, seed: int = 0, logit_scale: float = 8.0) -> torch.nn.Module:
    """A random 4-layer model with grouped KV heads. ``logit_scale`` sharpens the output layer, so the
    top two logits are far apart and float rounding (a batch's padding) cannot swap a greedy choice."""
    torch.manual_seed(seed)
    common = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        initializer_range=0.2,  # peaky attention, like a trained model's, so SRA's edits are eligible
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "gemma3":  # sliding-window layers: a cache that cannot be batched
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=16, sliding_window=48, query_pre_attn_scalar=16))
    else:
        raise ValueError(family)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale)
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_model():
    """:func:`tiny_model`, for tests that build their own."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_engine(tiny_tokenizer) -> SRAEngine:
    """A tiny random Llama with SRA behind an engine (batches of up to 16). Its prefix cache is off:
    the batching tests count prefills, and a repeated prompt would be prefilled alone from the cache
    (tests/generation/test_prefix_cache.py tests the cache)."""
    return SRAEngine(tiny_model("llama", len(tiny_tokenizer)), tiny_tokenizer, name="tiny-llama", prefix_cache_bytes=0)
