"""Scale-out on Ray Serve: replicas of the same app, each holding its own engine.

:class:`SRAReader` is a Ray Serve deployment whose ingress is the app of :func:`create_app` (built in
each replica once its engine is loaded), so HTTP behaves exactly as under ``sra-rag serve``: Ray's
proxy spreads requests over the replicas and restarts one that dies. Every response carries the
``x-sra-rag-replica`` header naming the replica that answered.

From the command line::

    sra-rag serve --replicas 2                                   # a local Ray instance
    serve run sra_rag.server.deployment:build replicas=2 preset=recommended
    serve run sra_rag.server.deployment:build model=qwen2.5-coder-0.5b replicas=4 num_gpus=1

``build`` takes the fields of :class:`DeploymentArgs` as ``key=value`` arguments. Each replica asks Ray
for ``num_cpus`` CPUs and ``num_gpus`` GPUs, so on a cluster (``ray start --head`` / ``ray start
--address=...``, then ``serve run`` with ``RAY_ADDRESS`` set) Ray places one replica per GPU across
the nodes; see ``docs/serving.md``.
"""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp

from sra_rag.server.settings import DEFAULT_MAX_BODY_BYTES, EngineSpec, ServerSettings

DEPLOYMENT_NAME = "SRAReader"


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class SRAReader:
    """One replica: an engine, and the app serving it (built by Ray after ``__init__``)."""

    def __init__(self, spec: EngineSpec, settings: ServerSettings) -> None:
        self.engine = spec.load(max_batch_size=settings.max_batch)
        replica = settings.replica or serve.get_replica_context().replica_id.unique_id
        self.settings = settings.model_copy(update={"replica": replica})

    def __serve_build_asgi_app__(self) -> ASGIApp:
        from sra_rag.server.app import create_app

        return create_app(self.engine, self.settings)


class DeploymentArgs(BaseModel):
    """Arguments of :func:`build` (``serve run sra_rag.server.deployment:build key=value ...``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    preset: str | None = None  # None: the model's default (SRAEngine.defaults)
    device: str | None = None
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_batch: int = Field(8, ge=1)
    queue_size: int = Field(64, ge=0)
    timeout: float = Field(300.0, gt=0)
    api_key: str | None = Field(None, repr=False)
    default_max_tokens: int = Field(512, ge=1)
    served_model_name: str | None = None
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)


def reader_app(
    spec: EngineSpec, settings: ServerSettings, *, replicas: int, num_cpus: float = 1.0, num_gpus: float = 0.0
) -> Application:
    """The Ray Serve application: ``replicas`` copies of the app, each with an engine loaded from ``spec``.
    A replica takes up to ``max_batch + queue_size`` requests from Ray's proxy, so the app's own queue
    (429 with ``Retry-After`` when full) governs each replica."""
    return SRAReader.options(  # type: ignore[attr-defined]  # serve.deployment made it a Deployment
        num_replicas=replicas,
        max_ongoing_requests=settings.max_batch + settings.queue_size,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
    ).bind(spec, settings)


def build(args: dict[str, Any]) -> Application:
    """The ``serve run`` target: ``serve run sra_rag.server.deployment:build replicas=2 model=...``."""
    parsed = DeploymentArgs.model_validate(args)
    spec = EngineSpec(model=parsed.model, preset=parsed.preset, device=parsed.device)
    settings = ServerSettings(
        max_batch=parsed.max_batch,
        queue_size=parsed.queue_size,
        timeout=parsed.timeout,
        api_key=parsed.api_key,
        default_max_tokens=parsed.default_max_tokens,
        model_name=parsed.served_model_name,
        max_body_bytes=parsed.max_body_bytes,
    )
    return reader_app(spec, settings, replicas=parsed.replicas, num_cpus=parsed.num_cpus, num_gpus=parsed.num_gpus)


def run_replicas(
    spec: EngineSpec,
    settings: ServerSettings,
    *,
    replicas: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> None:
    """Start (or join, with ``RAY_ADDRESS``) a Ray instance, serve ``replicas`` replicas behind Ray's
    HTTP proxy on ``host:port``, and block until interrupted."""
    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        reader_app(spec, settings, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus),
        name="sra-rag",
        blocking=True,
    )
