"""Prometheus metrics over HTTP, for every compassd daemon.

Each daemon keeps its metrics in its own L{CollectorRegistry} (never prometheus_client's
global one, so two daemons in one process, as in the tests, never mix their numbers) and
serves it on C{--metrics ENDPOINT} with twisted.web: C{GET /metrics} answers in the text
format Prometheus scrapes (or OpenMetrics, when the scraper asks for it). Off unless the
option is given; the packaged configuration suggests a loopback endpoint.

The metric definitions live beside each daemon (L{compassd.tracker.metrics},
L{compassd.server.metrics}, L{compassd.proxy.metrics}); this module only serves them.
Works with prometheus_client 0.16 (Debian 12) and the current release.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .listening import Listener

PREFIX = "compassd_"
"""Every metric compassd exports starts with this."""


def new_registry() -> CollectorRegistry:
    """A registry of a daemon's own, without prometheus_client's process and platform
    collectors (the node exporter and systemd already watch the process)."""
    return CollectorRegistry(auto_describe=True)


class MetricsResource(Resource):
    """C{/metrics}: the registry in the exposition format the scraper accepts."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        body: bytes = encoder(self.registry)
        request.setHeader("Content-Type", content_type)
        request.setHeader("Cache-Control", "no-store")
        return body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class NotFound(Resource):
    """A plain-text 404 (Twisted's own default page is deprecated)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return b"Not found.\n"


class _Index(Resource):
    """C{/}: a line saying where the metrics are, for a person who opens the port."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else NotFound()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return f"{self.what}: Prometheus metrics are at /metrics\n".encode()


def metrics_site(registry: CollectorRegistry, what: str = "compassd",
                 reactor: Any = None) -> Site:
    """A twisted.web site serving C{registry} at C{/metrics}."""
    root = _Index(what)
    root.putChild(b"metrics", MetricsResource(registry))
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site


def metrics_listener(reactor: Any, what: str, endpoint: str,
                     registry: CollectorRegistry) -> Listener:
    """A service that serves C{registry} on C{endpoint} while it runs; its log line says
    C{WHAT metrics listening on ADDRESS}."""
    site: Any = metrics_site(registry, what, reactor)
    return Listener(reactor, f"{what} metrics", endpoint, site)


__all__ = ["PREFIX", "MetricsResource", "NotFound", "metrics_listener", "metrics_site",
           "new_registry"]
