"""SRA inside tiny random models of several RoPE families (transformers' ModelTester pattern)."""

import copy

import pytest
import torch
from transformers import (
    DynamicCache,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sra_rag import ModelNotSupportedError, SRAConfig, register, sra_settings
from sra_rag.layout import PromptLayout
from sra_rag.models import check_model

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=1024,
    initializer_range=0.2,  # peaky attention, like a trained model, so SRA's edits are eligible
)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)),
    # Gemma 3 mixes sliding-window and global layers; the window (48) is shorter than the prompts.
    "gemma3": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=48, query_pre_attn_scalar=16)
    ),
}
CONFIG = SRAConfig(begin_length=8, tail_length=16)
N = 160


@pytest.fixture(scope="module", autouse=True)
def _register():
    register()


@pytest.fixture(params=sorted(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return FAMILIES[request.param]().eval()


def logits(model, implementation, input_ids, **kwargs):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(input_ids, **kwargs).logits


def ids(batch=1, n=N, seed=0):
    return torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_fast_path_equals_reference_and_differs_from_stock(model):
    input_ids = ids()
    fast = logits(model, "sra", input_ids, sra_config=CONFIG)
    reference = logits(model, "sra_reference", input_ids, sra_config=CONFIG)
    stock = logits(model, "sdpa", input_ids)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
    assert (fast - stock).abs().max() > 1e-2


def test_disabled_equals_stock_sdpa(model):
    input_ids = ids()
    off = logits(model, "sra", input_ids, sra_config=SRAConfig(enabled=False))
    assert torch.equal(off, logits(model, "sdpa", input_ids))


@pytest.mark.parametrize("implementation", ["sra", "sra_reference"])
def test_padded_batch_equals_each_sequence_alone(model, implementation):
    input_ids = ids(batch=2)
    mask = torch.ones(2, N, dtype=torch.long)
    mask[0, N - 25 :] = 0  # right padding
    mask[1, :30] = 0  # left padding
    batched = logits(model, implementation, input_ids, attention_mask=mask, sra_config=CONFIG)
    alone_right = logits(model, implementation, input_ids[:1, : N - 25], sra_config=CONFIG)
    position_ids = torch.arange(N - 30).unsqueeze(0)
    alone_left = logits(model, implementation, input_ids[1:, 30:], position_ids=position_ids, sra_config=CONFIG)
    torch.testing.assert_close(batched[0, : N - 25], alone_right[0], atol=2e-4, rtol=1e-4)
    left_positions = mask[1].cumsum(-1) - 1
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        batched_left = model(
            input_ids, attention_mask=mask, position_ids=left_positions.clamp(min=0).expand(2, -1), sra_config=CONFIG
        ).logits
    torch.testing.assert_close(batched_left[1, 30:], alone_left[0], atol=2e-4, rtol=1e-4)


def test_per_row_settings_in_a_left_padded_batch(model):
    """Three prompts of different lengths, left-padded as the scheduler pads them, each with its own
    settings and layout: the fast path equals the reference, and each row equals its prompt alone."""
    lengths = [N, N - 30, N - 55]
    configs = [CONFIG, SRAConfig(enabled=False), CONFIG.model_copy(update={"tail": "question", "inner": False})]
    layouts = [None, None, PromptLayout(N - 55, question=(80, 90))]
    input_ids = ids(batch=3)
    mask = torch.ones(3, N, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, : N - length] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(attention_mask=mask, position_ids=positions, sra_config=configs, sra_layout=layouts)
    fast = logits(model, "sra", input_ids, **kwargs)
    reference = logits(model, "sra_reference", input_ids, **kwargs)
    for row, length in enumerate(lengths):
        torch.testing.assert_close(fast[row, N - length :], reference[row, N - length :], atol=2e-4, rtol=1e-4)
        alone = logits(
            model, "sra", input_ids[row : row + 1, N - length :], sra_config=configs[row], sra_layout=layouts[row]
        )
        torch.testing.assert_close(fast[row, N - length :], alone[0], atol=2e-4, rtol=1e-4)


def test_decode_steps_after_an_sra_prefill_are_ordinary_attention(model):
    input_ids = ids()
    model.set_attn_implementation("sra")
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids, cache=cache, use_cache=True, sra_config=CONFIG)
        same_cache = copy.deepcopy(cache)
        sra_step = model(ids(n=1, seed=1), cache=cache, use_cache=True, sra_config=CONFIG).logits
        model.set_attn_implementation("sdpa")
        stock_step = model(ids(n=1, seed=1), cache=same_cache, use_cache=True).logits
    torch.testing.assert_close(sra_step, stock_step, atol=1e-6, rtol=1e-6)


def test_generate_uses_context_settings(model):
    input_ids = ids()
    model.set_attn_implementation("sra")
    with torch.no_grad():
        expected = model(input_ids, sra_config=CONFIG).logits[0, -1].argmax()
        with sra_settings(CONFIG):
            # an explicit mask: generate would otherwise mask random ids that equal the pad token
            mask = torch.ones_like(input_ids)
            generated = model.generate(input_ids, attention_mask=mask, max_new_tokens=1, do_sample=False)
    assert generated[0, -1] == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_is_that_of_the_stock_kernels(model, dtype):
    """In half precision the SRA fast path keeps the fp32 result's top-1 tokens about as well as stock
    SDPA keeps its own. (Logit errors can be larger than stock's: a weight that lands on the other
    side of a threshold flips an edit, so exact closeness is only asserted per layer.)"""
    input_ids = ids()
    exact_sra = logits(model, "sra_reference", input_ids, sra_config=CONFIG)
    exact_stock = logits(model, "sdpa", input_ids)
    model = model.to(dtype)
    half_sra = logits(model, "sra", input_ids, sra_config=CONFIG).float()
    half_stock = logits(model, "sdpa", input_ids).float()
    assert half_sra.isfinite().all()
    stock_agreement = (half_stock.argmax(-1) == exact_stock.argmax(-1)).float().mean()
    sra_agreement = (half_sra.argmax(-1) == exact_sra.argmax(-1)).float().mean()
    assert sra_agreement >= stock_agreement - 0.05, (float(sra_agreement), float(stock_agreement))


def test_models_without_rope_are_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=128))
    with pytest.raises(ModelNotSupportedError, match="rotary"):
        check_model(gpt2)


def test_rope_families_are_accepted(model):
    check_model(model)


def test_models_outside_the_attention_interface_are_refused(model):
    model._supports_attention_backend = False
    with pytest.raises(ModelNotSupportedError, match="AttentionInterface"):
        check_model(model)
