"""The ``sra-rag serve`` command (gathered by :mod:`sra_rag.cli.app`): serve a model over an OpenAI-compatible
HTTP API, in this process with uvicorn, or as ``--replicas N`` Ray Serve replicas.

Heavy imports (torch, FastAPI, Ray) happen inside the command so that ``--help`` stays fast.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from sra_rag.cli.common import ModelOption
from sra_rag.server.settings import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, MAX_BODY_BYTES_ENV

app = typer.Typer()


@app.command()
def serve(
    model: ModelOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)] = 8000,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Default SRA preset (requests may send their own): paper, demo, off, recommended, documents "
            "(default: the model's own default).",
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Requests generating at once (per replica).", min=1)
    ] = 8,
    queue_size: Annotated[
        int,
        typer.Option("--queue-size", help="Requests that may wait for a slot; beyond them: 429 (per replica).", min=0),
    ] = 64,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds a request may take, queueing included (then 504).", min=0.001)
    ] = 300.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            help=f"Require 'Authorization: Bearer <key>' on every request (or set ${API_KEY_ENV}).",
        ),
    ] = None,
    replicas: Annotated[
        int, typer.Option("--replicas", help="Ray Serve replicas, each with its own engine (1: no Ray).", min=1)
    ] = 1,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="The model name clients send (default: the model's).")
    ] = None,
    default_max_tokens: Annotated[
        int, typer.Option("--default-max-tokens", help="Completion length when a request sets none.", min=1)
    ] = 512,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: CUDA if present).")
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes",
            envvar=MAX_BODY_BYTES_ENV,
            help=f"Largest request body in bytes; a larger one is refused with 413 before it is read "
            f"(or set ${MAX_BODY_BYTES_ENV}).",
            min=1024,
        ),
    ] = DEFAULT_MAX_BODY_BYTES,
    prefix_cache_mb: Annotated[
        int,
        typer.Option("--prefix-cache-mb", help="Budget of the prefix cache in MiB (0: off).", min=0),
    ] = 1024,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="CPU weight format: fp32, bf16, int8 or int4 (default: the model's measured one; docs/bench)",
        ),
    ] = None,
) -> None:
    """Serve the model over an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models,
    /health, /metrics."""
    from pydantic import ValidationError

    from sra_rag.server.settings import EngineSpec, ServerSettings

    try:
        spec = EngineSpec(model=model, preset=preset, device=device, prefix_cache_mb=prefix_cache_mb, weights=weights)
        settings = ServerSettings(
            max_batch=max_batch,
            queue_size=queue_size,
            timeout=timeout,
            api_key=api_key or None,
            default_max_tokens=default_max_tokens,
            model_name=served_model_name,
            max_body_bytes=max_body_bytes,
        )
    except ValidationError as error:
        _fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in error.errors()))
    if not _is_loopback(host) and settings.api_key is None:
        typer.secho(
            f"Warning: listening on {host} without --api-key: anyone who can reach this port can use the model.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    try:
        if replicas > 1:
            from sra_rag.server.deployment import run_replicas

            run_replicas(spec, settings, replicas=replicas, host=host, port=port)
            return
        from sra_rag.server import create_app
        from sra_rag.server.runner import serve as run_server

        engine = spec.load(max_batch_size=settings.max_batch)
        typer.secho(f"Serving {settings.model_name or engine.name} on http://{host}:{port}/v1", err=True)
        run_server(create_app(engine, settings), host, port)
    except (FileNotFoundError, ValueError, ImportError) as error:
        _fail(str(error))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)
