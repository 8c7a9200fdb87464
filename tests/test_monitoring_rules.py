"""docs/prometheus: the example configuration and alert rules pass Prometheus's own
checks, and each alert fires on the series it is written for (``promtool test rules``).

Runs where COMPASS_PROMTOOL names a promtool (CI unpacks Debian's); skips elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "prometheus"


@pytest.fixture
def promtool() -> str:
    path = os.environ.get("COMPASS_PROMTOOL")
    if not path:
        pytest.skip("COMPASS_PROMTOOL is not set (CI unpacks promtool from Debian's"
                    " prometheus package)")
    return path


def run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=DOCS, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_example_configuration_and_its_rules_are_valid(promtool: str) -> None:
    out = run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    assert "SUCCESS: 5 rules found" in run(promtool, "check", "rules", "compassd-rules.yml")


def test_each_alert_fires_on_its_own_series(promtool: str) -> None:
    assert "SUCCESS" in run(promtool, "test", "rules", "compassd-rules.test.yml")


def test_every_alert_has_a_test() -> None:
    rules = (DOCS / "compassd-rules.yml").read_text()
    tests = (DOCS / "compassd-rules.test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines()
              if line.strip().startswith("- alert:")]
    assert len(alerts) == 5
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
