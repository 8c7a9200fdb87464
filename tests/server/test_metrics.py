"""compassd.server.metrics: compass-server's metric definitions."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from compassd.server.metrics import ServerMetrics


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_sessions_runs_bytes_executors_and_health() -> None:
    health = {"npu-1": (True, "aipu")}
    open_sessions = [1]
    metrics = ServerMetrics(lambda: health, lambda: open_sessions[0])
    v = samples(metrics)
    assert v[("compassd_server_sessions_total", (("outcome", "expired"),))] == 0
    assert v[("compassd_server_healthy", (("backend", "aipu"), ("device", "npu-1")))] == 1
    assert v[("compassd_server_active_sessions", ())] == 1
    metrics.session_ended("released")
    metrics.session_ended("something new")
    metrics.ran("aipu", 0.004)
    metrics.run_failed("aipu")
    metrics.uploaded.inc(1000)
    metrics.downloaded.inc(40)
    metrics.executor_starts.inc()
    metrics.executor_crashes.inc()
    metrics.checked(False)
    health["npu-1"] = (False, "aipu")
    open_sessions[0] = 0
    v = samples(metrics)
    assert v[("compassd_server_sessions_total", (("outcome", "released"),))] == 1
    assert v[("compassd_server_sessions_total", (("outcome", "other"),))] == 1
    assert v[("compassd_server_run_seconds_count", (("backend", "aipu"),))] == 1
    assert v[("compassd_server_run_seconds_bucket", (("backend", "aipu"), ("le", "0.005")))] == 1
    assert v[("compassd_server_run_errors_total", (("backend", "aipu"),))] == 1
    assert v[("compassd_server_uploaded_bytes_total", ())] == 1000
    assert v[("compassd_server_downloaded_bytes_total", ())] == 40
    assert v[("compassd_server_executor_crashes_total", ())] == 1
    assert v[("compassd_server_health_checks_total", (("result", "failed"),))] == 1
    assert v[("compassd_server_healthy", (("backend", "aipu"), ("device", "npu-1")))] == 0
    assert v[("compassd_server_active_sessions", ())] == 0
