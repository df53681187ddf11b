"""Property test of the request models over HTTP (the app in-process, on the tiny random model):
bodies drawn from the JSON schema of the chat request (``hypothesis-jsonschema``), arbitrary JSON
values and broken bytes never get a 500 or a traceback, and every refused body gets an OpenAI
error in its shape. Bounded: a fixed number of examples, derandomised, 2 tokens per reply."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from sra_rag.server import ServerSettings, create_app
from sra_rag.server.protocol import ChatCompletionRequest

hypothesis_jsonschema = pytest.importorskip("hypothesis_jsonschema")

MODEL = "tiny-llama"
EXAMPLES = 80


def request_schema() -> dict[str, Any]:
    """The chat request's JSON schema, with the token limits capped so that the accepted bodies
    generate a few tokens, not hundreds (the limits' own checks are drawn by the other strategies)."""
    schema = copy.deepcopy(ChatCompletionRequest.model_json_schema())
    for name in ("max_tokens", "max_completion_tokens"):
        for variant in schema["properties"][name]["anyOf"]:
            if variant.get("type") == "integer":
                variant["maximum"] = 4
    return schema


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "messages",
        "model",
        "max_tokens",
        "temperature",
        "stream",
        "tools",
        "tool_choice",
        "documents",
        "sra",
        "seed",
        "response_format",
        "stop",
        "top_p",
        "repetition_penalty",
        "stream_options",
        "n",
        "cite",
        "order",
    ]
)


SAMPLING = ["temperature", "top_p", "min_p", "repetition_penalty"]
EXTREMES = st.sampled_from([5e-324, 1e-300, 1e-30, 1e-6, 0.01, 0.5, 1.0, 2.0, 1e30, 1e300])
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": TEXT}),
    max_size=2,
).map(lambda earlier: [*earlier, {"role": "user", "content": "Say hello to the harbour master."}])


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, Any]:
    """A body a client might send: text messages for the served model, and a few of the optional
    fields, each drawn from its own schema."""
    schema = request_schema()
    optional = sorted(set(schema["properties"]) - {"model", "messages"})
    body: dict[str, Any] = {"model": MODEL, "messages": draw(MESSAGES)}
    for name in draw(st.lists(st.sampled_from(optional), max_size=4, unique=True)):
        field = {**schema["properties"][name], "$defs": schema["$defs"]}
        body[name] = draw(hypothesis_jsonschema.from_schema(field))
    if draw(st.booleans()):  # numbers at the edges of float range, where sampling overflows
        body[draw(st.sampled_from(SAMPLING))] = draw(EXTREMES)
    return body


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: a plausible one, one drawn from the whole schema (mostly for the served
    model), either with one field replaced by any JSON value, any JSON value, or broken bytes."""
    kind = draw(st.sampled_from(["plausible", "plausible", "plausible", "schema", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "schema":
        body = draw(hypothesis_jsonschema.from_schema(request_schema()))
        if draw(st.integers(0, 9)) < 8:
            body["model"] = MODEL
    else:
        body = draw(plausible())
    if kind == "mutated":
        body[draw(FIELDS)] = draw(JSON)
    return json.dumps(body).encode()


class Tracebacks(logging.Handler):
    """Records every log record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text:
            self.records.append(record)


@pytest.fixture(scope="module")
def client(server_engine) -> Iterator[TestClient]:
    app = create_app(server_engine, ServerSettings(default_max_tokens=2, max_body_bytes=1 << 16))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(body=bodies())
def test_no_body_gets_a_500_or_a_traceback(client: TestClient, tracebacks: Tracebacks, body: bytes) -> None:
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    assert "Traceback" not in response.text
    assert not tracebacks.records, tracebacks.records[0].getMessage()
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text
        assert error["type"] in ("invalid_request_error", "not_found_error"), response.text
    elif response.headers["content-type"].startswith("text/event-stream"):
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and all("error" not in json.loads(line[6:]) for line in lines[:-1])
    else:
        reply = response.json()
        assert reply["object"] == "chat.completion" and reply["choices"][0]["finish_reason"] in (
            "stop",
            "length",
            "tool_calls",
        )
