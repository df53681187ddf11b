"""Hostile and ordinary OpenAI traffic over HTTP on the tiny random model: a failure inside
generation is an OpenAI error (a 500 body, or an error event and ``[DONE]`` in a stream) that spares
the rest of the batch; sampling settings that would overflow are refused; request bodies and
prompts are bounded before they are parsed or tokenised; strict types; access details."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from sra_rag.server import ServerSettings, create_app
from tests.server.conftest import RecordingEngine

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "Say hello to the harbour master."}]
POISONED = [{"role": "user", "content": "POISON the harbour master."}]


def events(response: httpx.Response) -> list:
    payloads = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def is_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error of ``response``, checked for its status and shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


class Poison:
    """A logits processor that, from its ``after``-th step on, sets the score of token 0 (the pad
    token, a special token that decodes to nothing) to ``value``: NaN or +inf, as an overflowing
    setting or a broken model would."""

    def __init__(self, after: int, value: float) -> None:
        self.after = after
        self.value = value
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps += 1
        if self.steps <= self.after:
            return scores
        poisoned = scores.clone()
        poisoned[:, 0] = self.value
        return poisoned


class PoisonedEngine(RecordingEngine):
    """Requests whose prompt says POISON get a :class:`Poison` processor."""

    def __init__(self, engine: Any, after: int, value: float) -> None:
        super().__init__(engine)
        self.after, self.value = after, value

    def request(self, prompt: Any, **settings: Any) -> Any:
        if "POISON" in str(prompt):
            settings["logits_processors"] = [Poison(self.after, self.value)]
        return super().request(prompt, **settings)


def chat(client: httpx.Client | str, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": HELLO, "temperature": 0, **body}
    if isinstance(client, str):
        return httpx.post(client + "/v1/chat/completions", json=payload, timeout=30)
    return client.post("/v1/chat/completions", json=payload, timeout=30)


@pytest.fixture
def url(server_engine, live_server) -> str:
    return live_server(create_app(server_engine))


# -- failures inside generation ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_failure_inside_generation_is_an_openai_error_and_spares_the_batch(
    server_engine, live_server, caplog, value: float
) -> None:
    engine = PoisonedEngine(server_engine, after=3, value=value)
    url = live_server(create_app(engine, ServerSettings(max_batch=4)))
    expected = server_engine.generate(HELLO, max_new_tokens=12, temperature=0)
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=url) as client, ThreadPoolExecutor(4) as pool:
        healthy = [pool.submit(chat, url, max_tokens=12) for _ in range(2)]
        failed = pool.submit(chat, client, messages=POISONED, max_tokens=12)
        streamed = pool.submit(chat, url, messages=POISONED, max_tokens=12, stream=True)
        error = is_error(failed.result(), 500)
        assert (error["type"], error["code"]) == ("server_error", "generation_failed")
        assert "not finite" in error["message"] and "Other requests are unaffected" in error["message"]
        assert failed.result().headers.get("connection") != "close"
        assert chat(client, max_tokens=2).status_code == 200  # on the same keep-alive connection
        chunks = events(streamed.result())
        assert streamed.result().status_code == 200
        assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["code"] == "generation_failed"
        assert all("choices" in chunk for chunk in chunks[:-2]) and len(chunks) >= 3
        assert [reply.result().json()["choices"][0]["message"]["content"] for reply in healthy] == [expected] * 2
    failures = [record for record in caplog.records if "failed during generation" in record.getMessage()]
    assert len(failures) == 2 and all(record.exc_info is None for record in failures)
    assert not any(record.exc_info for record in caplog.records)
    assert httpx.get(url + "/health").json()["running"] == 0


def test_greedy_decoding_never_returns_an_empty_reply_with_counted_tokens(server_engine, live_server) -> None:
    """A +inf score on a special token made the greedy argmax pick it at every step: an empty reply
    with max_tokens counted. Scores that cannot be chosen from now fail the request."""
    url = live_server(create_app(PoisonedEngine(server_engine, after=0, value=float("inf"))))
    response = chat(url, messages=POISONED, max_tokens=5)
    assert is_error(response, 500)["code"] == "generation_failed"


def test_sampling_settings_that_would_overflow_are_a_400(url: str, server_engine) -> None:
    for stream in (False, True):
        for setting, value in [("repetition_penalty", 1e-300), ("repetition_penalty", 1e300), ("top_p", 0)]:
            error = is_error(chat(url, max_tokens=4, stream=stream, temperature=0.7, **{setting: value}), 400)
            assert error["param"] == setting
    with pytest.raises(ValueError, match="repetition_penalty"):  # every entry point: the engine's settings
        server_engine.request(HELLO, repetition_penalty=1e-300)
    assert chat(url, max_tokens=2, temperature=1e-30).status_code == 200  # below 1e-5: greedy


# -- bounded requests ----------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_before_it_is_read(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine, ServerSettings(max_body_bytes=4096)))
    big = {"model": MODEL, "messages": [{"role": "user", "content": "harbour " * 1000}]}
    for headers in ({}, {"transfer-encoding": "chunked"}):
        content = json.dumps(big).encode()
        body = iter([content[:2000], content[2000:]]) if headers else content
        response = httpx.post(url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
        error = is_error(response, 413)
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        assert "4,096 bytes" in error["message"]
    assert recording_engine.calls == []
    assert chat(url, max_tokens=2).status_code == 200
    metrics = httpx.get(url + "/metrics").text
    assert 'sra_rag_requests_total{route="/v1/chat/completions",status="413"} 2.0' in metrics


def test_liveness_answers_while_a_huge_body_is_refused(url: str) -> None:
    huge = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (60 << 20)}]}).encode()
    outcome: list[Any] = []

    def send() -> None:
        outcome.append(httpx.post(url + "/v1/chat/completions", content=huge, timeout=60))

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive() or not latencies:
        started = time.monotonic()
        assert httpx.get(url + "/health/live", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    sender.join()
    assert is_error(outcome[0], 413)["code"] == "request_too_large"  # the client, still sending, reads it
    assert max(latencies) < 2.0
    assert chat(url, max_tokens=2).status_code == 200


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenised(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine))
    long = [{"role": "user", "content": "harbour " * 150_000}]  # 1.2 MB, under the 4 MiB body limit
    started = time.monotonic()
    error = is_error(chat(url, messages=long, max_tokens=4), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "1,200,000 characters" in error["message"] and "context window of 512" in error["message"]
    documents = [{"text": "calm seas " * 100_000}]
    error = is_error(chat(url, messages=HELLO, documents=documents, max_tokens=4), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "documents")
    assert recording_engine.calls == []  # nothing was tokenised
    assert time.monotonic() - started < 10


# -- the protocol as clients send it -----------------------------------------------------------------


def test_the_chat_fields_clients_send_are_accepted(url: str) -> None:
    messages = [
        {"role": "system", "content": "Be brief.", "name": "rules"},
        {"role": "user", "content": "Weather in Oslo?", "name": "ada"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny."},
        {"role": "assistant", "content": None, "refusal": "I cannot tell."},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}], "name": "ada"},
    ]
    options = {"include_usage": True, "include_obfuscation": False}
    reply = chat(url, messages=messages, max_tokens=3, tool_choice="auto", parallel_tool_calls=False)
    assert reply.status_code == 200, reply.text
    streamed = chat(url, messages=messages, max_tokens=3, stream=True, stream_options=options, tool_choice="none")
    assert streamed.status_code == 200 and events(streamed)[-2]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": 2**64}, "seed", "less than"),
        ({"stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra", "Unrecognized"),
        ({"messages": [{"role": "user", "content": "x", "nickname": "a"}]}, "messages.0.nickname", "Unrecognized"),
    ],
)
def test_strict_types_and_unknown_fields(url: str, body: dict, param: str, words: str) -> None:
    error = is_error(chat(url, **body), 400)
    assert error["param"] == param and words in error["message"]


def test_a_nan_temperature_and_a_lone_surrogate_are_named(url: str) -> None:
    def raw(text: str) -> httpx.Response:
        return httpx.post(
            url + "/v1/chat/completions", content=text.encode(), headers={"content-type": "application/json"}
        )

    nan = is_error(
        raw(f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "x"}}], "temperature": NaN}}'), 400
    )
    assert nan["param"] == "temperature" and "finite number" in nan["message"]
    lone = is_error(raw(f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a\\ud800b"}}]}}'), 400)
    assert lone["code"] == "invalid_json" and "lone surrogate" in lone["message"]


def test_a_lower_case_bearer_is_accepted_and_a_refusal_names_no_host(server_engine, live_server) -> None:
    url = live_server(create_app(server_engine, ServerSettings(api_key="s3cret", replica="host-a:42")))
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = httpx.get(url + "/v1/models", headers={"Authorization": f"{scheme} s3cret"})
        assert response.status_code == 200 and response.headers["x-sra-rag-replica"] == "host-a:42"
    refused = httpx.get(url + "/v1/models", headers={"Authorization": "bearer wrong"})
    assert refused.status_code == 401 and "x-sra-rag-replica" not in refused.headers


def test_the_openapi_document_still_describes_the_request_bodies(url: str) -> None:
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    for path, field in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["required"] and "stream_options" in schema["properties"]
        assert "$ref" not in json.dumps(schema)  # definitions inlined: the document has no components for them
