"""Prometheus metrics of one app, in a registry of its own (several apps in one process, as in the
tests or a benchmark, do not collide): requests by route and status, their latency (to the last byte,
streams included), time to first token, tokens read and generated, the queue, and the engine's prefix
cache (its hit rate and the bytes it holds).

``GET /metrics`` serves them in Prometheus' text format. Under Ray Serve each replica has its own
registry, and a scrape through the proxy reaches one replica: scrape replicas directly, or use
Ray's own metrics export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sra_rag.generation.prefix_cache import PrefixCacheStats

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The app's metrics. ``running`` and ``waiting`` are read when scraped (from the admission control),
    and so is ``prefix_cache`` (the engine's prefix cache counters, None when it is off)."""

    def __init__(
        self,
        running: Callable[[], float],
        waiting: Callable[[], float],
        prefix_cache: Callable[[], PrefixCacheStats | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sra_rag_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "sra_rag_request_duration_seconds",
            "Time from a request's arrival to the last byte of its response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "sra_rag_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first generated text (queueing included).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("sra_rag_prompt_tokens", "Prompt tokens read.", registry=self.registry)
        self.completion_tokens = Counter(
            "sra_rag_completion_tokens", "Completion tokens generated.", registry=self.registry
        )
        Gauge("sra_rag_requests_running", "Requests generating now.", registry=self.registry).set_function(running)
        Gauge("sra_rag_queue_depth", "Requests waiting for a slot.", registry=self.registry).set_function(waiting)

        def cached(field: str) -> Callable[[], float]:
            return lambda: float(getattr(prefix_cache(), field, 0.0))

        for name, field, text in (
            ("sra_rag_prefix_cache_hit_rate", "hit_rate", "Share of prompt tokens served from the prefix cache."),
            ("sra_rag_prefix_cache_bytes", "bytes", "Bytes of KV the prefix cache holds."),
            ("sra_rag_prefix_cache_budget_bytes", "budget_bytes", "The prefix cache's budget (0: off)."),
            ("sra_rag_prefix_cache_cached_tokens", "cached_tokens", "Prompt tokens taken from the prefix cache."),
            ("sra_rag_prefix_cache_prompt_tokens", "prompt_tokens", "Prompt tokens looked up in the prefix cache."),
        ):
            Gauge(name, text, registry=self.registry).set_function(cached(field))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every response and times it to its last byte (pure ASGI, so streams are not buffered)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _route(scope: Scope) -> str:
    """The route's path template (bounded label values); ``"other"`` for paths no route matches."""
    router = scope["app"].router if "app" in scope else None
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"
