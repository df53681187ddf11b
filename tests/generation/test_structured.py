"""Constrained JSON decoding (sra_rag.generation.structured) on a tiny byte-level tokenizer and random models, and
on the embedded model."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
import torch
from pydantic import BaseModel, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LogitsProcessor, PreTrainedTokenizerFast

from sra_rag.generation.structured import ANY_JSON_OBJECT, JsonSchemaCompiler, json_schema_dict


class Address(BaseModel):
    city: str = Field(max_length=12)
    zip_code: int = Field(ge=1000, le=9999)


class Person(BaseModel):
    name: str = Field(max_length=10)
    role: Literal["keeper", "pilot", "clerk"]
    address: Address
    tags: list[Literal["a", "b"]] = Field(max_length=3)
    active: bool


SCHEMAS = {
    "nested pydantic": Person,
    "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "array of numbers": {
        "type": "array",
        "items": {"type": "number", "minimum": -5, "maximum": 5},
        "minItems": 1,
        "maxItems": 4,
    },
    "required and optional": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 99},
            "note": {"type": "string", "maxLength": 5},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["id", "score"],
        "additionalProperties": False,
    },
}


def validate(text: str, schema) -> object:
    value = json.loads(text)
    jsonschema.validate(value, json_schema_dict(schema))
    return value


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer: EOS, a special chat token, the 256 byte symbols and a few merges
    (so some tokens span several characters, as in real vocabularies)."""
    vocab = {"</s>": 0, "<|im_start|>": 1}
    vocab.update({symbol: len(vocab) + i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    merges = [("{", '"'), ('"', ":"), ("Ġ", "t"), ("t", "r"), ("tr", "u"), ("tru", "e")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<|im_start|>"]
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", additional_special_tokens=special)


@pytest.fixture(scope="module")
def compiler(tokenizer) -> JsonSchemaCompiler:
    return JsonSchemaCompiler(tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- schemas at the boundary ----------------------------------------------------------------------


def test_schemas_are_normalised_to_dicts():
    assert json_schema_dict(True) == ANY_JSON_OBJECT == {"type": "object"}
    assert json_schema_dict(Address) == Address.model_json_schema()
    schema = {"type": "array", "items": {"type": "integer"}}
    assert json_schema_dict(schema) == schema
    assert json_schema_dict(schema) is not schema


@pytest.mark.parametrize(
    ("schema", "error", "message"),
    [
        (False, TypeError, "pydantic model class or True"),
        ("object", TypeError, "JSON Schema dict"),
        (Address(city="x", zip_code=1234), TypeError, "JSON Schema dict"),
        ({"type": "object", "default": object()}, TypeError, "JSON values"),
        ({"type": "bogus"}, ValueError, "not a valid JSON Schema"),
        ({"type": "object", "properties": {"a": {"minimum": "one"}}}, ValueError, "properties/a/minimum"),
    ],
)
def test_bad_schemas_get_clear_errors(compiler, schema, error, message):
    with pytest.raises(error, match=message):
        compiler.processor(schema)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$ref": "#/$defs/missing"}, "Cannot find field '?\\$defs"),
        ({"type": "string", "pattern": "(?<=a)b"}, "Lookbehind is not supported"),
        ({"type": "integer", "minimum": 5, "maximum": 3}, "minimum greater than maximum"),
    ],
)
def test_schemas_xgrammar_cannot_compile_say_why(compiler, schema, message):
    with pytest.raises(ValueError, match=f"cannot be used for constrained decoding: .*{message}") as info:
        compiler.processor(schema)
    assert "/project/" not in str(info.value)  # xgrammar's C++ source location is left out


def test_a_tokenizer_without_eos_needs_stop_tokens(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="stop_token_ids"):
        JsonSchemaCompiler(bare)
    assert JsonSchemaCompiler(bare, stop_token_ids=[0]).stop_token_ids == (0,)


# -- the processor ---------------------------------------------------------------------------------


def allowed(processor, input_ids: list[list[int]], vocab: int) -> list[set[int]]:
    scores = processor(torch.tensor(input_ids), torch.zeros(len(input_ids), vocab))
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in scores]


def test_the_mask_follows_the_generated_tokens_and_forces_eos_at_the_end(tokenizer, compiler):
    processor = compiler.processor({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    vocab = len(tokenizer)
    prompt = ids(tokenizer, "hi")
    (first,) = allowed(processor, [prompt], vocab)
    assert first == set(ids(tokenizer, "{")) | set(ids(tokenizer, '{"'))
    reply = ids(tokenizer, '{"ok": true')
    (after,) = allowed(processor, [prompt + reply], vocab)
    assert after == set(ids(tokenizer, "}"))
    assert not processor.is_completed
    (end,) = allowed(processor, [prompt + reply + ids(tokenizer, "}")], vocab)
    assert end == {tokenizer.eos_token_id}
    assert processor.is_completed
    # after the stop token (model.generate pads finished rows) the row is left alone
    (padded,) = allowed(processor, [prompt + reply + ids(tokenizer, "}") + [0, 0]], vocab)
    assert len(padded) == vocab


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": "string", "maxLength": 8}])
def test_special_tokens_and_control_characters_are_masked_inside_strings(tokenizer, compiler, schema):
    processor = compiler.processor(schema)
    vocab = len(tokenizer)
    allowed(processor, [ids(tokenizer, "x")], vocab)
    (inside,) = allowed(processor, [ids(tokenizer, 'x"')], vocab)
    assert 1 not in inside and 0 not in inside  # <|im_start|>, and EOS: the string is not closed
    control = {token for character in map(chr, range(32)) for token in ids(tokenizer, character)}
    assert len(control) == 32 and not control & inside  # raw control characters are invalid JSON
    assert {ids(tokenizer, "a")[0], ids(tokenizer, "é")[0]} <= inside  # é: the first of its two bytes


def test_rows_of_a_batch_are_constrained_independently(tokenizer, compiler):
    processor = compiler.processor({"type": "string", "enum": ["ab", "cd"]})
    vocab = len(tokenizer)
    prompt = ids(tokenizer, "q")
    allowed(processor, [prompt, prompt], vocab)
    first, second = allowed(processor, [prompt + ids(tokenizer, '"a'), prompt + ids(tokenizer, '"c')], vocab)
    assert first == set(ids(tokenizer, "b")) and second == set(ids(tokenizer, "d"))


def test_misuse_of_a_processor_is_reported(tokenizer, compiler):
    vocab = len(tokenizer)
    processor = compiler.processor(True)
    allowed(processor, [ids(tokenizer, "ab")], vocab)
    with pytest.raises(ValueError, match="one processor per request"):
        allowed(processor, [ids(tokenizer, "ab"), ids(tokenizer, "ab")], vocab)
    with pytest.raises(ValueError, match="got shorter"):
        allowed(processor, [ids(tokenizer, "a")], vocab)
    with pytest.raises(ValueError, match="does not follow the grammar"):
        allowed(processor, [ids(tokenizer, "abx")], vocab)
    with pytest.raises(ValueError, match="vocab_size=model.config.vocab_size"):
        compiler.processor(True)(torch.tensor([[5]]), torch.zeros(1, vocab + 3))


def test_a_reply_may_be_text_or_json_when_text_is_allowed(tokenizer, compiler):
    schema = {"type": "object", "properties": {"n": {"type": "string", "maxLength": 4}}, "required": ["n"]}
    vocab = len(tokenizer)
    newline, brace, eos = ids(tokenizer, "\n")[0], ids(tokenizer, "{")[0], tokenizer.eos_token_id
    text = compiler.processor(schema, allow_text=True)
    prompt = ids(tokenizer, "q")
    (first,) = allowed(text, [prompt], vocab)
    # Text or JSON may start. (xgrammar 0.2.9's union grammar also admits an empty reply, end of
    # sequence at once, although the text branch needs a first character; earlier versions did not.)
    assert {brace, newline, ids(tokenizer, "H")[0]} <= first
    (after_text,) = allowed(text, [prompt + ids(tokenizer, "Hi")], vocab)
    assert {brace, newline, eos} <= after_text  # free text, and it may end anywhere
    json_reply = compiler.processor(schema, allow_text=True)
    allowed(json_reply, [prompt], vocab)
    (in_string,) = allowed(json_reply, [prompt + ids(tokenizer, '{"n": "a')], vocab)
    assert ids(tokenizer, "b")[0] in in_string and newline not in in_string and eos not in in_string
    with pytest.raises(ValueError, match="does not follow the grammar"):
        allowed(json_reply, [prompt + ids(tokenizer, '{"n": "a"x')], vocab)


# -- generation with random models ----------------------------------------------------------------


class NoSurrogates(LogitsProcessor):
    """Masks the byte 0xED. xgrammar reads UTF-8 code points, surrogates (ED A0-BF ..) included, which
    Python decodes as three U+FFFD: a random model sampling bytes may write one (and so overrun a
    maxLength), a trained model does not."""

    def __init__(self, compiler: JsonSchemaCompiler) -> None:
        self.token = compiler.vocabulary.info.decoded_vocab.index(b"\xed")

    def __call__(self, input_ids, scores):
        scores[:, self.token] = -float("inf")
        return scores


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("do_sample", [False, True])
def test_generate_with_the_processor_gives_json_that_validates(tokenizer, compiler, model, name, do_sample):
    schema = SCHEMAS[name]
    prompt = torch.tensor([ids(tokenizer, "Reply in JSON:")])
    torch.manual_seed(1)
    output = model.generate(
        prompt,
        logits_processor=[compiler.processor(schema), NoSurrogates(compiler)],
        max_new_tokens=300,
        do_sample=do_sample,
        temperature=1.0,
        top_k=0,
    )
    reply = output[0, prompt.shape[1] :].tolist()
    assert reply[-1] == tokenizer.eos_token_id, "generation must end on EOS when the JSON is complete"
    validate(tokenizer.decode(reply, skip_special_tokens=True), schema)


def greedy_loop(model, rows: list[list[int]], processors, max_new_tokens: int = 200) -> list[list[int]]:
    """A minimal batched greedy loop with a KV cache that applies one processor to each request's own
    row (its full ids; equal-length prompts need no padding), as a continuous-batching engine does.
    Returns each row's reply up to its EOS."""
    sequences = [list(row) for row in rows]
    done = [False] * len(rows)
    cache = DynamicCache()
    step = torch.tensor(sequences)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(step, cache=cache, use_cache=True).logits[:, -1, :]
        for index, processor in enumerate(processors):
            logits[index : index + 1] = processor(torch.tensor([sequences[index]]), logits[index : index + 1])
        tokens = logits.argmax(-1).tolist()
        for index, token in enumerate(tokens):
            done[index] = done[index] or sequences[index][-1] == 0 and len(sequences[index]) > len(rows[index])
            sequences[index].append(0 if done[index] else token)
        if all(sequence[-1] == 0 for sequence in sequences):
            break
        step = torch.tensor([[token] for token in tokens])
    replies = [sequence[len(row) :] for sequence, row in zip(sequences, rows, strict=True)]
    return [reply[: reply.index(0)] if 0 in reply else reply for reply in replies]


def test_requests_with_different_schemas_share_a_batch(tokenizer, compiler, model):
    prompt = ids(tokenizer, "Reply:")
    names = sorted(SCHEMAS)
    alone = [greedy_loop(model, [prompt], [compiler.processor(SCHEMAS[name])])[0] for name in names]
    together = greedy_loop(model, [prompt] * len(names), [compiler.processor(SCHEMAS[name]) for name in names])
    assert together == alone
    for name, reply in zip(names, together, strict=True):
        validate(tokenizer.decode(reply), SCHEMAS[name])


# -- the embedded model ----------------------------------------------------------------------------

FACTS = (
    "Marrowick is a harbour town founded in 1652. Ferries and trawlers sail from its quay. "
    "The lighthouse stands at 12 Quay Road, postcode 4021."
)


class Lighthouse(BaseModel):
    street: str
    zip_code: int


class Harbour(BaseModel):
    town: str
    founded: int
    boats: list[Literal["ferry", "trawler", "yacht"]] = Field(max_length=3)
    lighthouse: Lighthouse


TOWN = {
    "type": "object",
    "properties": {"town": {"type": "string"}, "founded": {"type": "integer", "minimum": 0, "maximum": 2100}},
    "required": ["town", "founded"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schema", "request_text"),
    [
        (Harbour, "Reply with the facts as JSON."),
        (TOWN, "Reply with the facts as JSON."),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 3}, "Reply with the numbers as JSON."),
        (True, "Reply with a JSON object with the keys town and founded."),
    ],
)
def test_the_embedded_model_generates_valid_json(embedded_engine, schema, request_text):
    engine = embedded_engine
    compiler = JsonSchemaCompiler(
        engine.tokenizer, vocab_size=engine.model.config.vocab_size, stop_token_ids=engine.eos_token_ids
    )
    prompt = engine.prepare([{"role": "user", "content": f"{FACTS}\n{request_text}"}]).input_ids
    output = engine.model.generate(
        prompt, logits_processor=[compiler.processor(schema)], max_new_tokens=80, do_sample=False
    )
    reply = output[0, prompt.shape[1] :].tolist()
    assert reply[-1] in engine.eos_token_ids
    value = validate(engine.tokenizer.decode(reply, skip_special_tokens=True), schema)
    if schema is Harbour:
        assert Harbour.model_validate(value).town == "Marrowick"
    if schema is True:
        assert value["town"] == "Marrowick"
