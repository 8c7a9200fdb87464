"""A real tracker with its dashboard and metrics on, and two real board servers."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from compassd.tracker.access import hash_token
from tests.helpers import daemon_log, start_twistd, stop

KEY = "npu"
TOKENS = {"admin": "admin-token-ada", "client": "client-token-carl", "board": "board-token-rack"}


def listening_port(proc: Any, what: str, deadline: float = 20.0) -> int:
    """The port C{what} (e.g. C{compass-tracker dashboard}) said it listens on."""
    pattern = re.compile(re.escape(what) + r" listening on tcp 127\.0\.0\.1:(\d+)")
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = pattern.search(daemon_log(proc))
        if found:
            return int(found.group(1))
        time.sleep(0.05)  # polling a log with a deadline, not waiting out a race
    raise AssertionError(f"{what} did not log its port within {deadline} s:\n"
                         + daemon_log(proc))


def get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, body: dict[str, Any], token: str | None = None,
         cookie: str | None = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie:
        request.add_header("Cookie", f"compass_token={cookie}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@attrs.define
class Lab:
    host: str
    port: int
    http: str
    metrics: str
    tracker: Any

    def state(self) -> dict[str, Any]:
        status, body = get(f"{self.http}/api/state", TOKENS["admin"])
        assert status == 200, body
        return dict(json.loads(body))

    def board(self, name: str) -> dict[str, Any]:
        return next(b for b in self.state()["boards"] if b["name"] == name)

    def reset(self) -> None:
        """Both boards back in service and free (the lab is shared by the tests)."""
        for name in ("board-1", "board-2"):
            status, body = post(f"{self.http}/api/undrain", {"device": name}, TOKENS["admin"])
            assert status == 200, body
        wait_for("both boards free",
                 lambda: [b["state"] for b in self.state()["boards"]] == ["free", "free"])

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The tracker's /metrics now, by sample name and sorted labels."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = get(f"{self.metrics}/metrics")
        assert status == 200, body
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples}


def wait_for(what: str, check: Any, deadline: float = 20.0, every: float = 0.05) -> Any:
    """Call C{check} until it returns something true, for at most C{deadline} seconds."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {deadline} s")
        time.sleep(every)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A tracker (tokens for ada the admin, carl the client and the rack's boards) with
    --http and --metrics, and two compass-servers (onnx backend) in pool C{npu}."""
    pytest.importorskip("onnxruntime")
    work = tmp_path_factory.mktemp("lab")
    tokens = work / "tokens"
    tokens.write_text(
        f"{hash_token(TOKENS['admin'])} user=ada roles=admin\n"
        f"{hash_token(TOKENS['client'])} user=carl roles=client max-priority=5\n"
        f"{hash_token(TOKENS['board'])} user=rack roles=board\n")
    board_token = work / "board-token"
    board_token.write_text(TOKENS["board"] + "\n")
    tracker, port = start_twistd(
        "compass-tracker", "--tokens", str(tokens), "--heartbeat-timeout", "60",
        "--http", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1")
    servers = []
    try:
        http = listening_port(tracker, "compass-tracker dashboard")
        metrics = listening_port(tracker, "compass-tracker metrics")
        for n in (1, 2):
            server, _ = start_twistd(
                "compass-server", "--key", KEY, "--tracker", f"127.0.0.1:{port}",
                "--token-file", str(board_token), "--backend", "onnx",
                "--workdir", str(work / f"board-{n}"), "--device", f"board-{n}")
            servers.append(server)
        lab = Lab("127.0.0.1", port, f"http://127.0.0.1:{http}",
                  f"http://127.0.0.1:{metrics}", tracker)
        wait_for("both boards registering",
                 lambda: [b["state"] for b in lab.state()["boards"]] == ["free", "free"])
        yield lab
    finally:
        for server in servers:
            stop(server)
            print(daemon_log(server))
        stop(tracker)
        print(daemon_log(tracker))


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $COMPASS_ARTIFACTS/<test> if set, else under tmp_path."""
    import os

    base = os.environ.get("COMPASS_ARTIFACTS")
    folder = Path(base) / "dashboard" if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
