"""compassd.proxy.metrics: compass-proxy's metric definitions."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from compassd.proxy.metrics import ProxyMetrics


def test_relayed_sessions_bytes_and_open_channels() -> None:
    channels = [2]
    metrics = ProxyMetrics(lambda: channels[0], lambda: 3)
    metrics.relayed_bytes("to-board", 500)
    metrics.relayed_bytes("to-client", 70)
    metrics.session_ended(True)
    metrics.session_ended(False)
    channels[0] = 1
    text = generate_latest(metrics.registry).decode()
    v = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for family in text_string_to_metric_families(text) for s in family.samples}
    assert v[("compassd_proxy_relayed_bytes_total", (("direction", "to-board"),))] == 500
    assert v[("compassd_proxy_relayed_bytes_total", (("direction", "to-client"),))] == 70
    assert v[("compassd_proxy_relayed_sessions_total", (("outcome", "completed"),))] == 1
    assert v[("compassd_proxy_relayed_sessions_total", (("outcome", "unpaired"),))] == 1
    assert v[("compassd_proxy_open_channels", ())] == 1
    assert v[("compassd_proxy_devices", ())] == 3
