"""Request validation, SRA settings per request, citations and the admission queue, without a server."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from sra_rag import SRAConfig
from sra_rag.rag.citing import cited_numbers
from sra_rag.server.admission import Admission, AdmissionTimeoutError, QueueFullError
from sra_rag.server.errors import APIError, validation_error
from sra_rag.server.generation import chat_job, resolve_sra
from sra_rag.server.protocol import ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, Delta, dump
from sra_rag.server.settings import EngineSpec, ServerSettings

BASE = SRAConfig.preset("recommended")
USER = [{"role": "user", "content": "Hello"}]


def chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


def problem(**fields) -> APIError:
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    return validation_error(caught.value.errors(include_url=False))


def test_sra_by_preset_name_or_fields_over_a_preset_or_the_server_default() -> None:
    assert resolve_sra(None, BASE) is None
    assert resolve_sra("off", BASE) == SRAConfig(enabled=False)
    assert resolve_sra({"preset": "paper", "beta_outer": 2}, BASE) == SRAConfig(beta_outer=2.0)
    assert resolve_sra({"beta_outer": 3}, BASE) == BASE.model_copy(update={"beta_outer": 3.0})


@pytest.mark.parametrize(
    ("value", "param", "words"),
    [
        ({"beta_outer": -1}, "sra.beta_outer", "greater than or equal to 0"),
        ({"tail_lenght": 10}, "sra.tail_lenght", "unknown SRA setting"),
        ({"outer_layers": [0.8, 0.2]}, "sra", "outer_layers must satisfy"),
        ({"preset": "fast"}, "sra.preset", "unknown SRA preset 'fast'"),
        ("fast", "sra", "choose one of"),
        ({"preset": 3}, "sra.preset", "must be a preset name"),
    ],
)
def test_a_bad_sra_setting_is_a_400_naming_the_field(value, param: str, words: str) -> None:
    with pytest.raises(APIError) as caught:
        resolve_sra(value, BASE)
    assert caught.value.status == 400 and caught.value.param == param
    assert words in caught.value.message


def test_content_parts_are_joined_and_developer_reads_as_system() -> None:
    request = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
        ]
    )
    assert [message.as_dict() for message in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"n": 2}, "n", "only n=1 is supported"),
        ({"messages": []}, "messages", "at least one"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0", "needs the tool_call_id"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role", "'tool' message"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0", "needs content"),
        ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "messages.0", "only tool messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content", "must be a string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
            "reads text only",
        ),
        ({"max_tokens": "many"}, "max_tokens", "valid integer"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "", "disagree"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"stop": ["", "x"]}, "stop", "non-empty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools", "a tool name must be"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"}, "tool_choice", "auto"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "",
            "not in tools",
        ),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty", "greater than or equal to 0.01"),
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"stream_options": {"include_usage": True, "obfuscate": True}}, "stream_options.obfuscate", "Unrecognized"),
        ({"response_format": {"type": "xml"}}, "response_format", "does not match any of the expected tags"),
        ({"documents": []}, "documents", "empty list"),
        ({"documents": [{"text": "x", "url": "y"}]}, "documents.0.url", "Unrecognized request argument"),
        ({"max_token": 5}, "max_token", "Unrecognized request argument supplied: max_token"),
    ],
)
def test_invalid_requests_name_the_field(fields, param: str, words: str) -> None:
    error = problem(**fields)
    assert error.status == 400 and error.type == "invalid_request_error"
    assert (error.param or "") == param
    assert words in error.message


class RecordingRequests:
    """Stands in for the engine: records the settings of ``engine.request``."""

    sra = BASE

    def request(self, prompt, **options):
        self.options = options
        return "request"


def test_response_format_and_sampling_become_the_engines_settings() -> None:
    engine = RecordingRequests()
    schema = {"type": "object", "properties": {"town": {"type": "string"}}, "required": ["town"]}
    settings = ServerSettings()
    wanted = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    assert chat_job(engine, chat(response_format=wanted, max_tokens=5), settings).options["json_schema"] == schema
    chat_job(engine, chat(response_format={"type": "json_object"}, max_tokens=5), settings)
    assert engine.options["json_schema"] == {"type": "object"}
    job = chat_job(engine, chat(response_format={"type": "text"}, max_tokens=5, temperature=0.5), settings)
    assert job.request == "request" and job.prompt == USER
    assert engine.options == {
        "sra": None,
        "temperature": 0.5,
        "top_p": 1.0,
        "seed": None,
        "stop": None,
        "max_new_tokens": 5,
    }


def test_malformed_json_is_a_clear_400() -> None:
    error = validation_error(
        [{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}]
    )
    assert error.status == 400 and error.code == "invalid_json"
    assert error.message == "The request body is not valid JSON (Expecting value)."


def test_stream_deltas_carry_only_what_they_change() -> None:
    chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[ChatChunkChoice(delta=Delta(content="Hi"))])
    data = dump(chunk)
    assert data["choices"][0]["delta"] == {"content": "Hi"}
    assert "sources" not in data and data["usage"] is None


def test_citations_are_read_in_every_common_form() -> None:
    assert cited_numbers("As [1] and [2, 4] say, see also [3][5]. Not 6 or [x].") == [1, 2, 4, 3, 5]
    assert cited_numbers("no citation") == []


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown SRA preset"):
        EngineSpec(preset="fastest")
    with pytest.raises(ValidationError):
        ServerSettings(max_batch=0)
    assert "secret" not in repr(ServerSettings(api_key="secret"))


# -- admission --------------------------------------------------------------------------------------


async def test_slots_then_queue_then_refusal_and_slots_pass_in_order() -> None:
    admission = Admission(max_running=1, max_waiting=2)
    first = await admission.acquire(1.0)
    waiters = [asyncio.create_task(admission.acquire(5.0)) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert (admission.running, admission.waiting, admission.full) == (1, 2, True)
    with pytest.raises(QueueFullError) as refused:
        await admission.acquire(1.0)
    assert refused.value.retry_after >= 1 and "queue is full" in str(refused.value)

    admission.release(first)
    await asyncio.sleep(0.01)
    assert waiters[0].done() and not waiters[1].done()
    assert (admission.running, admission.waiting) == (1, 1)
    admission.release(waiters[0].result())
    admission.release(await waiters[1])
    assert (admission.running, admission.waiting, admission.full) == (0, 0, False)


async def test_a_waiter_that_times_out_or_is_cancelled_gives_up_its_place() -> None:
    admission = Admission(max_running=1, max_waiting=2)
    held = await admission.acquire(1.0)
    with pytest.raises(AdmissionTimeoutError):
        await admission.acquire(0.05)
    cancelled = asyncio.create_task(admission.acquire(5.0))
    behind = asyncio.create_task(admission.acquire(5.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert admission.waiting == 1
    admission.release(held)
    admission.release(await asyncio.wait_for(behind, 1.0))  # the slot skipped the cancelled waiter
    assert (admission.running, admission.waiting) == (0, 0)
    assert await admission.acquire(0.01) > 0  # and the pool is whole again


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a town.",
        "parameters": {"type": "object", "properties": {"town": {"type": "string"}}, "required": ["town"]},
    },
}


def test_the_chat_fields_clients_send_are_accepted_and_read() -> None:
    request = ChatCompletionRequest.model_validate_json(
        """{"model": "m", "stream": true,
            "stream_options": {"include_usage": true, "include_obfuscation": false},
            "tool_choice": "auto", "parallel_tool_calls": false,
            "messages": [
              {"role": "user", "content": "Weather in Oslo?", "name": "ada"},
              {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\\"town\\": \\"Oslo\\"}"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
              {"role": "assistant", "content": null, "refusal": "I cannot say more."},
              {"role": "user", "content": "Thanks", "name": "ada"}]}"""
    )
    assert request.include_usage and request.tool_choice is None  # no tools: nothing to choose from
    assert request.engine_messages() == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"town": "Oslo"}}'},
        {"role": "user", "content": "Tool get_weather returned: sunny"},
        {"role": "assistant", "content": "I cannot say more."},
        {"role": "user", "content": "Thanks"},
    ]


def test_tools_and_tool_choice_become_the_engines_settings() -> None:
    engine = RecordingRequests()
    settings = ServerSettings()
    for choice, expected in [
        (None, "auto"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
    ]:
        job = chat_job(engine, chat(tools=[WEATHER], tool_choice=choice, max_tokens=5), settings)
        assert engine.options["tools"] == [WEATHER] and engine.options["tool_choice"] == expected
        assert job.tools == [WEATHER]
    job = chat_job(engine, chat(tools=[WEATHER], tool_choice="none", max_tokens=5), settings)
    assert "tools" not in engine.options and job.tools is None
    assert job.tool_call('{"name": "get_weather", "arguments": {}}', "stop") is None
    job = chat_job(engine, chat(tools=[WEATHER], max_tokens=5), settings)
    call = job.tool_call('{"name": "get_weather", "arguments": {"town": "Oslo"}}', "stop")
    assert call is not None and (call.name, call.arguments) == ("get_weather", {"town": "Oslo"})
    assert job.tool_call('{"name": "get_weather", "argu', "length") is None  # cut short: text
    assert job.tool_call("It is sunny.", "stop") is None
    for bad in ({"response_format": {"type": "json_object"}}, {"documents": [{"text": "x"}]}):
        with pytest.raises(ValidationError, match="not both|not supported"):
            chat(tools=[WEATHER], **bad)


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenised() -> None:
    from sra_rag.server.generation import check_prompt_size

    check_prompt_size(chat(messages=[{"role": "user", "content": "x" * 4000}]), 1000, 4)
    with pytest.raises(APIError) as caught:
        check_prompt_size(chat(messages=[{"role": "user", "content": "x" * 4004}]), 1000, 4)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "context_length_exceeded", "messages")
    assert "at least 1,001 tokens" in caught.value.message
    with pytest.raises(APIError) as caught:
        check_prompt_size(chat(documents=[{"text": "y" * 5000}]), 1000, 4)
    assert caught.value.param == "documents"


def test_sampling_settings_that_overflow_are_refused_by_the_engine_settings() -> None:
    from sra_rag.generation.request import SamplingSettingsError, sampling_settings

    for setting in ({"repetition_penalty": 1e-300}, {"repetition_penalty": 1e300}, {"temperature": float("nan")}):
        with pytest.raises(SamplingSettingsError) as caught:
            sampling_settings(**setting)
        assert caught.value.settings == list(setting)
    assert sampling_settings(temperature=1e-30).greedy  # dividing by it would overflow: greedy
    assert not sampling_settings(temperature=0.01).greedy
