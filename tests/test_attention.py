"""The SRA attention functions on random tensors: the fast path against the literal reference and the
spec's sanity properties (shared/SRA_SPEC.md, "Sanity properties that tests can check")."""

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sra_rag import SRAConfig, sra_settings
from sra_rag.attention import (
    edit_probabilities,
    resolve_config,
    sra_attention_forward,
    sra_reference_attention_forward,
)
from sra_rag.layout import PromptLayout
from sra_rag.schedule import layer_edits

NUM_LAYERS = 6
SMALL = SRAConfig(begin_length=4, tail_length=12)


def module(layer_idx, groups=2):
    return SimpleNamespace(
        layer_idx=layer_idx,
        config=SimpleNamespace(num_hidden_layers=NUM_LAYERS),
        num_key_value_groups=groups,
        is_causal=True,
    )


def random_qkv(batch=1, heads=4, kv_heads=2, n=96, head_dim=16, seed=0, dtype=torch.float32, sharpness=3.0):
    generator = torch.Generator().manual_seed(seed)
    # Larger queries make the attention rows peaky, like a trained model's, so edits are eligible.
    query = torch.randn(batch, heads, n, head_dim, generator=generator) * sharpness
    key = torch.randn(batch, kv_heads, n, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, n, head_dim, generator=generator)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def run(fn, layer, qkv, config, mask=None, groups=2):
    query, key, value = qkv
    output, weights = fn(
        module(layer, groups), query, key, value, mask, scaling=query.shape[-1] ** -0.5, sra_config=config
    )
    assert weights is None
    return output


def edited_rows(n, layer, config):
    return sorted({row for edit in layer_edits(n, layer, NUM_LAYERS, config) for row in edit.rows})


@pytest.mark.parametrize("layer", range(NUM_LAYERS))
@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        SMALL.model_copy(update={"beta_inner": 1.0, "beta_outer": 0.0}),
        SMALL.model_copy(update={"alpha_inner": 2.0, "alpha_outer": 0.05}),
        SMALL.model_copy(update={"dynamic_tail": True, "tail_divisor": 6}),
        SMALL.model_copy(update={"outer_target": "attention"}),
        SMALL.model_copy(update={"renormalize": True}),
        SMALL.model_copy(update={"outer_layers": (0.5, 1.0), "inner": False}),
    ],
    ids=["small", "beta1-0", "alphas", "dynamic-tail", "attention-target", "renormalize", "outer-band"],
)
def test_fast_path_equals_the_literal_reference(layer, config):
    qkv = random_qkv(n=96, seed=layer)
    fast = run(sra_attention_forward, layer, qkv, config)
    reference = run(sra_reference_attention_forward, layer, qkv, config)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def test_edits_change_the_edited_rows_and_nothing_else():
    qkv = random_qkv(n=96)
    layer = 2
    stock = run(sdpa_attention_forward, layer, qkv, None)
    fast = run(sra_attention_forward, layer, qkv, SMALL)
    rows = edited_rows(96, layer, SMALL)
    assert rows, "the test needs an active edit"
    others = [i for i in range(96) if i not in rows]
    assert torch.equal(fast[:, others], stock[:, others])  # bit-for-bit
    assert not torch.allclose(fast[:, rows], stock[:, rows], atol=1e-3)


def test_disabled_and_last_layer_are_stock():
    qkv = random_qkv(n=96)
    stock = run(sdpa_attention_forward, 1, qkv, None)
    assert torch.equal(run(sra_attention_forward, 1, qkv, SRAConfig(enabled=False)), stock)
    last = NUM_LAYERS - 1
    assert torch.equal(run(sra_attention_forward, last, qkv, SMALL), run(sdpa_attention_forward, last, qkv, None))


def test_short_prompts_are_stock_without_error():
    config = SRAConfig()  # b + t + 3 = 303
    qkv = random_qkv(n=64)
    for layer in range(NUM_LAYERS):
        assert torch.equal(
            run(sra_attention_forward, layer, qkv, config), run(sdpa_attention_forward, layer, qkv, None)
        )


def test_decoding_steps_are_ordinary_attention():
    query, key, value = random_qkv(n=96)
    step = (query[:, :, -1:], key, value)
    assert torch.equal(run(sra_attention_forward, 2, step, SMALL), run(sdpa_attention_forward, 2, step, None))


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_row_sums_follow_beta(beta):
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5, 40, generator=generator) * 3, dim=-1)
    targets = torch.arange(10, 16)
    tau = 0.02
    edited = probs.clone()
    eligible = edit_probabilities(edited, targets, tau, beta)
    assert eligible.any()
    removed = (probs * (probs < tau)).sum(-1)
    expected = 1 + (beta - 1) * removed
    torch.testing.assert_close(edited.sum(-1)[eligible], expected[eligible], atol=1e-5, rtol=1e-5)
    # survivors keep their weight outside the target block; small weights are gone
    outside = torch.ones(40, dtype=torch.bool)
    outside[targets] = False
    kept = edited[..., outside][eligible]
    assert torch.all((kept == 0) | (kept >= tau))


def test_renormalized_rows_sum_to_one():
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 4, 30, generator=generator) * 3, dim=-1)
    eligible = edit_probabilities(probs, slice(5, 12), 0.02, 4.0, renormalize=True)
    assert eligible.any()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4))


def test_batch_with_padding_equals_each_sequence_alone():
    n = 96
    query, key, value = random_qkv(batch=2, n=n)
    # sequence 0 right-padded by 10, sequence 1 left-padded by 20
    real = torch.ones(2, n, dtype=torch.bool)
    real[0, n - 10 :] = False
    real[1, :20] = False
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = (causal[None] & real[:, None, :])[:, None]
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        batched = run(fn, 2, (query, key, value), SMALL, mask=mask)
        alone0 = run(fn, 2, (query[:1, :, : n - 10], key[:1, :, : n - 10], value[:1, :, : n - 10]), SMALL)
        alone1 = run(fn, 2, (query[1:, :, 20:], key[1:, :, 20:], value[1:, :, 20:]), SMALL)
        torch.testing.assert_close(batched[0, : n - 10], alone0[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[1, 20:], alone1[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_fast_path_close_to_reference(dtype):
    qkv = random_qkv(n=96, dtype=dtype)
    fast = run(sra_attention_forward, 2, qkv, SMALL).float()
    reference = run(sra_reference_attention_forward, 2, qkv, SMALL).float()
    torch.testing.assert_close(fast, reference, atol=3e-2, rtol=3e-2)
    assert fast.isfinite().all()


def test_without_grouped_heads():
    qkv = random_qkv(heads=4, kv_heads=4, n=80)
    fast = run(sra_attention_forward, 1, qkv, SMALL, groups=1)
    reference = run(sra_reference_attention_forward, 1, qkv, SMALL, groups=1)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def test_row_chunking_does_not_change_the_result(monkeypatch):
    qkv = random_qkv(n=96)
    whole = run(sra_attention_forward, 2, qkv, SMALL)
    monkeypatch.setattr("sra_rag.attention.ROW_CHUNK_ELEMENTS", 4 * 96 * 3)  # 3 rows per chunk
    torch.testing.assert_close(run(sra_attention_forward, 2, qkv, SMALL), whole, atol=1e-6, rtol=1e-6)


def test_settings_resolution_order():
    assert resolve_config(None) == SRAConfig()
    mine = SRAConfig(beta_outer=2.0)
    with sra_settings(mine):
        assert resolve_config(None) is mine
        explicit = SRAConfig(beta_outer=3.0)
        assert resolve_config(explicit) is explicit
    assert resolve_config(None) == SRAConfig()
    with pytest.raises(TypeError, match="SRAConfig"):
        resolve_config({"beta_outer": 2.0})  # type: ignore[arg-type]


def test_module_without_layer_index_gets_a_clear_error():
    query, key, value = random_qkv(n=96)
    with pytest.raises(ValueError, match="layer index"):
        sra_attention_forward(SimpleNamespace(num_key_value_groups=2), query, key, value, None, sra_config=SMALL)


def test_interleaved_padding_gets_a_clear_error():
    n = 96
    query, key, value = random_qkv(n=n)
    real = torch.ones(1, n, dtype=torch.bool)
    real[0, 40] = False
    mask = (torch.ones(n, n, dtype=torch.bool).tril()[None] & real[:, None, :])[:, None]
    with pytest.raises(ValueError, match="contiguous"):
        run(sra_attention_forward, 2, (query, key, value), SMALL, mask=mask)


def padded_mask(n: int, pads: list[tuple[int, int]]) -> torch.Tensor:
    """A boolean causal mask ``(batch, 1, n, n)`` with ``(left, right)`` padding per row."""
    real = torch.ones(len(pads), n, dtype=torch.bool)
    for row, (left, right) in enumerate(pads):
        real[row, :left] = False
        real[row, n - right :] = False
    return (torch.ones(n, n, dtype=torch.bool).tril()[None] & real[:, None, :])[:, None]


# One row per setting: the spec's geometry, SRA off, the question tail with its layout, the attention
# target with a dynamic tail; real lengths 96, 86, 76 and 90 (left and right padding).
ROW_CONFIGS = [
    SMALL,
    SRAConfig(enabled=False),
    SMALL.model_copy(update={"tail": "question", "inner": False}),
    SMALL.model_copy(update={"outer_target": "attention", "dynamic_tail": True, "tail_divisor": 6}),
]
ROW_PADS = [(0, 0), (10, 0), (0, 20), (4, 2)]
ROW_LAYOUTS = [None, None, PromptLayout(76, question=(50, 60)), PromptLayout(90, question=(80, 85))]


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_per_row_settings_fast_path_equals_reference_and_each_row_alone(layer):
    n = 96
    qkv = random_qkv(batch=4, n=n, seed=layer)
    mask = padded_mask(n, ROW_PADS)
    rows = {}
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        query, key, value = qkv
        rows[fn], _ = fn(
            module(layer), query, key, value, mask, scaling=0.25, sra_config=ROW_CONFIGS, sra_layout=ROW_LAYOUTS
        )
    fast, reference = rows[sra_attention_forward], rows[sra_reference_attention_forward]
    for row, (left, right) in enumerate(ROW_PADS):
        real = slice(left, n - right)
        torch.testing.assert_close(fast[row, real], reference[row, real], atol=1e-5, rtol=1e-4)
        alone = tuple(t[row : row + 1, :, real] for t in qkv)
        expected, _ = sra_attention_forward(
            module(layer), *alone, None, scaling=0.25, sra_config=ROW_CONFIGS[row], sra_layout=ROW_LAYOUTS[row]
        )
        torch.testing.assert_close(fast[row, real], expected[0], atol=1e-5, rtol=1e-4)
    # The rows' settings matter: the question row differs from the same row with the fixed tail.
    query, key, value = (t[2:3, :, :76] for t in qkv)
    fixed, _ = sra_attention_forward(module(layer), query, key, value, None, scaling=0.25, sra_config=ROW_CONFIGS[0])
    assert not torch.allclose(fixed[0], fast[2, :76], atol=1e-4)


def test_question_tail_reads_the_layout():
    n, layer = 96, 2
    question = SMALL.model_copy(update={"tail": "question"})
    qkv = random_qkv(n=n)
    query, key, value = qkv
    from_layout, _ = sra_attention_forward(
        module(layer), query, key, value, None, sra_config=question, sra_layout=PromptLayout(n, question=(70, 80))
    )
    as_length = run(sra_attention_forward, layer, qkv, SMALL.model_copy(update={"tail_length": n - 70}))
    assert torch.equal(from_layout, as_length)
    without = run(sra_attention_forward, layer, qkv, question)  # no layout: the fixed tail
    assert torch.equal(without, run(sra_attention_forward, layer, qkv, SMALL))


def test_per_row_arguments_are_checked():
    query, key, value = random_qkv(batch=2, n=96)
    with pytest.raises(ValueError, match="2 rows"):
        sra_attention_forward(module(2), query, key, value, None, sra_config=[SMALL])
    with pytest.raises(ValueError, match="describes 50 tokens"):
        sra_attention_forward(module(2), query, key, value, None, sra_config=SMALL, sra_layout=PromptLayout(50))
    with pytest.raises(TypeError, match="PromptLayout"):
        sra_attention_forward(module(2), query, key, value, None, sra_config=SMALL, sra_layout=["x", None])


# A prefill after a cached prefix (sra_suffix=True): the query is the last rows of the sequence. The
# question-tail settings edit only rows after the prefix, so the suffix's rows equal the full prefill's.
SUFFIX_CONFIGS = [
    SMALL.model_copy(update={"tail": "question", "inner": False}),
    SRAConfig.preset("recommended"),
    SMALL.model_copy(update={"tail": "question", "inner": False, "outer_target": "attention", "renormalize": True}),
]


def _suffix_call(fn, layer, qkv, cached, config, layout, mask=None, readout=None):
    query, key, value = qkv
    output, _ = fn(
        module(layer),
        query[:, :, cached:],
        key,
        value,
        mask,
        scaling=0.25,
        sra_config=config,
        sra_layout=layout,
        sra_readout=readout,
        sra_suffix=True,
    )
    return output


@pytest.mark.parametrize("layer", [1, 3, 4])
@pytest.mark.parametrize("config", SUFFIX_CONFIGS, ids=["question-tail", "recommended", "attention-renormalize"])
@pytest.mark.parametrize("cached", [1, 40, 70])
def test_suffix_after_a_cached_prefix_equals_the_full_prefill(layer, config, cached):
    n = 96
    qkv = random_qkv(n=n, seed=layer)
    layout = PromptLayout(n, question=(70, 80))
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        query, key, value = qkv
        full, _ = fn(module(layer), query, key, value, None, scaling=0.25, sra_config=config, sra_layout=layout)
        suffix = _suffix_call(fn, layer, qkv, cached, config, layout)
        torch.testing.assert_close(suffix[0], full[0, cached:], atol=1e-5, rtol=1e-4)
    fast = _suffix_call(sra_attention_forward, layer, qkv, cached, config, layout)
    reference = _suffix_call(sra_reference_attention_forward, layer, qkv, cached, config, layout)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)


def test_suffix_with_left_padding_and_per_row_settings():
    """A left-padded batch of two suffixes over keys of 96 positions (row 1 has 10 padding keys)."""
    n, cached, layer = 96, 60, 2
    qkv = random_qkv(batch=2, n=n, seed=5)
    q_len = n - cached
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, :10] = False
    causal = torch.ones(q_len, n, dtype=torch.bool).tril(cached)
    mask = (causal[None] & real[:, None, :])[:, None]
    configs = [SUFFIX_CONFIGS[0], SUFFIX_CONFIGS[2]]
    layouts = [PromptLayout(n, question=(70, 80)), PromptLayout(n - 10, question=(64, 70))]
    outputs = {
        fn: _suffix_call(fn, layer, qkv, cached, configs, layouts, mask=mask)
        for fn in (sra_attention_forward, sra_reference_attention_forward)
    }
    torch.testing.assert_close(
        outputs[sra_attention_forward], outputs[sra_reference_attention_forward], atol=1e-5, rtol=1e-4
    )
    query, key, value = (t[1:, :, 10:] for t in qkv)
    alone, _ = sra_attention_forward(
        module(layer), query, key, value, None, scaling=0.25, sra_config=configs[1], sra_layout=layouts[1]
    )
    torch.testing.assert_close(outputs[sra_attention_forward][1], alone[0, cached - 10 :], atol=1e-5, rtol=1e-4)


def test_suffix_readout_and_document_reattention_equal_the_full_prefill():
    from sra_rag.readout.calibration import ReadoutProfile
    from sra_rag.readout.recorder import ReadoutRecorder

    n, cached = 96, 64
    layout = PromptLayout(n, question=(70, 80), documents=((4, 30), (30, 64)))
    profile = ReadoutProfile.uncalibrated("tiny", NUM_LAYERS)
    config = SRAConfig.preset("documents")
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        recorders = {
            "full": ReadoutRecorder(layout, profile=profile),
            "suffix": ReadoutRecorder(layout, profile=profile),
        }
        for layer in range(NUM_LAYERS):
            qkv = random_qkv(n=n, seed=layer)
            query, key, value = qkv
            full, _ = fn(
                module(layer),
                query,
                key,
                value,
                None,
                scaling=0.25,
                sra_config=config,
                sra_layout=layout,
                sra_readout=recorders["full"],
            )
            suffix = _suffix_call(fn, layer, qkv, cached, config, layout, readout=recorders["suffix"])
            torch.testing.assert_close(suffix[0], full[0, cached:], atol=1e-5, rtol=1e-4)
        full_readout, suffix_readout = recorders["full"].readout(), recorders["suffix"].readout()
        assert full_readout is not None and suffix_readout is not None
        assert full_readout.num_layers == suffix_readout.num_layers


def test_suffix_whose_edits_reach_into_the_prefix_is_refused():
    n, layer = 96, 2
    qkv = random_qkv(n=n)
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        with pytest.raises(ValueError, match="cached prefix"):
            _suffix_call(fn, layer, qkv, 60, SMALL, None)  # the inner loop edits rows 52-61 here
        with pytest.raises(ValueError, match="cached prefix"):
            _suffix_call(fn, layer, qkv, 75, SUFFIX_CONFIGS[0], PromptLayout(n, question=(70, 80)))
