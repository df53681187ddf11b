"""The fused Triton kernels against the literal reference (``sra_reference``): every preset, grouped
heads, padding, odd lengths and head sizes, boolean and additive masks, half precision, the readout and
document reattention. Without a GPU they run under Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, see conftest.py), so the shapes are small; ``tests/test_cuda.py`` repeats them
at real sizes on a GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sra_rag import SRAConfig  # noqa: E402
from sra_rag.attention import sra_attention_forward, sra_reference_attention_forward  # noqa: E402
from sra_rag.kernels import load_triton_rows  # noqa: E402
from sra_rag.layout import PromptLayout  # noqa: E402
from sra_rag.readout.recorder import ReadoutRecorder  # noqa: E402
from sra_rag.schedule import layer_edits  # noqa: E402
from tests.readout.test_documents import profile  # noqa: E402
from tests.readout.test_recorder import LAYOUTS, PADS  # noqa: E402
from tests.test_attention import SMALL, module, padded_mask, random_qkv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_LAYERS = 6  # of tests.test_attention.module


@pytest.fixture
def calls(monkeypatch):
    """Force the kernels (``SRA_RAG_KERNEL=triton``) and count the launches of each entry point, so a
    test sees that the kernels, not the torch path, computed its rows."""
    monkeypatch.setenv("SRA_RAG_KERNEL", "triton")
    module_ = load_triton_rows()
    counts = dict.fromkeys(("edit_rows", "column_mass", "boost_rows"), 0)
    for name in counts:
        original = getattr(module_, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module_, name, counted)
    return counts


def qkv_on_device(**kwargs):
    return tuple(t.to(DEVICE) for t in random_qkv(**kwargs))


def both(layer, qkv, config, mask=None, layout=None, readout=None, groups=None, scaling=0.25):
    """The fast path's output (kernels forced by the caller's fixture) and the reference's."""
    groups = groups or qkv[0].shape[1] // qkv[1].shape[1]
    outputs = []
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        recorders = readout() if readout else None
        output, _ = fn(
            module(layer, groups), *qkv, mask, scaling=scaling, sra_config=config, sra_layout=layout,
            sra_readout=recorders,
        )  # fmt: skip
        outputs.append((output, recorders))
    return outputs


PRESET_CASES = [  # (preset, prompt length, layer): lengths where the preset's loops are active
    ("paper", 320, 1),
    ("paper", 320, 3),
    ("demo", 96, 2),
    ("demo", 96, 4),
    ("recommended", 120, 4),
    ("off", 96, 2),
]


@pytest.mark.parametrize(("preset", "n", "layer"), PRESET_CASES)
def test_every_preset_equals_the_reference(calls, preset, n, layer):
    config = SRAConfig.preset(preset)
    layout = PromptLayout(n, question=(n - 20, n - 12)) if config.tail == "question" else None
    qkv = qkv_on_device(n=n, seed=layer)
    (fast, _), (reference, _) = both(layer, qkv, config, layout=layout)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)
    edits = layer_edits(n, layer, NUM_LAYERS, config, layout.question_start if layout else None)
    assert calls["edit_rows"] == len(edits) and (preset == "off") == (not edits)
    if edits:  # the edits act: the output is not the stock one
        stock, _ = sra_attention_forward(module(layer), *qkv, None, scaling=0.25, sra_config=SRAConfig(enabled=False))
        assert (fast - stock).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(4, 4, 16), (4, 2, 24), (8, 2, 8), (2, 1, 160)],
    ids=["mha", "gqa2-d24", "gqa4-d8", "gqa2-d160"],
)
def test_grouped_heads_padding_and_odd_sizes(calls, heads, kv_heads, head_dim):
    """One padded batch of odd real lengths (77, 67, 60) with a setting per row: the spec's geometry,
    the attention-chosen target with renormalised rows, and the question tail. Scores are scaled by
    ``head_dim ** -0.5``, as models do: with a fixed scale the largest heads' rows put all their mass
    on a few keys, and candidate target blocks that differ only by keys of negligible mass tie within
    fp32 rounding, which each path may break its own way."""
    n, layer = 77, 2
    pads = [(0, 0), (10, 0), (3, 14)]
    configs = [
        SMALL,
        SMALL.model_copy(update={"outer_target": "attention", "renormalize": True, "dynamic_tail": True}),
        SMALL.model_copy(update={"tail": "question", "beta_outer": 1.0}),
    ]
    layouts = [None, None, PromptLayout(60, question=(44, 50))]
    qkv = qkv_on_device(batch=3, heads=heads, kv_heads=kv_heads, n=n, head_dim=head_dim, seed=heads + head_dim)
    mask = padded_mask(n, pads).to(DEVICE)
    (fast, _), (reference, _) = both(layer, qkv, configs, mask=mask, layout=layouts, scaling=head_dim**-0.5)
    for row, (left, right) in enumerate(pads):
        real = slice(left, n - right)
        torch.testing.assert_close(fast[row, real], reference[row, real], atol=1e-5, rtol=1e-4)
    assert calls["edit_rows"] >= 4 and calls["column_mass"] == 1  # the attention target's tail mass
    off = [SRAConfig(enabled=False)] * 3
    (stock, _), _ = both(layer, qkv, off, mask=mask, layout=layouts, scaling=head_dim**-0.5)
    for row, (left, right) in enumerate(pads):  # every row's edits act
        assert (fast[row, left : n - right] - stock[row, left : n - right]).abs().max() > 1e-3


def test_blocks_smaller_than_the_rows_and_keys(calls, monkeypatch):
    """Blocks of 16 (head, row) pairs and keys: many programs per KV head, blocks that cross from one
    row to the next, key loops of several steps, and target blocks that straddle two key blocks."""
    kernels = load_triton_rows()
    monkeypatch.setattr(kernels, "BLOCK_ROWS", 16)
    monkeypatch.setattr(kernels, "BLOCK_KEYS", 16)
    config = SRAConfig.preset("demo").model_copy(update={"outer_target": "attention"})
    qkv = qkv_on_device(heads=6, kv_heads=2, n=83, seed=3)
    (fast, _), (reference, _) = both(2, qkv, config)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-4)
    assert calls["edit_rows"] == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(calls, dtype, monkeypatch):
    n, layer = 96, 2
    qkv = qkv_on_device(batch=2, n=n, dtype=dtype, seed=11)
    mask = padded_mask(n, [(0, 0), (9, 0)]).to(DEVICE)
    (fast, _), (reference, _) = both(layer, qkv, SMALL, mask=mask)
    assert fast.dtype == dtype and fast.isfinite().all()
    torch.testing.assert_close(fast.float(), reference.float(), atol=3e-2, rtol=3e-2)
    monkeypatch.setenv("SRA_RAG_KERNEL", "torch")
    chunked, _ = sra_attention_forward(module(layer), *qkv, mask, scaling=0.25, sra_config=SMALL)
    torch.testing.assert_close(fast.float(), chunked.float(), atol=3e-2, rtol=3e-2)
    assert calls["edit_rows"] == 4


def test_additive_and_sliding_window_masks(calls):
    """An additive float mask (0 visible, the dtype's minimum hidden) and a sliding window of 40 keys,
    which hides the inner loop's target block from some of its rows."""
    n, layer = 96, 3
    qkv = qkv_on_device(batch=2, n=n, seed=2)
    causal = padded_mask(n, [(0, 0), (0, 6)])
    window = causal & ~torch.ones(n, n, dtype=torch.bool).tril(-40)
    for mask in (window, torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)):
        (fast, _), (reference, _) = both(layer, qkv, SMALL, mask=mask.to(DEVICE))
        torch.testing.assert_close(fast[0], reference[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fast[1, : n - 6], reference[1, : n - 6], atol=1e-5, rtol=1e-4)
    assert calls["edit_rows"] == 8


@pytest.mark.parametrize("token_classes", [False, True])
def test_readout_equals_the_reference(calls, token_classes):
    n, layer = 96, 2
    qkv = qkv_on_device(batch=3, n=n, seed=5)
    config = SMALL.model_copy(update={"tail": "question"})
    outputs = both(
        layer, qkv, config, mask=padded_mask(n, PADS).to(DEVICE), layout=LAYOUTS,
        readout=lambda: [ReadoutRecorder(layout, token_classes=token_classes) for layout in LAYOUTS],
    )  # fmt: skip
    (fast, fast_recorders), (reference, reference_recorders) = outputs
    for row, (left, right) in enumerate(PADS):
        real = slice(left, n - right)
        torch.testing.assert_close(fast[row, real], reference[row, real], atol=1e-5, rtol=1e-4)
        mine, theirs = fast_recorders[row], reference_recorders[row]
        assert mine.mass[layer] == pytest.approx(theirs.mass[layer], abs=1e-6)
        if token_classes:
            assert mine.classes[layer] == pytest.approx(theirs.classes[layer], abs=1e-6)
            assert all(share > 0 for share in mine.classes[layer])
    assert calls["column_mass"] == 3


@pytest.mark.parametrize("layer", [1, 3])
def test_document_reattention_equals_the_reference(calls, layer):
    """The documents preset: after the profile's band (layers 0-1) the question rows of each row boost
    its top-ranked document(s); before it the rows are stock."""
    n = 96
    qkv = qkv_on_device(batch=3, n=n, seed=7)
    boost = SRAConfig.preset("documents")
    configs = [boost, SRAConfig(enabled=False), boost.model_copy(update={"document_top_k": 2})]

    def recorders():
        made = [ReadoutRecorder(layout, profile=profile()) for layout in LAYOUTS]
        for recorder in made:  # the band's layers as an earlier part of the prefill left them
            shares = [0.3, 0.1, 0.2][: len(recorder.layout.documents)]
            recorder.mass = {0: shares, 1: shares}
        return made

    mask = padded_mask(n, PADS).to(DEVICE)
    (fast, _), (reference, _) = both(layer, qkv, configs, mask=mask, layout=LAYOUTS, readout=recorders)
    for row, (left, right) in enumerate(PADS):
        real = slice(left, n - right)
        torch.testing.assert_close(fast[row, real], reference[row, real], atol=1e-5, rtol=1e-5)
    assert calls["boost_rows"] == (2 if layer >= 2 else 0) and calls["column_mass"] == 3
