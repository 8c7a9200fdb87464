"""`compass --ca FILE` against a compass-tracker that listens with TLS: the right CA is
trusted and the command works; a wrong CA fails with one sentence that says so.

A real tracker process on 127.0.0.1 with a certificate from a CA the test makes; the CLI
runs in this process. The tracker is stopped by PID.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import daemon_log, free_port, start_twistd, stop, wait_logged
from tests.test_cli import compass
from tests.test_tls import CA


@pytest.fixture
def tls_tracker(tmp_path: Path) -> Iterator[tuple[int, CA, CA]]:
    site, rogue = CA(tmp_path, "site"), CA(tmp_path, "rogue")
    cert, key = site.issue("tracker", dns=("localhost",), ips=("127.0.0.1",))
    port = free_port()
    proc: subprocess.Popen[bytes]
    proc, _ = start_twistd("compass-tracker", "--hello-timeout", "3", "--listen",
                           f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    try:
        wait_logged(proc, f"listening on tcp 127.0.0.1:{port}")
        yield port, site, rogue
    finally:
        stop(proc)
        print(daemon_log(proc))


def test_status_with_the_trackers_ca_works_and_a_wrong_ca_is_one_sentence(
    tls_tracker: tuple[int, CA, CA]
) -> None:
    port, site, rogue = tls_tracker
    tracker = f"127.0.0.1:{port}"
    good = compass("--tracker", tracker, "--ca", str(site.path), "status", "--json")
    assert good.exit_code == 0, good.output
    assert "devices" in json.loads(good.stdout)

    from_env = compass("--tracker", tracker, "status", "--json",
                       env={"COMPASS_CA": str(site.path)})
    assert from_env.exit_code == 0, from_env.output

    wrong = compass("--tracker", tracker, "--ca", str(rogue.path), "status")
    assert wrong.exit_code == 3, wrong.output
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1, wrong.stderr
    assert "wrong CA" in lines[0] or "not signed by" in lines[0], lines[0]
    assert "Traceback" not in wrong.output


def test_a_key_without_its_certificate_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    key.write_text("x")
    result = compass("--cert-key", str(key), "status")
    assert result.exit_code == 2
    assert "--cert-key needs --cert" in result.stderr
