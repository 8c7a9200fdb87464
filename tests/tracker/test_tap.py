"""``twistd compass-tracker``: the dropin, its options, and the service they build.

The dropin lives in ``twisted/plugins/`` at the top of the tree, which is on
C{sys.path} when the suite runs from there. Services are built on a
L{MemoryReactorClock}, so nothing listens on a real port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python import usage

from compassd.listening import Listener, describe_address
from compassd.tracker import tap
from compassd.tracker.access import Identity, hash_token
from compassd.tracker.service import TrackerConnection, TrackerService

ROOT = Path(__file__).resolve().parent.parent.parent

ALL_OPTIONS = [
    "listen", "tokens", "allow-anonymous", "default-lease", "max-lease", "key-max-lease",
    "claim-timeout", "heartbeat-timeout", "forget-offline", "max-queued-per-user",
    "position-interval", "tvm", "tvm-listen", "tvm-allow", "insecure-no-auth", "metrics",
    "http", "store", "history-days", "reattach-grace",
]


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


@pytest.fixture
def logged() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(
        "# the tracker's users\n"
        "\n"
        f"{hash_token('secret-a')}  user=alice  roles=client,admin  keys=npu-*,cpu\n"
        f"{hash_token('secret-b')}  user=rack1  roles=board\n",
        encoding="utf-8",
    )
    return path


# --- the dropin -----------------------------------------------------------------------


def _plugin() -> Any:
    found = [p for p in getPlugins(IServiceMaker) if p.tapname == "compass-tracker"]
    assert len(found) == 1, "the compass-tracker dropin was not found exactly once"
    return found[0]


def test_the_compass_tracker_dropin_is_discoverable() -> None:
    plugin = _plugin()
    assert IServiceMaker.providedBy(plugin)
    assert plugin.options is tap.Options
    assert plugin.makeService is tap.makeService
    assert "tracker" in plugin.description


def test_importing_the_dropin_imports_no_compassd_code() -> None:
    code = (
        "import sys, twisted.plugins.compassd_plugins as p;"
        "print(sorted(m for m in sys.modules if m.startswith('compassd')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
        timeout=60, check=True,
    )
    assert result.stdout.strip() == "[]"


# --- options --------------------------------------------------------------------------


def test_the_defaults_match_the_documentation() -> None:
    options = parse()
    assert options["listen"] == ["tcp:9190:interface=127.0.0.1"]
    assert options["tokens"] is None and options["access"].open
    assert options["default-lease"] == 600.0 and options["max-lease"] == 3600.0
    assert options["claim-timeout"] == 60.0 and options["heartbeat-timeout"] == 15.0
    assert options["forget-offline"] == 86400.0
    assert options["max-queued-per-user"] == 1000
    assert options["position-interval"] == 0.5
    assert options["fair-share-half-life"] == 86400.0
    assert options["key-max-lease"] == {}
    assert not options["tvm"] and options["tvm-listen"] == [] and options["tvm-allow"] == []


def test_listen_is_repeatable_and_replaces_the_default() -> None:
    options = parse("--listen", "tcp:9190:interface=127.0.0.1", "--listen", "unix:/run/t.sock")
    assert options["listen"] == ["tcp:9190:interface=127.0.0.1", "unix:/run/t.sock"]


def test_two_parses_do_not_share_their_lists() -> None:
    parse("--listen", "tcp:1:interface=127.0.0.1", "--key-max-lease", "npu=5")
    assert parse()["listen"] == ["tcp:9190:interface=127.0.0.1"]
    assert parse()["key-max-lease"] == {}


def test_durations_counts_and_never() -> None:
    options = parse(
        "--default-lease", "60", "--max-lease", "120", "--claim-timeout", "0",
        "--heartbeat-timeout", "4.5", "--forget-offline", "never",
        "--max-queued-per-user", "0", "--position-interval", "0.25",
        "--key-max-lease", "npu-x2=30", "--key-max-lease", "cpu=7200",
    )
    assert (options["default-lease"], options["max-lease"]) == (60.0, 120.0)
    assert options["claim-timeout"] is None and options["forget-offline"] is None
    assert options["max-queued-per-user"] is None
    assert options["heartbeat-timeout"] == 4.5 and options["position-interval"] == 0.25
    assert options["key-max-lease"] == {"npu-x2": 30.0, "cpu": 7200.0}


@pytest.mark.parametrize(
    "argv",
    [
        ["--default-lease", "0"],
        ["--max-lease", "-5"],
        ["--heartbeat-timeout", "soon"],
        ["--max-queued-per-user", "-1"],
        ["--fair-share-half-life", "-1"],
        ["--claim-timeout", "-1"],
        ["--default-lease", "700", "--max-lease", "600"],
        ["--key-max-lease", "npu"],
        ["--key-max-lease", "=30"],
        ["--key-max-lease", "npu=0"],
        ["--allow-anonymous"],
        ["--insecure-no-auth", "--tokens", "/dev/null"],
        ["--http", "tcp:9280"],  # an open tracker's dashboard makes everyone an admin
        ["--http", "tcp:9280:interface=10.0.0.1"],
        ["--tvm-allow", "not-a-network"],
        ["--no-such-option"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_a_tokens_file_sets_the_access_rules(tokens_file: Path) -> None:
    options = parse("--tokens", str(tokens_file))
    access = options["access"]
    assert not access.open and not access.allow_anonymous
    alice = access.identify("secret-a", None, "admin")
    assert alice == Identity("alice", frozenset({"client", "admin"}), ("npu-*", "cpu"))
    assert access.identify("secret-b", None, "board").user == "rack1"
    assert parse("--tokens", str(tokens_file), "--allow-anonymous")["access"].allow_anonymous


@pytest.mark.parametrize("endpoint", [
    "tcp:9190", "tcp:9190:interface=0.0.0.0", "tcp:9190:interface=10.0.0.1",
    "tcp6:9190:interface=\\:\\:", "ssl:9190:privateKey=k.pem:interface=192.0.2.7",
    "tcp:port=9190:interface=10.0.0.1", "somepluginendpoint:9190",
])
def test_without_tokens_a_network_address_is_refused_naming_tokens_and_the_escape_hatch(
        endpoint: str) -> None:
    with pytest.raises(usage.UsageError) as refused:
        parse("--listen", endpoint)
    sentence = str(refused.value)
    assert f"--listen {endpoint}" in sentence
    assert "--tokens" in sentence and "--insecure-no-auth" in sentence
    assert parse("--listen", endpoint, "--insecure-no-auth")["access"].open


@pytest.mark.parametrize("endpoint", [
    "tcp:9190:interface=127.0.0.1", "tcp:0:interface=127.0.0.2",
    "tcp6:9190:interface=\\:\\:1", "unix:/run/compass.sock",
    "ssl:9190:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
])
def test_without_tokens_loopback_and_unix_sockets_are_served(endpoint: str) -> None:
    assert parse("--listen", endpoint)["listen"] == [endpoint]


def test_with_tokens_the_default_is_every_interface(tokens_file: Path) -> None:
    options = parse("--tokens", str(tokens_file))
    assert options["listen"] == ["tcp:9190"]
    assert parse("--tokens", str(tokens_file), "--listen", "tcp:1")["listen"] == ["tcp:1"]


def test_a_socket_from_systemd_on_a_network_address_stops_an_open_tracker(
        logged: list[str]) -> None:
    """systemd: sockets name no address; an open tracker checks the one it was given."""
    from twisted.internet.address import IPv4Address

    class BoundPort:
        def __init__(self, host: str) -> None:
            self.host, self.stopped = host, False

        def getHost(self) -> IPv4Address:
            return IPv4Address("TCP", self.host, 9190)

        def stopListening(self) -> None:
            self.stopped = True

    class Calls:
        count = 0

        def __call__(self) -> None:
            self.count += 1

    for host, refused in (("0.0.0.0", True), ("127.0.0.1", False)):
        reactor = MemoryReactorClock()
        reactor.running = True
        stopped = Calls()
        reactor.stop = stopped  # type: ignore[method-assign]
        options = parse("--listen", "systemd:domain=INET:index=0")
        top = tap.makeService(options, reactor=reactor)
        (listener,) = [s for s in top if isinstance(s, Listener)]
        failures: list[Any] = []
        listener.ready.addErrback(failures.append)
        port = BoundPort(host)
        listener._listening(port)  # what the endpoint's Deferred does once bound
        assert port.stopped is refused and bool(failures) is refused
        assert (stopped.count == 1) is refused
        assert (listener.port is None) is refused
    assert any("tcp 0.0.0.0:9190 is reachable from the network" in line
               and "--insecure-no-auth" in line for line in logged)


def test_a_broken_tokens_file_is_a_usage_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('x')} user=a\n{hash_token('y')} roles=client\n")
    with pytest.raises(usage.UsageError, match="line 2"):
        parse("--tokens", str(path))
    with pytest.raises(usage.UsageError, match="Cannot read"):
        parse("--tokens", str(tmp_path / "missing"))


def test_tvm_networks_are_parsed() -> None:
    options = parse("--tvm-allow", "127.0.0.1", "--tvm-allow", "10.1.0.0/16")
    assert len(options["tvm-allow"]) == 2


def test_help_mentions_every_option_and_its_default() -> None:
    text = str(tap.Options())
    for name in ALL_OPTIONS:
        assert f"--{name}" in text, name
    assert "tcp:9190" in text
    for default in ("600", "3600", "60", "15", "86400", "1000", "0.5"):
        assert default in text


def test_options_and_documentation_agree() -> None:
    documented = (ROOT / "docs" / "tracker.md").read_text(encoding="utf-8")
    for name in ALL_OPTIONS:
        if name.startswith("tvm"):
            continue  # TVM's protocol is documented with TVM support
        assert f"`--{name}" in documented, name


# --- the service ----------------------------------------------------------------------


def _children(top: MultiService) -> list[Any]:
    return list(top)


def _tracker(top: MultiService) -> TrackerService:
    (tracker,) = [s for s in top if isinstance(s, TrackerService)]
    return tracker


def test_make_service_builds_the_tracker_from_the_options(tokens_file: Path) -> None:
    reactor = MemoryReactorClock()
    options = parse(
        "--tokens", str(tokens_file), "--default-lease", "30", "--max-lease", "90",
        "--claim-timeout", "0", "--forget-offline", "3600", "--max-queued-per-user", "5",
        "--heartbeat-timeout", "9", "--position-interval", "2", "--key-max-lease", "npu=45",
    )
    top = tap.makeService(options, reactor=reactor)
    assert IService.providedBy(top)
    tracker = _tracker(top)
    assert tracker.reactor is reactor
    assert tracker.access is options["access"]
    assert tracker.heartbeat_timeout == 9.0 and tracker.heartbeat_interval == 3.0
    assert tracker.position_interval == 2.0
    policy = tracker.scheduler.policy
    assert (policy.default_lease, policy.max_lease, policy.claim_timeout) == (30.0, 90.0, None)
    assert policy.forget_offline == 3600.0 and policy.max_queued_per_user == 5
    assert policy.key_max_lease == {"npu": 45.0}
    assert policy.fair_share_half_life == 86400.0 and tracker.scheduler.fair_share


def test_a_half_life_of_zero_makes_users_take_turns() -> None:
    top = tap.makeService(parse("--fair-share-half-life", "0"), reactor=MemoryReactorClock())
    scheduler = _tracker(top).scheduler
    assert scheduler.policy.fair_share_half_life == 0.0 and not scheduler.fair_share


def test_make_service_listens_on_every_endpoint_when_started(logged: list[str]) -> None:
    reactor = MemoryReactorClock()
    options = parse("--listen", "tcp:9190:interface=127.0.0.1", "--listen", "tcp:9191",
                    "--insecure-no-auth")
    top = tap.makeService(options, reactor=reactor)
    listeners = [s for s in top if isinstance(s, Listener)]
    assert [listener.endpoint for listener in listeners] == options["listen"]
    assert reactor.tcpServers == []  # nothing listens before the service starts
    top.startService()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
            (9190, "127.0.0.1"), (9191, ""),
        ]
        assert all(listener.port is not None for listener in listeners)
        assert _tracker(top).running
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory.buildProtocol(None), TrackerConnection)
        assert any("compass-tracker listening on" in line for line in logged)
        assert any("--insecure-no-auth: no --tokens file" in line for line in logged)
    finally:
        top.stopService()
    assert not _tracker(top).running


def test_without_tvm_no_tvm_warning_and_with_tvm_listen_an_extra_listener(
    logged: list[str],
) -> None:
    plain = tap.makeService(parse(), reactor=MemoryReactorClock())
    assert len([s for s in plain if isinstance(s, Listener)]) == 1
    assert not any("TVM" in line for line in logged)
    reactor = MemoryReactorClock()
    both = tap.makeService(parse("--tvm-listen", "tcp:9999"), reactor=reactor)
    listeners = [s for s in both if isinstance(s, Listener)]
    assert [listener.endpoint for listener in listeners] == [
        "tcp:9190:interface=127.0.0.1", "tcp:9999"]
    assert any("TVM's tracker protocol is on" in line for line in logged)


def test_a_malformed_endpoint_fails_its_listener_with_a_sentence(logged: list[str]) -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    top = tap.makeService(parse("--listen", "nonsense:1", "--insecure-no-auth"),
                          reactor=reactor)
    (listener,) = [s for s in top if isinstance(s, Listener)]
    failures: list[Any] = []
    listener.ready.addErrback(failures.append)
    top.startService()
    try:
        assert len(failures) == 1
        assert any("cannot listen on nonsense:1" in line for line in logged)
        assert reactor.hasStopped
    finally:
        top.stopService()


def test_the_plugin_makes_the_same_service_on_a_fake_reactor() -> None:
    plugin = _plugin()
    options = plugin.options()
    options.parseOptions(["--listen", "tcp:9300:interface=127.0.0.1"])
    top = plugin.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(_tracker(top), TrackerService)
    assert [s.endpoint for s in top if isinstance(s, Listener)] == [
        "tcp:9300:interface=127.0.0.1"]


def test_addresses_are_described_for_logs() -> None:
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    assert describe_address(IPv4Address("TCP", "127.0.0.1", 9190)) == "tcp 127.0.0.1:9190"
    assert describe_address(IPv6Address("TCP", "::1", 9190)) == "tcp [::1]:9190"
    assert describe_address(UNIXAddress("/run/t.sock")) == "unix '/run/t.sock'"


def test_an_open_tracker_serves_its_dashboard_on_loopback_or_with_insecure_no_auth() -> None:
    assert parse("--http", "tcp:9280:interface=127.0.0.1")["http"] == (
        "tcp:9280:interface=127.0.0.1")
    with pytest.raises(usage.UsageError, match="--http tcp:9280 is reachable from the network"):
        parse("--http", "tcp:9280")
    assert parse("--http", "tcp:9280", "--insecure-no-auth")["http"] == "tcp:9280"


@pytest.fixture
def fresh_warnings() -> Any:
    from compassd import listening

    saved = set(listening._warned)
    listening._warned.clear()
    yield
    listening._warned.clear()
    listening._warned.update(saved)


def test_tokens_over_plain_tcp_beyond_loopback_are_warned_about_once(
        tokens_file: Path, logged: list[str], fresh_warnings: None) -> None:
    tap.makeService(parse("--tokens", str(tokens_file), "--listen", "tcp:9190",
                          "--listen", "tcp:9191"), reactor=MemoryReactorClock())
    said = [line for line in logged if "without TLS" in line]
    assert len(said) == 1 and "on tcp:9190" in said[0] and "--listen ssl:" in said[0]


@pytest.mark.parametrize("argv", [
    ["--listen", "tcp:9190:interface=127.0.0.1"],
    ["--listen", "ssl:9190:privateKey=k.pem:certKey=c.pem"],
    ["--listen", "unix:/run/t.sock"],
])
def test_no_cleartext_warning_on_loopback_tls_or_unix(
        tokens_file: Path, logged: list[str], fresh_warnings: None, argv: list[str]) -> None:
    tap.makeService(parse("--tokens", str(tokens_file), *argv), reactor=MemoryReactorClock())
    assert not [line for line in logged if "without TLS" in line]


# --- the store --------------------------------------------------------------------------


def test_a_store_that_cannot_be_opened_stops_the_tracker_with_its_sentence(tmp_path: Path):
    damaged = tmp_path / "tracker.sqlite"
    damaged.write_bytes(b"not a database" * 500)
    with pytest.raises(SystemExit) as stopped:
        tap.makeService(parse("--store", str(damaged)), reactor=MemoryReactorClock())
    text = str(stopped.value)
    assert text.startswith(f"compass-tracker: The tracker's store {damaged} is damaged")
    assert text.endswith("The tracker did not start.")


def test_the_default_store_is_in_the_state_directory_and_survives_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    first = tap.makeService(parse(), reactor=MemoryReactorClock())
    tracker = next(s for s in first if isinstance(s, TrackerService))
    assert tracker.journal is not None
    assert tracker.journal.store.description == str(tmp_path / "tracker.sqlite")
    assert tracker.scheduler.id_prefix.startswith("1.")
    tracker.journal.store.close()
    again = tap.makeService(parse(), reactor=MemoryReactorClock())
    second = next(s for s in again if isinstance(s, TrackerService)).scheduler.id_prefix
    assert second.startswith("2.")
    # and a random part, so a new store's first start never repeats an earlier one's ids
    assert second.removeprefix("2.") != tracker.scheduler.id_prefix.removeprefix("1.")


def test_store_none_keeps_the_state_in_memory_and_says_so(logged: list[str]):
    top = tap.makeService(parse("--store", "none"), reactor=MemoryReactorClock())
    assert next(s for s in top if isinstance(s, TrackerService)).journal is None
    assert any("a restart loses every waiting request" in line for line in logged)
