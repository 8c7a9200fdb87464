"""compass-proxy is never open by accident: without --tokens it serves loopback only;
with --tokens it checks a board's token (and any token a client gives) before it does
anything for the caller (no tracker connection is opened for a board it does not know).

Options are parsed as twistd does; connections are iosim pumps on a Clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.test import iosim

from compassd.access import hash_token
from compassd.protocol import PROTOCOL_VERSION, Hello, NotAuthorized
from compassd.protocol.peer import CompassPeer
from compassd.proxy import tap
from compassd.proxy.connection import ProxyConnection
from compassd.proxy.service import ProxyService


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('board-secret')} user=rack roles=board\n"
                    f"{hash_token('client-secret')} user=ann roles=client\n")
    return path


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_without_tokens_the_proxy_listens_on_loopback_only() -> None:
    assert parse()["listen"] == ["tcp:9090:interface=127.0.0.1"]
    assert parse("--listen", "tcp:9090:interface=127.0.0.1")["access"] is None
    for endpoint in ("tcp:9090", "tcp:9090:interface=10.0.0.1", "tcp6:9090"):
        with pytest.raises(usage.UsageError) as refused:
            parse("--listen", endpoint)
        assert f"--listen {endpoint}" in str(refused.value)
        assert "--tokens" in str(refused.value) and "--insecure-no-auth" in str(refused.value)
        assert parse("--listen", endpoint, "--insecure-no-auth")["access"] is None


def test_with_tokens_it_listens_everywhere_and_checks_them(tokens: Path) -> None:
    options = parse("--tokens", str(tokens))
    assert options["listen"] == ["tcp:9090"]
    assert options["access"] is not None
    for argv in (["--tokens", str(tokens), "--insecure-no-auth"],
                 ["--tokens", str(tokens.parent / "missing")]):
        with pytest.raises(usage.UsageError):
            parse(*argv)


class Caller(CompassPeer):
    greeted = True


def _hello(proxy: ProxyService, clock: Clock, **kw: Any) -> tuple[Any, ProxyConnection]:
    server = ProxyConnection(proxy)
    client = Caller()
    pump = iosim.connect(server, iosim.makeFakeServer(server),
                         client, iosim.makeFakeClient(client))
    got: list[Any] = []
    client.callRemote(Hello, versions=[PROTOCOL_VERSION], **kw).addBoth(got.append)
    pump.flush()
    clock.advance(0)
    pump.flush()
    return (got[0] if got else None), server


def test_a_hello_without_a_listed_token_is_refused_before_anything_is_done(
        tokens: Path) -> None:
    clock = Clock()
    reached: list[str] = []

    class Tracker:
        """An endpoint that records being dialled (it must not be)."""

        def connect(self, factory: Any) -> Any:
            reached.append("tracker")
            raise AssertionError("the proxy dialled the tracker for an unknown board")

    options = parse("--tokens", str(tokens), "--listen", "tcp:9090:interface=127.0.0.1")
    proxy = ProxyService(clock, Tracker(), "proxy.lab:9090", access=options["access"])
    for kw in ({"role": "board", "token": "made-up"}, {"role": "board"},
               {"role": "board", "token": "client-secret"},
               {"role": "client", "token": "made-up"},
               {"role": "client", "token": "board-secret"}):
        answer, server = _hello(proxy, clock, **kw)
        assert isinstance(answer, Failure) and answer.check(NotAuthorized), (kw, answer)
        assert not server.alive, "the refused connection was left open"
    answer, _ = _hello(proxy, clock, role="client", token="client-secret")
    assert not isinstance(answer, Failure) and answer["roles"] == ["client"]
    # a client's credential at the proxy is its ticket: a hello without a token passes
    answer, _ = _hello(proxy, clock, role="client", user="ann")
    assert not isinstance(answer, Failure)
    assert reached == []
