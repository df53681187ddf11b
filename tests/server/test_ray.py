"""Ray Serve: two replicas of the app, each with its own embedded model, on a local Ray instance that
this module starts once and shuts down (about a minute on two cores)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.enable_socket]

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from ray import serve

    from sra_rag.server.deployment import reader_app
    from sra_rag.server.settings import EngineSpec, ServerSettings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # num_cpus=0: both replicas fit beside Ray's own actors on a two-core machine.
        app = reader_app(EngineSpec(), ServerSettings(max_batch=4, queue_size=16), replicas=2, num_cpus=0)
        serve.run(app, name="sra-rag", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def ask(url: str, model: str, number: int) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say the number {number}."}], "max_tokens": 3}
    return httpx.post(url + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)


def test_requests_spread_over_two_replicas_and_survive_losing_one(cluster: str, embedded_engine) -> None:
    model = embedded_engine.name
    expected = {n: embedded_engine.generate(f"Say the number {n}.", max_new_tokens=3, temperature=0) for n in range(4)}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda n: ask(cluster, model, n % 4), range(16)))
    assert [reply.status_code for reply in replies] == [200] * 16
    assert [reply.json()["choices"][0]["message"]["content"] for reply in replies] == [
        expected[n % 4] for n in range(16)
    ]
    replicas = {reply.headers["x-sra-rag-replica"] for reply in replies}
    assert len(replicas) == 2, replicas

    victim = sorted(replicas)[0]
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{victim}")]
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)

    with ThreadPoolExecutor(8) as pool:
        after = list(pool.map(lambda n: ask(cluster, model, n % 4), range(8)))
    assert [reply.status_code for reply in after] == [200] * 8
    assert [reply.json()["choices"][0]["message"]["content"] for reply in after] == [expected[n % 4] for n in range(8)]
    assert victim not in {reply.headers["x-sra-rag-replica"] for reply in after}


def test_the_serve_run_target_validates_its_arguments() -> None:
    from pydantic import ValidationError

    from sra_rag.server.deployment import build

    app = build({"replicas": "3", "num_gpus": "1", "preset": "paper", "max_batch": "16"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_gpus"] == 1.0
    assert deployment.max_ongoing_requests == 16 + 64
    settings = build({"max_body_bytes": "65536"})._bound_deployment.init_args[1]
    assert settings.max_body_bytes == 65536
    with pytest.raises(ValidationError, match="unknown SRA preset"):
        build({"preset": "fastest"})
    with pytest.raises(ValidationError, match="replica"):
        build({"replica": "2"})
