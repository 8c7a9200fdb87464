"""The tracker's /metrics scraped while a real client is served: the numbers move.

The exposition is also checked by Prometheus's own linter, ``promtool check metrics``,
where COMPASS_PROMTOOL names it (CI extracts it from Debian's prometheus package).
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import pytest

from compassd.client import connect_tracker
from compassd.protocol.errors import NotAuthorized

from .conftest import KEY, TOKENS, Lab, get, wait_for

NPU = (("key", KEY),)


def test_grants_waits_lease_ends_and_refusals_move_the_metrics(lab: Lab) -> None:
    lab.reset()
    before = lab.scrape()
    assert before[("compassd_tracker_devices", (("key", KEY), ("state", "free")))] == 2
    assert before[("compassd_tracker_waiting_requests", NPU)] == 0

    carl = connect_tracker(lab.host, lab.port, token=TOKENS["client"], timeout=20)
    dora = connect_tracker(lab.host, lab.port, token=TOKENS["client"], timeout=20)
    waited: list[Any] = []
    try:
        first = carl.request(KEY, lease=600, wait=20)
        second = carl.request(KEY, lease=600, wait=20)
        third = threading.Thread(
            target=lambda: waited.append(dora.request(KEY, lease=600, wait=20)),
            name="the request that waits", daemon=True)
        third.start()
        busy = wait_for(
            "the waiting request in the metrics",
            lambda: (lambda m: m if m[("compassd_tracker_waiting_requests", NPU)] == 1
                     else None)(lab.scrape()), deadline=10)
        assert busy[("compassd_tracker_devices", (("key", KEY), ("state", "busy")))] == 2
        assert busy[("compassd_tracker_active_leases", NPU)] == 2
        assert busy[("compassd_tracker_grants_total", NPU)] == \
            before[("compassd_tracker_grants_total", NPU)] + 2
        assert busy[("compassd_tracker_connections", (("role", "client"),))] >= 2
        assert busy[("compassd_tracker_connections", (("role", "board"),))] == 2

        first.release()  # the waiting request gets the board
        third.join(timeout=20)
        assert waited, "the third request was not granted"
        after = lab.scrape()
        waited[0].release()
        second.release()
    finally:
        carl.close()
        dora.close()

    def moved(name: str, labels: tuple[tuple[str, str], ...] = NPU) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert after[("compassd_tracker_waiting_requests", NPU)] == 0
    assert moved("compassd_tracker_wait_seconds_count") == 3
    assert moved("compassd_tracker_wait_seconds_sum") > 0  # the third one waited
    assert moved("compassd_tracker_lease_ends_total", (("key", KEY), ("reason", "released"))) == 1
    assert moved("compassd_tracker_hold_seconds_count") == 1
    assert moved("compassd_tracker_requests_total", (("key", KEY), ("outcome", "granted"))) == 3

    with pytest.raises(NotAuthorized):
        connect_tracker(lab.host, lab.port, token="not-a-token", timeout=20)
    refused = ("compassd_tracker_refused_authentications_total", (("role", "client"),))
    assert lab.scrape()[refused] == before.get(refused, 0.0) + 1


def test_promtool_accepts_the_tracker_metrics(lab: Lab) -> None:
    promtool = os.environ.get("COMPASS_PROMTOOL")
    if not promtool:
        pytest.skip("COMPASS_PROMTOOL is not set (CI extracts promtool from Debian's"
                    " prometheus package)")
    status, body = get(f"{lab.metrics}/metrics")
    assert status == 200
    checked = subprocess.run([promtool, "check", "metrics"], input=body,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == b"" and checked.stderr.strip() == b"", \
        (checked.stdout + checked.stderr).decode()
