"""TLS on compassd's links, for real over 127.0.0.1, with a CA made in the test.

A TrackerService runs in this process on the reactor pytest-twisted drives, listening
with an ``ssl:`` endpoint; clients connect with L{ClientTLS}. Each failure must say
which check failed: the wrong CA, an expired certificate, a name mismatch, a board
without a certificate from the board CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from compassd.client import AsyncTracker
from compassd.protocol.errors import NotAuthorized
from compassd.tls import ClientCertListener, ClientTLS, TLSFailed, client_from_string
from compassd.tracker.service import TrackerService

DEADLINE = 10.0
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


class CA:
    """A certificate authority that writes PEM files into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), expired: bool = False) -> tuple[str, str]:
        """Write a certificate and its key; return their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - (10 * DAY if expired else DAY))
            .not_valid_after(NOW - 2 * DAY if expired else NOW + 30 * DAY)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names),
                                            critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = self.directory / f"{self.name}-{common_name}{'-expired' if expired else ''}"
        cert_path, key_path = Path(f"{stem}.crt"), Path(f"{stem}.key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        return str(cert_path), str(key_path)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    site, rogue, boards = CA(tmp_path, "site"), CA(tmp_path, "rogue"), CA(tmp_path, "boards")
    return {
        "site": site, "rogue": rogue, "boards": boards,
        "tracker": site.issue("tracker", dns=("localhost",), ips=("127.0.0.1",)),
        "expired": site.issue("tracker", ips=("127.0.0.1",), expired=True),
        "elsewhere": site.issue("other", dns=("other.example",), ips=("10.9.9.9",)),
    }


class Running:
    """A TrackerService listening with TLS on 127.0.0.1 until stopped."""

    def __init__(self, cert: tuple[str, str], board_ca: str | None = None) -> None:
        self.service = TrackerService(reactor=reactor, board_ca=board_ca)
        self.service.startService()
        endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={cert[1]}"
                    f":certKey={cert[0]}")
        self.listener = ClientCertListener(reactor, "tracker", endpoint,
                                           self.service.factory(), ca=board_ca or "")
        if board_ca is None:
            from compassd.listening import Listener

            self.listener = Listener(reactor, "tracker", endpoint, self.service.factory())
        self.listener.startService()

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return self.listener.port.getHost().port

    def stop(self) -> Deferred[Any]:
        self.service.stopService()
        return self.listener.stopService()  # type: ignore[return-value]


@pytest.fixture
def running() -> Any:
    started: list[Running] = []

    def start(*args: Any, **kw: Any) -> Deferred[Running]:
        tracker = Running(*args, **kw)
        started.append(tracker)
        return tracker.listener.ready.addCallback(lambda _: tracker)

    yield start
    for tracker in started:
        pytest_twisted.blockon(tracker.stop())


def connect(port: int, tls: ClientTLS, *, host: str = "127.0.0.1",
            role: str = "client") -> Deferred[AsyncTracker]:
    d = AsyncTracker.connect(reactor, host, port, tls=tls, role=role, user="ann")
    return d.addTimeout(DEADLINE, reactor)


@pytest_twisted.inlineCallbacks
def test_a_client_trusting_the_right_ca_connects_to_the_tracker_by_ip(pki, running):
    tracker = yield running(pki["tracker"])
    client = yield connect(tracker.port, ClientTLS(str(pki["site"].path)))
    assert client.user == "ann"
    assert client.tls == ClientTLS(str(pki["site"].path))
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_a_client_trusting_the_right_ca_connects_by_dns_name(pki, running):
    tracker = yield running(pki["tracker"])
    client = yield connect(tracker.port, ClientTLS(str(pki["site"].path)), host="localhost")
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_a_client_trusting_another_ca_is_told_the_ca_is_wrong(pki, running):
    tracker = yield running(pki["tracker"])
    with pytest.raises(TLSFailed, match="not signed by the configured CA"):
        yield connect(tracker.port, ClientTLS(str(pki["rogue"].path)))


@pytest_twisted.inlineCallbacks
def test_an_expired_tracker_certificate_is_reported_as_expired(pki, running):
    tracker = yield running(pki["expired"])
    with pytest.raises(TLSFailed, match="has expired"):
        yield connect(tracker.port, ClientTLS(str(pki["site"].path)))


@pytest_twisted.inlineCallbacks
def test_a_certificate_for_another_name_is_reported_as_a_name_mismatch(pki, running):
    tracker = yield running(pki["elsewhere"])
    with pytest.raises(TLSFailed, match="name mismatch") as caught:
        yield connect(tracker.port, ClientTLS(str(pki["site"].path)))
    assert "'127.0.0.1'" in str(caught.value)


@pytest_twisted.inlineCallbacks
def test_a_tls_endpoint_string_with_a_ca_file_verifies_the_tracker(pki, running):
    tracker = yield running(pki["tracker"])
    ok = f"tls:host=127.0.0.1:port={tracker.port}:ca={pki['site'].path}"
    client = yield AsyncTracker.connect(reactor, endpoint=ok).addTimeout(DEADLINE, reactor)
    yield client.close()
    wrong = f"tls:host=127.0.0.1:port={tracker.port}:ca={pki['rogue'].path}"
    with pytest.raises(TLSFailed, match="wrong CA"):
        yield AsyncTracker.connect(reactor, endpoint=wrong).addTimeout(DEADLINE, reactor)


def test_a_tls_endpoint_string_with_unknown_fields_is_refused_with_a_sentence(pki):
    with pytest.raises(ValueError, match="takes host=, port=, ca="):
        client_from_string(reactor, f"tls:host=h:port=1:ca={pki['site'].path}:colour=red")


def test_a_missing_ca_file_is_named(tmp_path):
    with pytest.raises(TLSFailed, match="Cannot read the CA certificate file"):
        ClientTLS(str(tmp_path / "nope.pem")).creator("127.0.0.1")


# --- boards must present a certificate from the board CA ---------------------------


@pytest_twisted.inlineCallbacks
def test_a_board_with_a_certificate_from_the_board_ca_may_register(pki, running):
    tracker = yield running(pki["tracker"], board_ca=str(pki["boards"].path))
    cert, key = pki["boards"].issue("rack-1")
    board = yield connect(tracker.port, ClientTLS(str(pki["site"].path), cert, key),
                          role="board")
    assert "board" in board.roles
    yield board.close()


@pytest_twisted.inlineCallbacks
def test_a_board_without_a_client_certificate_is_refused_but_clients_are_served(
        pki, running):
    tracker = yield running(pki["tracker"], board_ca=str(pki["boards"].path))
    with pytest.raises(NotAuthorized, match="presented none"):
        yield connect(tracker.port, ClientTLS(str(pki["site"].path)), role="board")
    client = yield connect(tracker.port, ClientTLS(str(pki["site"].path)))
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_a_board_with_a_certificate_from_another_ca_fails_the_handshake(pki, running):
    tracker = yield running(pki["tracker"], board_ca=str(pki["boards"].path))
    cert, key = pki["rogue"].issue("rack-1")
    with pytest.raises(TLSFailed, match="refused our client certificate"):
        yield connect(tracker.port, ClientTLS(str(pki["site"].path), cert, key),
                      role="board")
