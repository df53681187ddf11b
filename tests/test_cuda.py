"""The CUDA subset: the fast path against the literal reference on a GPU, in bfloat16 and float16, with
padded batches, and a random model and the engine end to end. The fast path's tests run twice: with
the fused Triton kernels (``SRA_RAG_KERNEL=triton``, opt-in until these pass on a GPU) and with the
chunked torch path (``SRA_RAG_KERNEL=torch``). Skipped where no GPU is present (``pytest -m cuda``
selects these on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from sra_rag import SRAConfig, SRAEngine, register
from sra_rag.attention import sra_attention_forward, sra_reference_attention_forward
from sra_rag.kernels import triton_installed
from sra_rag.layout import PromptLayout
from sra_rag.readout.recorder import ReadoutRecorder
from tests.generation.test_scheduler import submit_together
from tests.readout.test_documents import profile
from tests.test_attention import module, padded_mask, random_qkv

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

HALF = [torch.bfloat16, torch.float16]
# The spec's geometry scaled to a 1k-token prompt, and variants that take the other code paths.
CONFIGS = {
    "spec": SRAConfig(begin_length=32, tail_length=64),
    "question-tail": SRAConfig(begin_length=32, tail_length=64, tail="question", inner=False),
    "attention-target": SRAConfig(begin_length=32, tail_length=64, outer_target="attention", dynamic_tail=True),
}


@pytest.fixture(params=["triton", "torch"], ids=["triton", "torch"])
def kernel(request, monkeypatch):
    """Run the test with the Triton kernels, then with the chunked torch path."""
    if request.param == "triton" and not triton_installed():
        pytest.skip("needs Triton (CUDA builds of torch ship it)")
    monkeypatch.setenv("SRA_RAG_KERNEL", request.param)
    return request.param


def cuda_qkv(batch: int, n: int, dtype: torch.dtype, seed: int = 0):
    """:func:`tests.test_attention.random_qkv` (drawn on the CPU, so every device sees the same
    numbers) with 8 heads over 2 key-value heads of size 64, moved to the GPU."""
    qkv = random_qkv(batch=batch, heads=8, kv_heads=2, n=n, head_dim=64, seed=seed, dtype=dtype)
    return tuple(t.cuda() for t in qkv)


def forward(fn, layer: int, qkv, config, mask=None, layout=None) -> torch.Tensor:
    query, key, value = qkv
    output, _ = fn(
        module(layer, groups=4), query, key, value, mask, scaling=0.125, sra_config=config, sra_layout=layout
    )
    return output


def assert_half_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Half-precision outputs: each path rounds its fp32 result once, so they differ by a few ulps."""
    assert actual.isfinite().all()
    torch.testing.assert_close(actual.float(), expected.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("layer", [1, 3])
def test_fast_path_equals_the_reference_on_cuda(kernel, dtype, name, layer):
    n = 1024
    qkv = cuda_qkv(1, n, dtype, seed=layer)
    config = CONFIGS[name]
    layout = PromptLayout(n, question=(n - 48, n - 40)) if config.tail == "question" else None
    fast = forward(sra_attention_forward, layer, qkv, config, layout=layout)
    reference = forward(sra_reference_attention_forward, layer, qkv, config, layout=layout)
    assert fast.device.type == "cuda" and fast.dtype == dtype
    assert_half_close(fast, reference)
    # The edits act: the same rows without SRA differ by more than the tolerance.
    stock = forward(sra_attention_forward, layer, qkv, SRAConfig(enabled=False))
    assert (fast.float() - stock.float()).abs().max() > 0.1


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_long_prompt_with_the_spec_defaults_on_cuda(kernel, dtype):
    """8k tokens under the spec's own geometry (b = 100, t = 200): many row chunks per edit."""
    n, layer = 8192, 2
    qkv = cuda_qkv(1, n, dtype, seed=5)
    fast = forward(sra_attention_forward, layer, qkv, SRAConfig())
    reference = forward(sra_reference_attention_forward, layer, qkv, SRAConfig())
    assert_half_close(fast, reference)
    stock = forward(sra_attention_forward, layer, qkv, SRAConfig(enabled=False))
    assert (fast.float() - stock.float()).abs().max() > 0.05  # about 0.09 on these numbers


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_row_chunks_do_not_change_the_result_on_cuda(dtype, monkeypatch):
    """The torch path's GPU chunks hold 512 rows of these 8 heads; chunks of 3 rows give the same output."""
    monkeypatch.setenv("SRA_RAG_KERNEL", "torch")
    n, layer = 1024, 1
    qkv = cuda_qkv(1, n, dtype, seed=7)
    layout = PromptLayout(n, question=(n - 48, n - 40))
    whole = forward(sra_attention_forward, layer, qkv, CONFIGS["attention-target"])
    question = forward(sra_attention_forward, layer, qkv, CONFIGS["question-tail"], layout=layout)
    monkeypatch.setattr("sra_rag.attention.CUDA_CHUNK_HEAD_ROWS", 8 * 3)
    torch.testing.assert_close(forward(sra_attention_forward, layer, qkv, CONFIGS["attention-target"]), whole)
    chunked = forward(sra_attention_forward, layer, qkv, CONFIGS["question-tail"], layout=layout)
    torch.testing.assert_close(chunked, question)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_gpu_matches_the_cpu_in_float32(kernel, dtype):
    """The GPU fast path in half precision against the CPU's fp32 reference on the same numbers."""
    n, layer = 1024, 2
    qkv = cuda_qkv(1, n, dtype)
    gpu = forward(sra_attention_forward, layer, qkv, CONFIGS["spec"])
    cpu_qkv = tuple(t.float().cpu() for t in qkv)
    cpu = forward(sra_reference_attention_forward, layer, cpu_qkv, CONFIGS["spec"])
    assert_half_close(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_padded_batch_equals_each_row_alone_on_cuda(kernel, dtype):
    n, layer = 768, 2
    pads = [(0, 0), (100, 0), (0, 60), (20, 30)]
    configs = [CONFIGS["spec"], SRAConfig(enabled=False), CONFIGS["question-tail"], CONFIGS["attention-target"]]
    layouts = [None, None, PromptLayout(708, question=(640, 660)), None]
    qkv = cuda_qkv(len(pads), n, dtype, seed=3)
    mask = padded_mask(n, pads).cuda()
    fast = forward(sra_attention_forward, layer, qkv, configs, mask, layouts)
    reference = forward(sra_reference_attention_forward, layer, qkv, configs, mask, layouts)
    for row, (left, right) in enumerate(pads):
        real = slice(left, n - right)
        assert_half_close(fast[row, real], reference[row, real])
        alone = tuple(t[row : row + 1, :, real] for t in qkv)
        expected = forward(sra_attention_forward, layer, alone, configs[row], layout=layouts[row])
        assert_half_close(fast[row, real], expected[0])


def test_random_llama_fast_path_equals_the_reference_on_cuda(kernel, make_tiny_model):
    """A whole model through transformers on the GPU (its masks, its SDPA kernels), in float32 so the
    comparison resolves SRA's effect: SRA (fast) and sra_reference give the same next-token
    distribution for a padded batch, the padded row equals its prompt alone, and SRA changes it.
    (In half precision this random model's rounding between layers outweighs SRA's effect on the
    output; the half-precision paths are checked per layer above.)"""
    register()
    model = make_tiny_model("llama", 512, logit_scale=1.0).to("cuda")
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 512, (2, 600), generator=generator).cuda()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :80] = 0  # left padding
    config = SRAConfig(begin_length=32, tail_length=64)
    probs = {}
    for implementation in ("sra", "sra_reference", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.inference_mode():
            logits = model(input_ids, attention_mask=attention_mask, logits_to_keep=1, sra_config=config).logits
        probs[implementation] = torch.softmax(logits[:, -1].float(), dim=-1)
    torch.testing.assert_close(probs["sra"], probs["sra_reference"], atol=1e-4, rtol=0)
    assert (probs["sra"] - probs["sdpa"]).abs().max() > 5e-3  # about 2e-2 on the CPU: 200 times the tolerance
    model.set_attn_implementation("sra")
    with torch.inference_mode():
        alone = model(input_ids[1:, 80:], logits_to_keep=1, sra_config=config).logits
    torch.testing.assert_close(torch.softmax(alone[0, -1].float(), -1), probs["sra"][1], atol=1e-4, rtol=0)


def test_engine_batches_on_cuda(tiny_tokenizer, make_tiny_model):
    """The engine on the GPU (bfloat16): greedy replies alone and in one padded batch agree."""
    model = make_tiny_model("llama", len(tiny_tokenizer)).to("cuda", torch.bfloat16)
    engine = SRAEngine(model, tiny_tokenizer, name="tiny-llama-cuda")
    assert engine.device.type == "cuda"
    sentence = "The harbour master keeps the ferry log and the lighthouse keeper's house has a green door"
    prompts = [" ".join(sentence.split()[: 3 + 2 * i]) * (1 + i) for i in range(4)]
    config = SRAConfig(begin_length=4, tail_length=8)
    alone = [engine.complete(text, max_new_tokens=8, sra=config) for text in prompts]
    streams = submit_together(engine, [(text, {"max_new_tokens": 8, "sra": config}) for text in prompts])
    together = ["".join(stream) for stream in streams]
    assert all(completion.completion_tokens == 8 for completion in alone)
    # bfloat16 padding can flip a near tie; most replies must agree exactly.
    assert sum(a.text == b for a, b in zip(alone, together, strict=True)) >= 3
    engine.close()


@pytest.mark.parametrize("name", ["spec", "attention-target", "renormalize"])
def test_triton_kernels_equal_the_torch_path_in_float32_on_cuda(monkeypatch, name):
    """The compiled kernels against the chunked torch path on the same fp32 numbers, 4k tokens, a
    padded batch: both keep fp32 throughout, so they agree to float tolerance, but for the rare weight
    that lies within rounding of tau, which the two paths may keep and drop (the spec's threshold is a
    step), moving that one (row, head) output."""
    if not triton_installed():
        pytest.skip("needs Triton (CUDA builds of torch ship it)")
    n, layer = 4096, 2
    config = CONFIGS.get(name) or CONFIGS["spec"].model_copy(update={"renormalize": True})
    qkv = cuda_qkv(2, n, torch.float32, seed=4)
    mask = padded_mask(n, [(0, 0), (300, 0)]).cuda()
    outputs = {}
    for kernel in ("triton", "torch"):
        monkeypatch.setenv("SRA_RAG_KERNEL", kernel)
        outputs[kernel] = forward(sra_attention_forward, layer, qkv, config, mask)
    for triton_rows, torch_rows in (
        (outputs["triton"][0], outputs["torch"][0]),
        (outputs["triton"][1, 300:], outputs["torch"][1, 300:]),
    ):
        close = torch.isclose(triton_rows, torch_rows, atol=1e-5, rtol=1e-4).all(dim=-1)  # per (row, head)
        assert (~close).float().mean() < 1e-3  # one pair of the 32k differs on the CPU's numbers


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_readout_and_document_reattention_on_cuda(kernel, dtype):
    """2k-token padded rows with ten documents and a question: the readout (with the token classes)
    and document reattention of the documents preset against the reference, at a layer after the
    profile's band."""
    n, layer = 2048, 3
    pads = [(0, 0), (0, 248), (200, 0)]
    spans = tuple((16 + 180 * index, 16 + 180 * (index + 1)) for index in range(10))
    layouts = [
        PromptLayout(2048, question=(1830, 1860), documents=spans),
        PromptLayout(1800, question=(1700, 1720), documents=spans[:9]),
        PromptLayout(1848, question=(1820, 1835), documents=spans),
    ]
    boost = SRAConfig.preset("documents")
    configs = [boost, SRAConfig(enabled=False), boost.model_copy(update={"document_top_k": 2})]
    qkv = cuda_qkv(len(pads), n, dtype, seed=9)
    mask = padded_mask(n, pads).cuda()
    results = {}
    for fn in (sra_attention_forward, sra_reference_attention_forward):
        recorders = [ReadoutRecorder(layout, token_classes=True, profile=profile()) for layout in layouts]
        for recorder in recorders:  # the band's layers, as an earlier part of the prefill left them
            shares = [0.05 * (index % 4) + 0.01 for index in range(len(recorder.layout.documents))]
            recorder.mass = {0: shares, 1: shares}
        query, key, value = qkv
        output, _ = fn(
            module(layer, groups=4), query, key, value, mask, scaling=0.125, sra_config=configs,
            sra_layout=layouts, sra_readout=recorders,
        )  # fmt: skip
        results[fn] = output, recorders
    (fast, fast_recorders), (reference, reference_recorders) = results.values()
    for row, (left, right) in enumerate(pads):
        real = slice(left, n - right)
        assert_half_close(fast[row, real], reference[row, real])
        mine, theirs = fast_recorders[row], reference_recorders[row]
        assert mine.mass[layer] == pytest.approx(theirs.mass[layer], abs=1e-5)
        assert mine.classes[layer] == pytest.approx(theirs.classes[layer], abs=1e-5)
    stock = forward(sra_attention_forward, layer, qkv, SRAConfig(enabled=False), mask)
    assert (fast[0].float() - stock[0].float()).abs().max() > 0.05  # the boost acts
