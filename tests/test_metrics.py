"""compassd.metrics: each daemon's own registry, served at /metrics by twisted.web."""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

from compassd.metrics import metrics_site, new_registry
from tests.httpmemory import request


def test_metrics_are_served_in_the_text_format_from_the_daemons_own_registry() -> None:
    registry = new_registry()
    jobs = Counter("compassd_test_jobs", "Jobs.", ["kind"], registry=registry)
    jobs.labels("a").inc(3)
    Gauge("compassd_test_open", "Open things.", registry=registry).set(2)
    site = metrics_site(registry, "compass-test", MemoryReactorClock())
    status, headers, body = request(site, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert [(s.labels, s.value) for s in families["compassd_test_jobs"].samples
            if s.name.endswith("_total")] == [({"kind": "a"}, 3.0)]
    assert families["compassd_test_open"].samples[0].value == 2.0
    # Nothing from prometheus_client's global registry (process, platform, gc) leaks in.
    assert not [name for name in families if not name.startswith("compassd_")]


def test_a_scraper_that_asks_for_openmetrics_gets_it() -> None:
    registry = new_registry()
    Counter("compassd_test_jobs", "Jobs.", registry=registry).inc()
    site = metrics_site(registry, "compass-test", MemoryReactorClock())
    status, headers, body = request(
        site, "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_the_root_says_where_the_metrics_are() -> None:
    site = metrics_site(new_registry(), "compass-test", MemoryReactorClock())
    status, _, body = request(site, "GET", "/")
    assert status == 200 and b"/metrics" in body and b"compass-test" in body
