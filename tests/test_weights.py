"""Lower-precision weights (sra_rag/generation/weights.py): what each format costs against fp32 on tiny random
models, attention left in fp32 (the literal SRA reference still matches the fast path), the loading
option's checks."""

import pytest
import torch
from torch import nn

from sra_rag import SRAConfig, SRAEngine
from sra_rag.generation.weights import (
    INT4_GROUP,
    MORE_BITS,
    PRODUCT_ROWS,
    LowPrecisionLinear,
    RescoredOutput,
    apply_weights,
    default_weights,
    more_bits,
    quantize_int4,
)


def _copy(model: nn.Module, make) -> nn.Module:
    clone = make()
    clone.load_state_dict(model.state_dict())
    return clone.eval()


@pytest.fixture()
def tiny_pair(tiny_tokenizer, make_tiny_model):
    return lambda: make_tiny_model("llama", len(tiny_tokenizer), logit_scale=1.0)


@pytest.mark.parametrize("weights, tolerance", [("bf16", 0.05), ("int8", 0.08)])
def test_low_precision_logits_stay_close_to_fp32(tiny_pair, weights, tolerance):
    reference = tiny_pair()
    low = apply_weights(_copy(reference, tiny_pair), weights)
    linears = [module for module in low.model.layers.modules() if isinstance(module, LowPrecisionLinear)]
    assert len(linears) == 4 * 7  # q, k, v, o, gate, up, down per layer
    # the output layer: bf16 as the others, or 8-bit scores for a 4-bit layer's shortlist
    assert isinstance(low.lm_head, LowPrecisionLinear if weights == "bf16" else RescoredOutput)
    assert not any(type(module) is nn.Linear for module in low.modules())
    assert low.model.embed_tokens.weight.dtype == torch.float32  # the embedding and norms stay fp32
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = reference(ids).logits, low(ids).logits
    assert got.dtype == torch.float32
    # the scores that choose tokens: each position's 16 best (the output layer rescores its 64 best at 8 bits)
    best = want.topk(16, dim=-1).indices
    error = (got.gather(-1, best) - want.gather(-1, best)).norm() / want.gather(-1, best).norm()
    assert error < tolerance
    # A random model's top logits are close; a trained one's agree more (docs/bench/cpu-weights.md).
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


@pytest.mark.parametrize("weights, tolerance", [("bf16", 0.01), ("int8", 0.01), ("int4", 0.1)])
def test_each_layer_stays_within_its_format_s_rounding(tiny_pair, weights, tolerance):
    """Layer by layer against fp32 (a random 4-layer model amplifies 4-bit rounding into its logits,
    so int4's whole-model cost is measured on the real models: docs/bench/cpu-weights.md)."""
    reference = tiny_pair()
    low = apply_weights(_copy(reference, tiny_pair), weights)
    inputs = {width: torch.randn(7, width, generator=torch.Generator().manual_seed(width)) for width in (64, 128)}
    layers = dict(reference.model.layers.named_modules())
    checked = 0
    for name, module in low.model.layers.named_modules():
        if isinstance(module, LowPrecisionLinear):
            # int4: every projection packs (64/128 wide); layers 2 and 3 of 4 keep v_proj and down_proj at 8 bits
            eight = weights == "int4" and name.split(".")[-1] in MORE_BITS and int(name.split(".")[0]) in (2, 3)
            assert module.weights == ("int8" if eight else weights), name
            fp32 = layers[name]
            with torch.inference_mode():
                want, got = fp32(inputs[fp32.in_features]), module(inputs[fp32.in_features])
            assert (got - want).norm() / want.norm() < tolerance
            checked += 1
    assert checked == 4 * 7
    if weights == "bf16":
        assert low.lm_head.weights == "bf16"
    else:  # 8-bit scores for the output layer's shortlist (below)
        assert isinstance(low.lm_head, RescoredOutput) and low.lm_head.fine.weights == "int8"


def test_rescored_output_layer_gives_the_8_bit_scores_of_its_shortlist():
    """Every token scored at 4 bits, the shortlist's scores replaced by the 8-bit layer's: the best
    token is the 8-bit layer's own, and the shortlist's scores equal it up to summation order."""
    linear = nn.Linear(64, 480)
    with torch.no_grad():
        linear.weight.mul_(4.0)  # spread the scores as a trained output layer's are
    layer = RescoredOutput(linear, shortlist=16)
    eight, four = LowPrecisionLinear(linear, "int8"), LowPrecisionLinear(linear, "int4")
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want, coarse = layer(x), eight(x), four(x)
    assert got.shape == (3, 5, 480) and got.dtype == torch.float32
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    shortlist = coarse.topk(16, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, shortlist), want.gather(-1, shortlist), atol=0.05, rtol=0.01)
    outside = torch.ones_like(got, dtype=torch.bool).scatter(-1, shortlist, False)
    assert torch.equal(got[outside], coarse[outside])  # the rest keep their 4-bit scores
    assert not torch.allclose(coarse.gather(-1, shortlist), want.gather(-1, shortlist), atol=0.05, rtol=0.01)
    with pytest.raises(ValueError, match="at least 1 token"):
        RescoredOutput(linear, shortlist=0)
    assert RescoredOutput(nn.Linear(32, 16), shortlist=64).shortlist == 16  # never more than the vocabulary


def test_int8_gives_the_same_outputs_through_its_kernel_and_through_a_product_of_its_codes():
    """Rows below PRODUCT_ROWS (decoding) go through ATen's int8 kernel, more (a prompt) through one
    bf16 product of the codes: the same weights, equal up to bf16 rounding of the outputs."""
    layer = LowPrecisionLinear(nn.Linear(64, 48), "int8")
    x = torch.randn(PRODUCT_ROWS + 4, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        many = layer(x)  # the product
        few = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])  # the kernel, a row at a time
    torch.testing.assert_close(many, few, atol=0.02, rtol=0.01)


def test_int4_keeps_llama_cpp_s_layers_at_8_bits():
    """llama.cpp's Q4_K_M rule (use_more_bits): the first and last eighth and every third layer between
    (the packaged Qwen2.5-Coder GGUF keeps attn_v and ffn_down at 6-8 bits in 12 of its 24 layers too)."""
    assert [layer for layer in range(24) if more_bits(layer, 24)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert [layer for layer in range(32) if more_bits(layer, 32)] == [
        0,
        1,
        2,
        3,
        6,
        9,
        12,
        15,
        18,
        21,
        24,
        27,
        28,
        29,
        30,
        31,
    ]


def test_an_output_layer_the_4_bit_kernel_cannot_pack_stays_int8():
    model = nn.Sequential(nn.Linear(64, 40))
    model.get_output_embeddings = lambda: model[0]  # type: ignore[method-assign]
    apply_weights(model, "int4")
    assert isinstance(model[0], LowPrecisionLinear) and model[0].weights == "int8"


def test_int4_is_exact_on_weights_already_on_a_4_bit_grid():
    """A weight whose every group of 32 holds 16 evenly spaced levels (a GGUF 4-bit block de-quantised)
    is packed without loss: the kernel's product equals fp32's on the same weight up to bf16 rounding."""
    generator = torch.Generator().manual_seed(3)
    out_features, in_features = 48, 4 * INT4_GROUP
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator).float()
    codes[:, ::INT4_GROUP] = 0.0  # each group spans the full range of codes, so min/max recover the grid
    codes[:, 1::INT4_GROUP] = 15.0
    groups = in_features // INT4_GROUP
    step = torch.rand(out_features, groups, 1, generator=generator) * 0.1 + 0.01
    low = torch.randn(out_features, groups, 1, generator=generator) * 0.1
    # bf16 scales: choose levels bf16 represents exactly, so the only rounding is the activation's
    step, low = step.bfloat16().float(), low.bfloat16().float()
    weight = (codes.reshape(out_features, groups, INT4_GROUP) * step + low).reshape(out_features, in_features)
    x = torch.randn(5, in_features, generator=generator).bfloat16()
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    got = LowPrecisionLinear(linear, "int4")(x.float())
    want = x.float() @ weight.t()
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
    packed, scales_and_zeros = quantize_int4(weight)
    assert scales_and_zeros.shape == (groups, out_features, 2) and packed.dtype == torch.uint8
    assert packed.numel() == out_features * in_features // 2  # two codes per byte


def test_int4_falls_back_to_int8_where_the_kernel_cannot_pack():
    model = nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 32))  # 40 outputs: not a multiple of 16
    apply_weights(model, "int4")
    assert [layer.weights for layer in model] == ["int8", "int8"]  # 40 inputs: not a multiple of 32
    with pytest.raises(ValueError, match="use int8 for this layer"):
        LowPrecisionLinear(nn.Linear(64, 40), "int4")


@pytest.mark.parametrize("weights", ["bf16", "int8", "int4"])
def test_fast_path_equals_the_literal_reference_with_low_precision_weights(tiny_pair, weights):
    model = apply_weights(tiny_pair(), weights)
    from sra_rag.attention import register

    register()
    config = SRAConfig(begin_length=4, tail_length=12)
    ids = torch.randint(3, 300, (1, 96), generator=torch.Generator().manual_seed(1))
    results = {}
    for implementation in ("sra", "sra_reference", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            results[implementation] = model(ids, sra_config=config).logits[0, -20:]
    torch.testing.assert_close(results["sra"], results["sra_reference"], atol=1e-4, rtol=1e-4)
    assert (results["sdpa"] - results["sra"]).abs().mean() > 1e-3  # SRA changed something


def test_tied_output_layer_is_untied_and_the_embedding_kept(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tiny_tokenizer),
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    apply_weights(model, "int8")
    assert isinstance(model.lm_head, RescoredOutput) and model.lm_head.fine.weight.dtype == torch.int8
    assert model.model.embed_tokens.weight.dtype == torch.float32 and not model.config.tie_word_embeddings


def test_loading_option_is_checked():
    with pytest.raises(ValueError, match="weights must be one of"):
        apply_weights(nn.Sequential(nn.Linear(2, 2)), "int3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU option for fp32 models"):
        SRAEngine.from_pretrained(weights="int8", dtype="bfloat16")
    assert default_weights(torch.device("cpu"), torch.float32) == "fp32"
    assert default_weights(torch.device("cpu"), torch.bfloat16) == "fp32"


def test_a_model_s_preferred_format_is_its_default_where_the_cpu_multiplies_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr("sra_rag.generation.weights.native_bf16", lambda: True)
    assert default_weights(cpu, torch.float32, "int8") == "int8"
    assert default_weights(cpu, torch.float32, None) == "fp32"  # a model without a measured format
    assert default_weights(cpu, torch.bfloat16, "int8") == "fp32"  # the formats convert fp32 models
    assert default_weights(cuda, torch.float32, "int8") == "fp32"  # a CPU option
    monkeypatch.setattr("sra_rag.generation.weights.native_bf16", lambda: False)
    assert default_weights(cpu, torch.float32, "int8") == "fp32"  # emulated bf16 would be slower than fp32


def test_from_pretrained_takes_the_model_s_preferred_format(monkeypatch):
    from sra_rag.config import ModelDefaults

    seen = {}

    def load(*args, **kwargs):
        raise LookupError("stop after choosing")

    def choose(device, dtype, preferred=None):
        seen["preferred"] = preferred
        return "fp32"

    monkeypatch.setattr("sra_rag.engine.load", load)
    monkeypatch.setattr("sra_rag.engine.default_weights", choose)
    with pytest.raises(LookupError):
        SRAEngine.from_pretrained("smollm2-135m", defaults=ModelDefaults(weights="int4"))
    assert seen["preferred"] == "int4"
    with pytest.raises(ValueError, match="weights"):
        ModelDefaults(weights="int3")  # type: ignore[arg-type]
