"""The app over HTTP (uvicorn on a free loopback port) on a tiny random model: every route, the
OpenAI error shape, per-request SRA and documents, the queue, timeouts, disconnects, auth, metrics."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sra_rag import SRAConfig
from sra_rag.rag.citing import finish_answer
from sra_rag.rag.stuffing import Chunk, stuff_prompt
from sra_rag.server import ServerSettings, create_app

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

MODEL = "tiny-llama"
HELLO = [{"role": "user", "content": "Say hello to the harbour master."}]
GREEDY = {"temperature": 0}


@pytest.fixture
def url(server_engine, live_server) -> str:
    return live_server(create_app(server_engine))


def post(url: str, path: str, timeout: float = 30, **body) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=timeout)


def chat(url: str, **body) -> httpx.Response:
    return post(url, "/v1/chat/completions", **{"model": MODEL, "messages": HELLO, **body})


def events(response: httpx.Response) -> list:
    """The SSE ``data:`` payloads of a stream, JSON-decoded (``[DONE]`` kept as the string)."""
    payloads = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- the routes ------------------------------------------------------------------------------------


def test_models_lists_the_served_model(url: str) -> None:
    listing = httpx.get(url + "/v1/models").json()
    assert listing["object"] == "list"
    assert [(card["id"], card["object"], card["max_model_len"]) for card in listing["data"]] == [(MODEL, "model", 512)]
    assert httpx.get(f"{url}/v1/models/{MODEL}").json()["id"] == MODEL
    missing = httpx.get(url + "/v1/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_chat_reply_and_usage_are_the_engines(url: str, server_engine) -> None:
    reply = chat(url, max_tokens=6, **GREEDY)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = server_engine.complete(HELLO, max_new_tokens=6, temperature=0)
    assert body["object"] == "chat.completion" and body["model"] == MODEL and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": expected.text},
            "finish_reason": expected.finish_reason,
            "logprobs": None,
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": server_engine.count_tokens(HELLO),
        "completion_tokens": expected.completion_tokens,
        "total_tokens": server_engine.count_tokens(HELLO) + expected.completion_tokens,
    }
    assert "sources" not in body


def test_chat_stream_joins_to_the_blocking_reply(url: str) -> None:
    blocking = chat(url, max_tokens=8, **GREEDY).json()
    streamed = chat(url, max_tokens=8, stream=True, stream_options={"include_usage": True}, **GREEDY)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]"
    first, *pieces, last, usage = chunks[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == first["id"] for chunk in chunks[:-1])
    assert (
        "".join(chunk["choices"][0]["delta"]["content"] for chunk in pieces)
        == blocking["choices"][0]["message"]["content"]
    )
    assert len(pieces) > 1
    assert last["choices"][0]["finish_reason"] == blocking["choices"][0]["finish_reason"]
    assert last["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"] == blocking["usage"]


def test_completions_read_the_prompt_as_raw_text(url: str, server_engine) -> None:
    prompt = "The harbour master said"
    body = post(url, "/v1/completions", model=MODEL, prompt=prompt, max_tokens=5, **GREEDY).json()
    expected = server_engine.complete(prompt, max_new_tokens=5, temperature=0, chat_template=False)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == expected.text
    assert (
        body["usage"]["prompt_tokens"]
        == expected.prompt_tokens
        == server_engine.prepare(prompt, chat_template=False).num_tokens
    )
    streamed = events(post(url, "/v1/completions", model=MODEL, prompt=[prompt], max_tokens=5, stream=True, **GREEDY))
    assert streamed[-1] == "[DONE]"
    assert "".join(chunk["choices"][0]["text"] for chunk in streamed[:-1]) == expected.text
    assert streamed[-2]["choices"][0]["finish_reason"] == expected.finish_reason


def test_stop_max_tokens_and_seed(url: str, server_engine) -> None:
    full = chat(url, max_tokens=12, **GREEDY).json()["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = chat(url, max_tokens=12, stop=[stop], **GREEDY).json()
    assert cut["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"

    short = chat(url, max_tokens=3, **GREEDY).json()
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"

    sampled = [chat(url, max_tokens=8, temperature=1.0, top_p=0.9, seed=7).json() for _ in range(2)]
    expected = server_engine.generate(HELLO, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert sampled[0]["choices"] == sampled[1]["choices"]
    assert sampled[0]["choices"][0]["message"]["content"] == expected


def test_an_unset_max_tokens_is_the_default_capped_by_the_window(server_engine, live_server) -> None:
    url = live_server(create_app(server_engine, ServerSettings(default_max_tokens=6)))
    assert chat(url, **GREEDY).json()["usage"]["completion_tokens"] == 6
    words = "harbour " * 600
    ids = server_engine.tokenizer(words, add_special_tokens=False)["input_ids"]
    prompt = server_engine.tokenizer.decode(ids[: 512 - 4 - 1])  # leaves a few tokens of the window
    left = 512 - server_engine.prepare(prompt, chat_template=False).num_tokens
    assert 0 < left < 6
    body = post(url, "/v1/completions", model=MODEL, prompt=prompt, **GREEDY).json()
    assert body["usage"]["completion_tokens"] <= left
    assert body["usage"]["completion_tokens"] == left or body["choices"][0]["finish_reason"] == "stop"


# -- errors ----------------------------------------------------------------------------------------


LONG = "harbour " * 700


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code", "words"),
    [
        ("/v1/chat/completions", {"messages": HELLO, "n": 2}, 400, "n", "invalid_value", "only n=1"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages", "invalid_value", "at least one"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "  "}]},
            400,
            "messages",
            "invalid_value",
            "empty",
        ),
        (
            "/v1/chat/completions",
            {"messages": HELLO, "max_tokens": "many"},
            400,
            "max_tokens",
            "invalid_value",
            "integer",
        ),
        ("/v1/chat/completions", {"messages": "hello"}, 400, "messages", "invalid_value", "valid array"),
        ("/v1/chat/completions", {"messages": HELLO, "model": "gpt-4o"}, 404, "model", "model_not_found", "'gpt-4o'"),
        (
            "/v1/chat/completions",
            {"messages": HELLO, "sra": {"beta_outer": -2}},
            400,
            "sra.beta_outer",
            "invalid_value",
            "sra.beta_outer",
        ),
        ("/v1/chat/completions", {"messages": HELLO, "sra": "fast"}, 400, "sra", "invalid_value", "unknown SRA preset"),
        ("/v1/chat/completions", {"messages": HELLO, "best": 1}, 400, "best", "invalid_value", "Unrecognized"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": LONG}], "max_tokens": 8},
            400,
            "messages",
            "context_length_exceeded",
            "do not fit the context window of 512",
        ),
        ("/v1/completions", {"prompt": LONG}, 400, "prompt", "context_length_exceeded", "tokens"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "invalid_value", "exactly one prompt"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt", "invalid_value", "string"),
    ],
)
def test_bad_requests_get_the_openai_error_shape(url, path, body, status, param, code, words) -> None:
    response = post(url, path, **{"model": MODEL, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert words in error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_malformed_json_unknown_routes_and_methods(url: str) -> None:
    broken = httpx.post(
        url + "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert "not valid JSON" in broken.json()["error"]["message"]
    nowhere = httpx.get(url + "/v1/engines")
    assert nowhere.status_code == 404 and "No route GET /v1/engines" in nowhere.json()["error"]["message"]
    wrong_method = httpx.get(url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_response_format_constrains_the_reply(url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    wanted = {"type": "json_schema", "json_schema": {"name": "flag", "schema": schema, "strict": True}}
    reply = chat(url, max_tokens=32, response_format=wanted, **GREEDY).json()
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(reply["choices"][0]["message"]["content"])["ok"], bool)
    loose = chat(url, max_tokens=64, response_format={"type": "json_object"}, **GREEDY).json()
    if loose["choices"][0]["finish_reason"] == "stop":  # a random model may write a long object
        assert isinstance(json.loads(loose["choices"][0]["message"]["content"]), dict)
    else:
        assert loose["choices"][0]["message"]["content"].lstrip().startswith("{")
    bad = chat(url, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
    assert "not a valid JSON Schema" in bad.json()["error"]["message"]


# -- per-request SRA and documents ----------------------------------------------------------------


def test_sra_settings_reach_the_engine_per_request(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine))
    for sent, expected in [
        (None, None),
        ("off", SRAConfig(enabled=False)),
        ({"preset": "paper", "beta_outer": 2}, SRAConfig(beta_outer=2.0)),
        ({"tail_length": 7}, recording_engine.sra.model_copy(update={"tail_length": 7})),
    ]:
        body = chat(url, max_tokens=4, sra=sent, **GREEDY).json()
        assert recording_engine.calls[-1]["sra"] == expected
        reference = recording_engine._engine.complete(HELLO, max_new_tokens=4, temperature=0, sra=expected)
        assert body["choices"][0]["message"]["content"] == reference.text


def test_sampling_extensions_reach_the_engine(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine))
    chat(url, max_tokens=2, temperature=0.7, top_k=-1, min_p=0.05, repetition_penalty=1.2, seed=3)
    call = recording_engine.calls[-1]
    assert (call["top_k"], call["min_p"], call["repetition_penalty"], call["seed"]) == (0, 0.05, 1.2, 3)
    chat(url, max_tokens=2)
    assert "top_k" not in recording_engine.calls[-1]  # unset: the engine's default
    bad = chat(url, max_tokens=2, repetition_penalty=0)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "repetition_penalty"


DOCUMENTS = [
    {"text": "The ferry to Skelda leaves Pier 3 at 08:30.", "source": "ferry.txt"},
    {"text": "Leave in October needs approval from Imelda Farrow.", "source": "handbook.md"},
    {"text": "The ferry also leaves at 16:00 in summer.", "source": "ferry.txt", "chunk_index": 1},
]
QUESTION = "When does the ferry leave?"


def test_documents_are_stuffed_like_the_reader_and_sources_returned(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine))
    engine = recording_engine._engine
    chunks = [Chunk(d["text"], d["source"], d.get("chunk_index")) for d in DOCUMENTS]
    stuffed = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=6)
    question = [{"role": "user", "content": QUESTION}]
    body = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, **GREEDY).json()
    call = recording_engine.calls[-1]
    assert call["prompt"] == stuffed.messages and call["layout"] == stuffed.layout
    assert body["usage"]["prompt_tokens"] == stuffed.prompt_tokens
    expected = engine.complete(stuffed.messages, max_new_tokens=6, temperature=0, layout=stuffed.layout)
    assert body["choices"][0]["message"]["content"] == expected.text
    assert [(s["number"], s["source"]) for s in body["sources"]] == [
        (1, "ferry.txt"),
        (2, "handbook.md"),
        (3, "ferry.txt"),
    ]

    grouped = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=6, group_by_source=True)
    body = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, group_by_source=True, **GREEDY).json()
    assert recording_engine.calls[-1]["prompt"] == grouped.messages
    assert [(s["number"], s["source"]) for s in body["sources"]] == [(1, "ferry.txt"), (2, "handbook.md")]
    titled = [{**DOCUMENTS[0], "title": "Skelda ferry"}]
    chat(url, messages=question, documents=titled, max_tokens=2, **GREEDY)
    assert "Document [1] (Title: Skelda ferry)\n" in recording_engine.calls[-1]["prompt"][0]["content"]
    bad = chat(url, messages=question, max_tokens=2, group_by_source=True)
    assert bad.status_code == 400 and "group_by_source" in bad.json()["error"]["message"]

    system = "Answer in one word."
    messages = [{"role": "system", "content": system}, *question]
    chat(url, messages=messages, documents=DOCUMENTS, max_tokens=6, **GREEDY)
    with_system = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=6, system_prompt=system)
    assert recording_engine.calls[-1]["prompt"] == with_system.messages

    streamed = events(chat(url, messages=messages, documents=DOCUMENTS, max_tokens=6, stream=True, **GREEDY))
    assert [s["source"] for s in streamed[-2]["sources"]] == ["ferry.txt", "handbook.md", "ferry.txt"]
    assert all("sources" not in chunk for chunk in streamed[:-2])

    completion = post(
        url, "/v1/completions", model=MODEL, prompt=QUESTION, documents=DOCUMENTS[:1], max_tokens=4
    ).json()
    assert completion["sources"][0]["source"] == "ferry.txt"


def test_documents_that_do_not_fit_are_a_400_with_the_counts(url: str) -> None:
    documents = [{"text": f"Entry {i}: " + "calm seas in the harbour " * 30, "source": f"log{i}.txt"} for i in range(8)]
    response = chat(url, messages=[{"role": "user", "content": QUESTION}], documents=documents, max_tokens=16)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "documents")
    assert "With all 8 retrieved chunks" in error["message"] and "context window of 512" in error["message"]
    assert "Nothing was truncated" in error["message"]


def test_documents_take_one_question(url: str) -> None:
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": QUESTION},
    ]
    response = chat(url, messages=turns, documents=DOCUMENTS)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert "one user message" in response.json()["error"]["message"]


# -- load and faults --------------------------------------------------------------------------------


def test_a_full_queue_is_refused_with_429_and_retry_after(slow_engine, live_server) -> None:
    url = live_server(create_app(slow_engine, ServerSettings(max_batch=1, queue_size=1)))
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, url, max_tokens=30, **GREEDY)
        wait_until(lambda: httpx.get(url + "/health").json()["running"] == 1)
        queued = pool.submit(chat, url, max_tokens=3, **GREEDY)
        wait_until(lambda: httpx.get(url + "/health").json()["waiting"] == 1)

        refused = chat(url, max_tokens=3)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error" and refused.json()["error"]["code"] == "queue_full"
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["ready"] is False
        assert httpx.get(url + "/health/live").status_code == 200

        assert running.result().json()["usage"]["completion_tokens"] == 30
        assert queued.result().json()["usage"]["completion_tokens"] == 3
    health = httpx.get(url + "/health").json()
    assert (health["running"], health["waiting"], health["ready"]) == (0, 0, True)


def test_a_request_past_its_timeout_gets_504_and_is_cancelled(slow_engine, live_server) -> None:
    url = live_server(create_app(slow_engine, ServerSettings(max_batch=1, queue_size=4, timeout=1.0)))
    started = time.monotonic()
    response = chat(url, max_tokens=200)  # 10 s of decoding
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert "deadline (1 s)" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5
    wait_until(lambda: slow_engine.streams[0].finish_reason == "cancelled", timeout=5)
    assert httpx.get(url + "/health").json()["running"] == 0

    streamed = events(chat(url, max_tokens=200, stream=True))
    assert streamed[-1] == "[DONE]" and streamed[-2]["error"]["code"] == "timeout"
    assert streamed[0]["choices"][0]["delta"]["role"] == "assistant"  # the stream had started
    wait_until(lambda: slow_engine.streams[1].finish_reason == "cancelled", timeout=5)


def stops_decoding(throttle) -> bool:
    """Whether the request's decoding has stopped: once the steps in flight are done (the scheduler
    drops a cancelled request before its next step), no step for a second (20 would be due)."""
    time.sleep(0.5)
    before = throttle.steps
    time.sleep(1.0)
    return throttle.steps == before


def test_a_client_that_disconnects_mid_stream_is_cancelled_at_once(slow_engine, live_server) -> None:
    url = live_server(create_app(slow_engine, ServerSettings(max_batch=1)))
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()  # kept: dropping the iterator would close the connection
        received = [next(lines) for _ in range(8)]  # the role chunk and three pieces, each with a blank line
        assert sum('"content"' in line for line in received) == 4
        assert httpx.get(url + "/health").json()["running"] == 1
    wait_until(lambda: httpx.get(url + "/health").json()["running"] == 0, timeout=2)
    assert slow_engine.streams[0].finish_reason == "cancelled"
    assert stops_decoding(slow_engine.throttles[0]) and slow_engine.throttles[0].steps < 60  # of 200
    assert chat(url, max_tokens=2).status_code == 200  # and the slot serves the next request


def test_a_client_that_gives_up_on_a_blocking_request_is_cancelled(slow_engine, live_server) -> None:
    url = live_server(create_app(slow_engine, ServerSettings(max_batch=1)))
    with pytest.raises(httpx.ReadTimeout):
        chat(url, max_tokens=200, timeout=0.5)
    wait_until(lambda: bool(slow_engine.streams) and slow_engine.streams[0].finish_reason == "cancelled", timeout=5)
    wait_until(lambda: httpx.get(url + "/health").json()["running"] == 0, timeout=2)
    assert stops_decoding(slow_engine.throttles[0]) and slow_engine.throttles[0].steps < 60


# -- access, health and metrics --------------------------------------------------------------------


def test_bearer_auth_refuses_everything_without_the_key(server_engine, live_server) -> None:
    url = live_server(create_app(server_engine, ServerSettings(api_key="s3cret")))
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ]:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]:
            response = httpx.request(method, url + path, headers=headers, content=b"{not json")
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": "Bearer s3cret"}
    assert httpx.get(url + "/v1/models", headers=good).status_code == 200
    reply = httpx.post(
        url + "/v1/chat/completions", headers=good, json={"model": MODEL, "messages": HELLO, "max_tokens": 2}
    )
    assert reply.status_code == 200


def test_health_metrics_and_replica_header(server_engine, live_server) -> None:
    url = live_server(create_app(server_engine, ServerSettings(replica="replica-a")))
    other = live_server(create_app(server_engine))
    reply = chat(url, max_tokens=4, **GREEDY)
    usage = reply.json()["usage"]
    assert reply.headers["x-sra-rag-replica"] == "replica-a"
    assert chat(url, n=3).status_code == 400
    events(chat(url, max_tokens=2, stream=True))
    health = httpx.get(url + "/health").json()
    assert health == {
        "status": "ok",
        "live": True,
        "ready": True,
        "model": MODEL,
        "running": 0,
        "waiting": 0,
        "max_batch": 8,
        "queue_size": 64,
    }
    metrics = httpx.get(url + "/metrics").text
    assert 'sra_rag_requests_total{route="/v1/chat/completions",status="200"} 2.0' in metrics
    assert 'sra_rag_requests_total{route="/v1/chat/completions",status="400"} 1.0' in metrics
    assert f"sra_rag_prompt_tokens_total {float(2 * usage['prompt_tokens'])}" in metrics
    assert f"sra_rag_completion_tokens_total {float(usage['completion_tokens'] + 2)}" in metrics
    assert "sra_rag_queue_depth 0.0" in metrics and "sra_rag_requests_running 0.0" in metrics
    assert 'sra_rag_request_duration_seconds_count{route="/v1/chat/completions"} 3.0' in metrics
    assert "sra_rag_time_to_first_token_seconds_count 2.0" in metrics
    assert "sra_rag_prefix_cache_hit_rate" in metrics and "sra_rag_prefix_cache_bytes" in metrics
    # a second app in the same process keeps its own registry
    assert "sra_rag_requests_total{" not in httpx.get(other + "/metrics").text.split("/metrics")[0]
    assert 'route="/v1/chat/completions"' not in httpx.get(other + "/metrics").text


def test_concurrent_requests_get_their_own_replies(url: str, server_engine) -> None:
    prompts = [[{"role": "user", "content": f"Name harbour number {i}."}] for i in range(6)]
    expected = [server_engine.generate(p, max_new_tokens=5, temperature=0) for p in prompts]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda p: chat(url, messages=p, max_tokens=5, **GREEDY).json(), prompts))
    assert [reply["choices"][0]["message"]["content"] for reply in replies] == expected


def test_the_lifespan_marks_the_app_not_ready_when_it_stops(server_engine) -> None:
    from sra_rag.server.runner import serving

    app = create_app(server_engine)
    with serving(app) as url:
        assert httpx.get(url + "/health").json()["ready"] is True
    assert app.state.server.ready is False


def test_documents_in_attention_order_with_how_much_each_was_read(recording_engine, live_server) -> None:
    from sra_rag.rag.ordering import order_by_attention

    url = live_server(create_app(recording_engine))
    engine = recording_engine._engine
    chunks = [Chunk(d["text"], d["source"], d.get("chunk_index")) for d in DOCUMENTS]
    question = [{"role": "user", "content": QUESTION}]
    plain = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, **GREEDY).json()
    assert all(isinstance(source["attention"], float) for source in plain["sources"])
    for placement in ("first", "last"):
        stuffed = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=6)
        reordered, attention, _ = order_by_attention(engine, stuffed, placement)
        body = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, order=placement, **GREEDY).json()
        assert recording_engine.calls[-1]["prompt"] == reordered.messages
        assert [s["source"] for s in body["sources"]] == reordered.sources
        most_read = stuffed.sources[attention.ranking[0]]
        assert body["sources"][0 if placement == "first" else -1]["source"] == most_read
        expected = engine.complete(reordered.messages, max_new_tokens=6, temperature=0, layout=reordered.layout)
        assert body["choices"][0]["message"]["content"] == expected.text
        assert expected.document_attention is not None
        scores = [source["attention"] for source in body["sources"]]
        assert scores == pytest.approx(list(expected.document_attention.scores), abs=1e-3)
    streamed = events(chat(url, messages=question, documents=DOCUMENTS, max_tokens=4, order="ends", stream=True))
    assert len(streamed[-2]["sources"]) == 3
    # Unset, the order is the model's default; "retrieved" keeps the order sent.
    recording_engine.defaults = engine.defaults.model_copy(update={"order": "last"})
    stuffed = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=4)
    chat(url, messages=question, documents=DOCUMENTS, max_tokens=4, **GREEDY)
    assert recording_engine.calls[-1]["prompt"] == order_by_attention(engine, stuffed, "last")[0].messages
    chat(url, messages=question, documents=DOCUMENTS, max_tokens=4, order="retrieved", **GREEDY)
    assert recording_engine.calls[-1]["prompt"] == stuffed.messages
    for bad in ({"order": "middle", "documents": DOCUMENTS}, {"order": "first"}):
        response = chat(url, messages=question, max_tokens=4, **bad)
        assert response.status_code == 400 and "order" in response.json()["error"]["message"]


def test_attribute_scores_what_the_answer_read(recording_engine, live_server) -> None:
    url = live_server(create_app(recording_engine))
    engine = recording_engine._engine
    chunks = [Chunk(d["text"], d["source"], d.get("chunk_index")) for d in DOCUMENTS]
    question = [{"role": "user", "content": QUESTION}]
    body = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, attribute=True, **GREEDY).json()
    text = body["choices"][0]["message"]["content"]
    assert text.strip()
    stuffed = stuff_prompt(engine, QUESTION, chunks, max_new_tokens=6)
    expected = engine.attribute(stuffed.messages, text, layout=stuffed.layout)
    read = [source["answer_attention"] for source in body["sources"]]
    assert read == pytest.approx(list(expected.scores), abs=1e-3)
    assert read != pytest.approx([source["attention"] for source in body["sources"]], abs=1e-3)
    plain = chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, **GREEDY).json()
    assert all(source["answer_attention"] is None for source in plain["sources"])
    streamed = events(
        chat(url, messages=question, documents=DOCUMENTS, max_tokens=6, attribute=True, stream=True, **GREEDY)
    )
    assert [s["answer_attention"] for s in streamed[-2]["sources"]] == pytest.approx(read, abs=1e-3)
    bad = chat(url, messages=question, max_tokens=4, attribute=True)
    assert bad.status_code == 400 and "attribute" in bad.json()["error"]["message"]


def test_an_answer_that_cites_no_document_gets_a_citation(server_engine, url: str) -> None:
    question = [{"role": "user", "content": QUESTION}]
    free = chat(url, messages=question, documents=DOCUMENTS, max_tokens=8, **GREEDY).json()
    text = free["choices"][0]["message"]["content"]
    assert free["choices"][0]["finish_reason"] == "length" and "(Document [" not in text  # a cut answer: as it is
    # A stop sequence ends the same greedy answer early, as the model ending it would.
    stop = next(text[i : i + 2] for i in range(3, len(text) - 1) if text.index(text[i : i + 2]) == i)
    head = text[: text.index(stop)]
    assert head.strip() and not re.search(r"\[\d+\]", head)
    ended = {"messages": question, "documents": DOCUMENTS, "max_tokens": 8, "stop": [stop], **GREEDY}
    body = chat(url, **ended).json()
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    match = re.fullmatch(re.escape(head) + r" \(Document \[(\d)\]\)", content)
    assert match, content
    # The document the answer read most (the reader's default), or with "cite": "model" the model's own pick.
    stuffed = stuff_prompt(
        server_engine,
        QUESTION,
        [Chunk(d["text"], d["source"], d.get("chunk_index")) for d in DOCUMENTS],
        max_new_tokens=8,
    )
    recommended = SRAConfig.preset("recommended")
    assert content == head + finish_answer(server_engine, stuffed, head, "stop", recommended)[0]
    by_model = chat(url, **ended, cite="model").json()["choices"][0]["message"]["content"]
    assert by_model == head + finish_answer(server_engine, stuffed, head, "stop", recommended, cite="model")[0]
    assert [source["cited"] for source in body["sources"]] == [n == int(match[1]) for n in (1, 2, 3)]
    assert chat(url, **ended, cite=False).json()["choices"][0]["message"]["content"] == head
    streamed = events(chat(url, **ended, stream=True))
    pieces = [chunk["choices"][0]["delta"].get("content") or "" for chunk in streamed[:-1]]
    assert "".join(pieces) == content and pieces[-1] == ""  # the citation streams before the last chunk
    assert [source["cited"] for source in streamed[-2]["sources"]] == [source["cited"] for source in body["sources"]]
    bad = chat(url, messages=question, max_tokens=4, cite=True)
    assert bad.status_code == 400 and "cite" in bad.json()["error"]["message"]
