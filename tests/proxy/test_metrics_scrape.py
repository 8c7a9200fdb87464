"""compass-proxy's and compass-server's /metrics scraped around a real run: a tracker, a
proxy and a board behind it (fake NPU driver) on 127.0.0.1, each daemon with --metrics.

Every daemon is stopped by its PID; every wait has a deadline.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np

from compassd.client import connect_tracker
from tests.fakedriver.build import build_fake_driver
from tests.fakedriver.graphs import Tensor, write_graph
from tests.helpers import daemon_log, start_twistd, stop

WAIT = 30.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(proc: object, what: str) -> int:
    pattern = re.compile(re.escape(what) + r" metrics listening on tcp 127\.0\.0\.1:(\d+)")
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        found = pattern.search(daemon_log(proc))  # type: ignore[arg-type]
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"{what} logged no metrics port:\n{daemon_log(proc)}")  # type: ignore[arg-type]


def scrape(port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(predicate, what: str):  # type: ignore[no-untyped-def]
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {WAIT:g} s")


def test_runs_sessions_and_relayed_bytes_move_the_board_and_proxy_metrics(
    tracker: tuple[str, int], tmp_path: Path
) -> None:
    proxy, proxy_port = start_twistd("compass-proxy", "--tracker", f"{tracker[0]}:{tracker[1]}",
                                     "--metrics", "tcp:0:interface=127.0.0.1")
    board = None
    try:
        proxy_metrics = metrics_port(proxy, "compass-proxy")
        board, _ = start_twistd(
            "compass-server", "--key", "demo", "--tracker", "127.0.0.1:1",
            "--proxy", f"127.0.0.1:{proxy_port}", "--backend", "aipu",
            "--driver", str(build_fake_driver()), "--workdir", str(tmp_path / "work"),
            "--device", "board-1", "--health-interval", "5",
            "--metrics", "tcp:0:interface=127.0.0.1")
        board_metrics = metrics_port(board, "compass-server")
        client = connect_tracker(*tracker)
        wait_for(lambda: [d for d in client.devices()
                          if d["name"] == "board-1" and d["state"] == "free"], "registration")
        server_before, proxy_before = scrape(board_metrics), scrape(proxy_metrics)
        assert server_before[("compassd_server_healthy",
                              (("backend", "aipu"), ("device", "board-1")))] == 1
        assert proxy_before[("compassd_proxy_devices", ())] == 1
        model = tmp_path / "add3.bin"
        write_graph(model, [Tensor(4096, "int8")], [Tensor(4096, "int8")],
                    behaviour="add", value=3)
        with client.request("demo", wait_for_board=True, wait=WAIT) as lease:
            loaded = lease.load_model(str(model))
            for _ in range(3):
                (y,) = loaded.run(np.zeros(4096, dtype=np.int8))
                assert y.tolist() == [3] * 4096
            during = scrape(proxy_metrics)
            assert during[("compassd_proxy_open_channels", ())] == 1
            assert scrape(board_metrics)[("compassd_server_active_sessions", ())] == 1
        client.close()
        server = wait_for(
            lambda: (lambda m: m if m[("compassd_server_sessions_total",
                                       (("outcome", "closed"),))] >= 1 else None)(
                scrape(board_metrics)), "the session's end in the board's metrics")
        proxied = wait_for(
            lambda: (lambda m: m if m[("compassd_proxy_relayed_sessions_total",
                                       (("outcome", "completed"),))] >= 1 else None)(
                scrape(proxy_metrics)), "the relayed session's end in the proxy's metrics")
    finally:
        if board is not None:
            assert stop(board) in (0, -15)
            print(daemon_log(board))
        assert stop(proxy) in (0, -15)
        print(daemon_log(proxy))

    def moved(samples: Samples, before: Samples, name: str,
              labels: tuple[tuple[str, str], ...] = ()) -> float:
        return samples[(name, labels)] - before.get((name, labels), 0.0)

    assert moved(server, server_before, "compassd_server_run_seconds_count",
                 (("backend", "aipu"),)) == 3
    # The model file and three runs' inputs went up; three runs' outputs came down.
    assert moved(server, server_before, "compassd_server_uploaded_bytes_total") >= \
        model.stat().st_size + 3 * 4096
    assert moved(server, server_before, "compassd_server_downloaded_bytes_total") == 3 * 4096
    assert server[("compassd_server_executor_starts_total", ())] >= 2  # spare, then next
    assert server[("compassd_server_executor_crashes_total", ())] == 0
    assert server[("compassd_server_active_sessions", ())] == 0
    to_board = moved(proxied, proxy_before, "compassd_proxy_relayed_bytes_total",
                     (("direction", "to-board"),))
    to_client = moved(proxied, proxy_before, "compassd_proxy_relayed_bytes_total",
                      (("direction", "to-client"),))
    assert to_board >= model.stat().st_size + 3 * 4096
    assert to_client >= 3 * 4096
    assert proxied[("compassd_proxy_open_channels", ())] == 0
