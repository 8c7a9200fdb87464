"""``twistd compass-server`` options that concern secrets: the board token's file, and
the one warning when the token or clients' tickets would travel without TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from compassd import listening
from compassd.server import tap


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict) -> None:  # type: ignore[type-arg]
        text = formatEvent(event)
        if "without TLS" in text:
            lines.append(text)

    saved = set(listening._warned)
    listening._warned.clear()
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
    listening._warned.clear()
    listening._warned.update(saved)


def options(tmp_path: Path, *argv: str) -> tap.Options:
    token = tmp_path / "board.token"
    token.write_text("secret\n")
    parsed = tap.Options()
    parsed.parseOptions(["--key", "npu", "--workdir", str(tmp_path), "--token-file",
                         str(token), *argv])
    return parsed


def test_a_token_to_a_remote_tracker_over_tcp_is_warned_about_naming_tls(
        tmp_path: Path, warnings: list[str]) -> None:
    tap.warn_server_cleartext(options(tmp_path, "--tracker", "10.0.0.5:9190",
                                      "--listen", "tcp:9191:interface=127.0.0.1"))
    assert len(warnings) == 1
    assert "board's token travel without TLS to 10.0.0.5" in warnings[0]
    assert "tls:host=" in warnings[0]


def test_tickets_to_a_board_listening_on_the_network_in_clear_are_warned_about(
        tmp_path: Path, warnings: list[str]) -> None:
    tap.warn_server_cleartext(options(tmp_path, "--listen", "tcp:9191"))
    assert len(warnings) == 1 and "tickets travel without TLS" in warnings[0]
    assert "ssl:9191" in warnings[0]


def test_tls_and_loopback_are_not_warned_about(tmp_path: Path, warnings: list[str]
                                               ) -> None:
    from tests.test_tls import CA

    ca = CA(tmp_path, "site")  # --tracker is checked at start: the CA file must be real
    tap.warn_server_cleartext(options(
        tmp_path, "--tracker", f"tls:host=tracker.lab:port=9190:ca={ca.path}",
        "--listen", "ssl:9191:privateKey=k.pem:certKey=c.pem"))
    tap.warn_server_cleartext(options(tmp_path, "--listen", "tcp:0:interface=127.0.0.1"))
    assert warnings == []
