"""SRAEngine on the embedded SmolLM2-135M-Instruct and on tiny local checkpoints."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from sra_rag import ContextWindowExceededError, ModelNotSupportedError, SRAConfig, SRAEngine

pytestmark = pytest.mark.slow

QUESTION = "What colour is the door of the lighthouse keeper's house?"


def long_messages(words=400):
    filler = " ".join(f"The harbour log notes entry {i} with calm seas." for i in range(words // 9))
    context = f"{filler} The lighthouse keeper's house has a green door. {filler}"
    return [{"role": "user", "content": f"{context}\n\nQuestion: {QUESTION}\nAnswer briefly."}]


def test_chat_template_is_applied_and_tokenised_once(embedded_engine):
    messages = [{"role": "user", "content": "Hello there"}]
    prepared = embedded_engine.prepare(messages)
    expected = embedded_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert prepared.input_ids[0].tolist() == list(expected)
    bos = embedded_engine.tokenizer.bos_token_id
    assert prepared.input_ids[0, :2].tolist() != [bos, bos]
    # a string prompt is the same as one user message
    assert torch.equal(embedded_engine.prepare("Hello there").input_ids, prepared.input_ids)


def test_count_tokens(embedded_engine):
    assert embedded_engine.count_tokens("hello world") == 2
    messages = [{"role": "user", "content": "hello world"}]
    assert embedded_engine.count_tokens(messages) == embedded_engine.prepare(messages).num_tokens
    assert embedded_engine.context_window == 8192


def test_generate_is_deterministic_and_counts_tokens(embedded_engine):
    first = embedded_engine.complete("What is the capital of France?", max_new_tokens=12)
    second = embedded_engine.complete("What is the capital of France?", max_new_tokens=12)
    assert first == second
    assert "Paris" in first.text
    assert first.prefill_seconds > 0
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert first.prompt_tokens == embedded_engine.count_tokens(messages)
    assert 0 < first.completion_tokens <= 12
    short = embedded_engine.complete("Write a long story about a dragon.", max_new_tokens=3)
    assert short.finish_reason == "length" and short.completion_tokens == 3


def test_stream_yields_pieces_that_join_to_the_blocking_text(embedded_engine):
    stream = embedded_engine.stream("Name three colours.", max_new_tokens=20)
    pieces = list(stream)
    assert len(pieces) > 3
    assert "".join(pieces) == stream.text == embedded_engine.generate("Name three colours.", max_new_tokens=20)
    assert stream.completion_tokens == 20 or stream.finish_reason == "stop"


def test_stop_sequences_in_blocking_and_streaming(embedded_engine):
    prompt = "Count from 1 to 10, one number per line."
    full = embedded_engine.generate(prompt, max_new_tokens=30)
    stop = "4"
    assert stop in full
    cut = full[: full.index(stop)]
    blocking = embedded_engine.complete(prompt, max_new_tokens=30, stop=[stop])
    assert blocking.text == cut and blocking.finish_reason == "stop"
    stream = embedded_engine.stream(prompt, max_new_tokens=30, stop=[stop, "never-there"])
    assert "".join(stream) == cut and stream.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed(embedded_engine):
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=0.9)
    a = embedded_engine.generate("Invent a name for a cat.", seed=3, **kwargs)
    b = embedded_engine.generate("Invent a name for a cat.", seed=3, **kwargs)
    assert a == b


def test_over_long_prompts_are_reported_never_truncated(embedded_engine):
    prompt = "word " * 9000
    with pytest.raises(ContextWindowExceededError) as info:
        embedded_engine.generate(prompt, max_new_tokens=10)
    error = info.value
    assert error.prompt_tokens == embedded_engine.count_tokens([{"role": "user", "content": prompt}])
    assert (error.max_new_tokens, error.context_window) == (10, 8192)
    assert str(error.prompt_tokens) in str(error) and "8192" in str(error)
    # fits exactly with the right budget
    fits = embedded_engine.count_tokens(long_messages())
    with pytest.raises(ContextWindowExceededError):
        embedded_engine.generate(long_messages(), max_new_tokens=8192 - fits + 1)


@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        ("", ValueError),
        ("   ", ValueError),
        ([], ValueError),
        ([{"role": "user", "content": ""}], ValueError),
        (42, TypeError),
        ([{"content": "no role"}], TypeError),
        ([{"role": "user", "content": 3}], TypeError),
    ],
)
def test_bad_prompts_get_clear_errors(embedded_engine, prompt, error):
    with pytest.raises(error):
        embedded_engine.generate(prompt, max_new_tokens=4)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"stop": [""]}, {"sra": {"beta_outer": 2}}],
)
def test_bad_settings_get_clear_errors(embedded_engine, kwargs):
    with pytest.raises((ValueError, TypeError)):
        embedded_engine.generate("Hi", **{"max_new_tokens": 4, **kwargs})


def test_question_aware_tail(embedded_engine):
    messages = long_messages()
    prepared = embedded_engine.prepare(messages, tail_from=f"Question: {QUESTION}")
    tail = embedded_engine.tokenizer.decode(prepared.input_ids[0, -prepared.tail_length :])
    assert tail.startswith("Question:") or tail.startswith(" Question:")
    assert tail.endswith("assistant\n")
    with pytest.raises(ValueError, match="does not occur"):
        embedded_engine.prepare(messages, tail_from="not in the prompt")


def test_fast_path_equals_reference_on_the_embedded_model(embedded_engine):
    model = embedded_engine.model
    input_ids = embedded_engine.prepare(long_messages()).input_ids
    assert input_ids.shape[1] > 303  # both loops active with the spec defaults
    config = SRAConfig()
    results = {}
    try:
        for implementation in ("sra", "sra_reference", "sdpa"):
            model.set_attn_implementation(implementation)
            with torch.inference_mode():
                results[implementation] = model(input_ids, sra_config=config).logits[0, -40:]
    finally:
        model.set_attn_implementation("sra")
    # Over 30 layers a weight within float rounding of a threshold can flip one edit, so the
    # paths agree to a small mean error (per-layer equality is asserted in test_attention.py).
    fast_error = (results["sra"] - results["sra_reference"]).abs()
    sra_effect = (results["sdpa"] - results["sra_reference"]).abs()
    assert fast_error.mean() < 1e-3 and fast_error.max() < 0.1
    assert sra_effect.mean() > 100 * fast_error.mean()
    assert torch.equal(results["sra"].argmax(-1), results["sra_reference"].argmax(-1))


def test_threads_with_different_settings_do_not_interfere(embedded_engine):
    messages = long_messages()
    settings = [SRAConfig(enabled=False), SRAConfig(), SRAConfig.preset("demo"), SRAConfig(beta_outer=8.0, inner=False)]
    sequential = [embedded_engine.complete(messages, max_new_tokens=6, sra=s) for s in settings]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda s: embedded_engine.complete(messages, max_new_tokens=6, sra=s), settings))
    assert concurrent == sequential
    # the settings matter, so the comparison above could fail
    logits = {}
    for s in settings[:2]:
        with torch.inference_mode():
            logits[s.enabled] = embedded_engine.model(embedded_engine.prepare(messages).input_ids, sra_config=s).logits
    assert not torch.allclose(logits[True], logits[False])


def test_shared_engines_are_loaded_once(embedded_engine):
    assert SRAEngine.shared() is embedded_engine


def tiny_folder(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_local_folder_loads_offline_with_sra(tmp_path, embedded_engine):
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(embedded_engine.tokenizer),
        max_position_embeddings=512,
    )
    folder = tiny_folder(tmp_path, LlamaForCausalLM(config), embedded_engine.tokenizer)
    engine = SRAEngine.from_pretrained(str(folder), device="cpu")
    assert engine.model.config._attn_implementation == "sra"
    assert engine.context_window == 512 and engine.device.type == "cpu"
    assert engine.complete("Hi", max_new_tokens=3).completion_tokens <= 3


def test_non_rope_models_are_refused_at_load_time(tmp_path, embedded_engine):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(embedded_engine.tokenizer)))
    folder = tiny_folder(tmp_path, gpt2, embedded_engine.tokenizer)
    with pytest.raises(ModelNotSupportedError, match="rotary"):
        SRAEngine.from_pretrained(str(folder))


def test_missing_models_get_an_actionable_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        SRAEngine.from_pretrained(str(tmp_path / "nothing-here"))
    with pytest.raises(TypeError):
        SRAEngine.from_pretrained(42)  # type: ignore[arg-type]


def test_loading_never_reaches_the_network(embedded_engine):
    pytest_socket = pytest.importorskip("pytest_socket", reason="pytest-socket blocks sockets for this test")
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        engine = SRAEngine.from_pretrained()
        assert engine.generate("Say hi.", max_new_tokens=3)
    finally:
        pytest_socket.enable_socket()


def test_with_context_window_shares_the_model(embedded_engine):
    small = embedded_engine.with_context_window(64)
    assert small.model is embedded_engine.model and small.context_window == 64
    assert embedded_engine.context_window == 8192
    with pytest.raises(ContextWindowExceededError):
        small.generate(long_messages(), max_new_tokens=4)
    with pytest.raises(ValueError, match="context_window"):
        embedded_engine.with_context_window(10**6)


def test_a_stream_can_be_resumed_on_other_threads(embedded_engine):
    expected = embedded_engine.generate("Name three fruits.", max_new_tokens=12)
    stream = embedded_engine.stream("Name three fruits.", max_new_tokens=12)
    pieces = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        while (piece := pool.submit(next, stream, None).result()) is not None:
            pieces.append(piece)
    assert "".join(pieces) == expected
    assert not torch.is_inference_mode_enabled()


def test_preformatted_prompts_skip_the_chat_template(embedded_engine):
    raw = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    prepared = embedded_engine.prepare(raw, chat_template=False)
    assert embedded_engine.tokenizer.decode(prepared.input_ids[0]) == raw
    assert "Paris" in embedded_engine.generate(raw, max_new_tokens=10, chat_template=False)
    with pytest.raises(ValueError, match="formatted string"):
        embedded_engine.prepare([{"role": "user", "content": "hi"}], chat_template=False)


def test_async_iteration_yields_the_same_pieces(embedded_engine):
    import asyncio

    expected = embedded_engine.generate("Name three rivers.", max_new_tokens=12)

    async def collect():
        return [piece async for piece in embedded_engine.stream("Name three rivers.", max_new_tokens=12)]

    pieces = asyncio.run(collect())
    assert len(pieces) > 1 and "".join(pieces) == expected


def test_log_likelihood_reads_the_answer_as_generation_would(embedded_engine):
    messages = long_messages()
    answer = "The door is green."
    off = SRAConfig.preset("off")
    # Stock attention: one forward pass over prompt + answer gives the same numbers.
    prompt_ids = embedded_engine.prepare(messages).input_ids
    answer_ids = torch.tensor([embedded_engine.tokenizer(answer, add_special_tokens=False)["input_ids"]])
    full = torch.cat([prompt_ids, answer_ids], dim=1)
    with torch.inference_mode():
        logits = embedded_engine.model(input_ids=full, sra_config=off).logits[0].float()
    positions = torch.arange(prompt_ids.shape[1] - 1, full.shape[1] - 1)
    expected = torch.log_softmax(logits[positions], -1).gather(-1, answer_ids[0][:, None]).sum()
    stock = embedded_engine.log_likelihood(messages, answer, sra=off)
    assert stock == pytest.approx(float(expected), abs=1e-3)
    assert stock < 0
    # The greedy reply is the likeliest first token, and SRA (prefill only) changes the numbers.
    greedy = embedded_engine.generate(messages, max_new_tokens=1, sra=off)
    assert embedded_engine.log_likelihood(messages, greedy, sra=off) > embedded_engine.log_likelihood(
        messages, "Purple", sra=off
    )
    paper = embedded_engine.log_likelihood(messages, answer, sra=SRAConfig.preset("paper"))
    tailed = embedded_engine.log_likelihood(messages, answer, sra=SRAConfig(), tail_from=f"Question: {QUESTION}")
    assert len({round(stock, 3), round(paper, 3), round(tailed, 3)}) == 3
    with pytest.raises(ValueError, match="non-empty"):
        embedded_engine.log_likelihood(messages, "")
    with pytest.raises(ContextWindowExceededError):
        embedded_engine.log_likelihood(messages, "word " * 9000)


def test_requests_batched_together_get_what_they_get_alone(embedded_engine):
    """Continuous batching on the real model: mixed SRA settings, sampling and prompt lengths,
    prefilled in one padded batch and decoded together, each equal to the same request alone."""
    import threading

    from sra_rag.layout import TextLayout

    long = long_messages()
    calls = [
        ("What is the capital of France?", {"max_new_tokens": 12}),
        (long, {"max_new_tokens": 10, "sra": SRAConfig()}),
        (long, {"max_new_tokens": 10, "sra": SRAConfig.preset("recommended"), "layout": TextLayout(question=QUESTION)}),
        ("Name three colours.", {"max_new_tokens": 14, "temperature": 0.7, "seed": 3, "top_k": 40}),
        (long_messages(200), {"max_new_tokens": 8, "sra": SRAConfig.preset("demo"), "repetition_penalty": 1.2}),
    ]
    alone = [embedded_engine.complete(prompt, **kwargs) for prompt, kwargs in calls]
    reached, released = threading.Event(), threading.Event()

    def gate(input_ids, scores):
        reached.set()
        assert released.wait(timeout=120)
        return scores

    holder = embedded_engine.stream("Hold on.", max_new_tokens=2, logits_processors=[gate])
    assert reached.wait(timeout=120)
    streams = [embedded_engine.stream(prompt, **kwargs) for prompt, kwargs in calls]
    released.set()
    list(holder)
    for expected, stream in zip(alone, streams, strict=True):
        assert "".join(stream) == expected.text
        assert stream.completion_tokens == expected.completion_tokens
    assert all(completion.completion_tokens >= 3 for completion in alone)
