"""``sra-rag serve``: options reach the app, bad settings fail before a model loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sra_rag.cli import build_app
from sra_rag.server.settings import API_KEY_ENV, EngineSpec


@pytest.fixture
def started(monkeypatch, tiny_engine) -> dict:
    """Stub out model loading and uvicorn; record what the command would serve."""
    seen: dict = {}

    def load(spec: EngineSpec, max_batch_size: int | None = None):
        seen.update(spec=spec, max_batch_size=max_batch_size)
        return tiny_engine

    def serve(app, host, port):
        seen.update(app=app, host=host, port=port)

    monkeypatch.setattr(EngineSpec, "load", load)
    monkeypatch.setattr("sra_rag.server.runner.serve", serve)
    return seen


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(build_app(), ["serve", *args], env=env, catch_exceptions=False)


def test_serve_passes_its_options_to_the_app(started: dict) -> None:
    result = invoke("--port", "9001", "--preset", "paper", "--max-batch", "3", "--queue-size", "5", "--timeout", "7")
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 9001)
    assert started["spec"] == EngineSpec(model=None, preset="paper", device=None)
    settings = started["app"].state.server.settings
    assert (settings.max_batch, settings.queue_size, settings.timeout, settings.api_key) == (3, 5, 7.0, None)
    assert started["max_batch_size"] == 3  # the engine batches as many requests as the server runs
    assert "Serving tiny-llama on http://127.0.0.1:9001/v1" in result.stderr


def test_the_api_key_comes_from_the_option_or_the_environment(started: dict) -> None:
    assert invoke("--api-key", "k1").exit_code == 0
    assert started["app"].state.server.settings.api_key == "k1"
    assert invoke(env={API_KEY_ENV: "k2"}).exit_code == 0
    assert started["app"].state.server.settings.api_key == "k2"


def test_an_open_host_without_a_key_is_warned_about(started: dict) -> None:
    result = invoke("--host", "0.0.0.0")
    assert result.exit_code == 0 and "without --api-key" in result.stderr
    assert "without --api-key" not in invoke("--host", "::1").stderr


def test_bad_settings_fail_before_loading(started: dict) -> None:
    result = invoke("--preset", "fastest")
    assert result.exit_code == 1 and "unknown SRA preset 'fastest'" in result.stderr
    assert "spec" not in started
    assert invoke("--max-batch", "0").exit_code == 2  # typer's own range check


def test_the_body_limit_comes_from_the_option_or_the_environment(started: dict) -> None:
    from sra_rag.server.settings import DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_ENV

    assert invoke().exit_code == 0
    assert started["app"].state.server.settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert invoke("--max-body-bytes", "65536").exit_code == 0
    assert started["app"].state.server.settings.max_body_bytes == 65536
    assert invoke(env={MAX_BODY_BYTES_ENV: "100000"}).exit_code == 0
    assert started["app"].state.server.settings.max_body_bytes == 100000
    assert invoke("--max-body-bytes", "10").exit_code == 2
