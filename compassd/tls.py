"""TLS for every compassd link: verified clients, boards with client certificates.

Listening needs nothing of ours: every daemon takes Twisted endpoint strings, so
``ssl:9190:privateKey=key.pem:certKey=cert.pem:extraCertChain=chain.pem`` serves TLS.
This module adds the two things endpoint strings do not give:

- **Clients that verify the peer** against one CA file (L{ClientTLS}): the peer's
  certificate must chain to that CA and name the host or IP address dialled
  (``service_identity`` through Twisted's C{optionsForClientTLS}); a client certificate
  is presented when one is configured. A failed handshake becomes L{TLSFailed} with a
  sentence saying which check failed: an unknown CA, an expired (or not yet valid)
  certificate, or a name mismatch.
- **Listeners that ask for client certificates** (L{ask_client_certificates}): an
  ``ssl:`` endpoint whose TLS layer requests a certificate from every peer and verifies
  any it gets against a CA. Peers without a certificate still connect (clients need
  none); the tracker then refuses the board role to any connection whose peer did not
  present a certificate verified against its board CA (L{peer_certificate}).

Client endpoint strings gain a form with a CA *file*:
``tls:host=H:port=P:ca=FILE[:certificate=FILE:privateKey=FILE][:timeout=S]``
(Twisted's own ``tls:`` form wants a directory of CAs in ``trustRoots=``, and still
works).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    clientFromString,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import classImplements

from ._twisted_private import hostname_verify_callback, replace_ssl_options
from .listening import Listener
from .protocol.errors import CompassError

# X509_V_ERR_* codes from OpenSSL's x509_vfy.h, as the verify callback reports them.
_NOT_YET_VALID = 9
_EXPIRED = 10
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21, 24, 27, 28})
_SIGNATURE = frozenset({4, 6, 7})


class TLSFailed(CompassError):
    """A TLS handshake failed; the message says which check and what to do."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSFailed(f"Cannot read the {what} {path}: {e.strerror}.") from e


def load_ca(path: str) -> ssl.Certificate:
    """The CA certificate in the PEM file C{path}, or L{TLSFailed} saying why not."""
    try:
        return ssl.Certificate.loadPEM(_read(path, "CA certificate file"))
    except crypto.Error as e:
        raise TLSFailed(f"The CA file {path} does not hold a PEM certificate.") from e


def load_identity(cert: str, key: str | None = None) -> ssl.PrivateCertificate:
    """A certificate and its private key (in C{key}, or in the same PEM file)."""
    cert_pem = _read(cert, "certificate file")
    key_pem = cert_pem if key is None else _read(key, "private key file")
    try:
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise TLSFailed(
            f"Cannot load the certificate {cert} with its key {key or cert}: {e}."
        ) from e


@attrs.frozen
class ClientTLS:
    """How a client verifies its peer: the CA file, and its own certificate if any."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def creator(self, host: str) -> VerifyingCreator:
        """Connection options that verify a peer dialled as C{host} (a name or an IP)."""
        client = load_identity(self.cert, self.key) if self.cert else None
        options = ssl.optionsForClientTLS(
            host, trustRoot=load_ca(self.ca), clientCertificate=client
        )
        return VerifyingCreator(options, host)

    def endpoint(self, reactor: Any, host: str, port: int,
                 timeout: float = 10.0) -> tuple[IStreamClientEndpoint, VerifyingCreator]:
        creator = self.creator(host)
        return wrap_client_tls(reactor, creator, HostnameEndpoint(
            reactor, host, port, timeout=timeout)), creator


class VerifyingCreator:
    """Twisted's client TLS options, remembering why the peer's certificate failed."""

    def __init__(self, options: Any, host: str) -> None:
        self._options = options
        self.host = host
        self.verify_error: int | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        self.verify_error = None
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        # Keep Twisted's own check of the peer's name and note OpenSSL's error.
        twisted_check = hostname_verify_callback(self._options, tlsProtocol)

        def record(conn: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
            if not ok and self.verify_error is None:
                self.verify_error = errno
            if twisted_check is not None:
                return bool(twisted_check(conn, certificate, errno, depth, ok))
            return bool(ok)

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, record)
        return connection

    def explain(self, failure: Failure, where: str) -> TLSFailed | None:
        """A sentence for a failed handshake with C{where}, or None if it was not TLS."""
        return explain(failure, where, self.host, self.verify_error)


classImplements(VerifyingCreator, IOpenSSLClientConnectionCreator)


def explain(failure: Failure, where: str, host: str,
            verify_error: int | None = None) -> TLSFailed | None:
    """Turn an OpenSSL or service_identity failure into a L{TLSFailed} sentence."""
    from service_identity import VerificationError

    if failure.check(VerificationError):
        return TLSFailed(
            f"The certificate of {where} is not for {host!r}"
            f" ({failure.getErrorMessage()}): a name mismatch. Dial the name or address"
            " the certificate was issued for, or issue one that names it."
        )
    if not failure.check(SSL.Error):
        return None
    text = failure.getErrorMessage()
    if verify_error == _EXPIRED:
        return TLSFailed(
            f"The certificate of {where} has expired; the board or tracker there needs a"
            " new one."
        )
    if verify_error == _NOT_YET_VALID:
        return TLSFailed(
            f"The certificate of {where} is not valid yet; check the clocks of both"
            " machines."
        )
    if verify_error in _UNKNOWN_CA or verify_error in _SIGNATURE:
        return TLSFailed(
            f"The certificate of {where} is not signed by the configured CA (wrong CA,"
            f" OpenSSL verify error {verify_error}); point the CA option at the CA that"
            " issued it."
        )
    if verify_error is not None:
        return TLSFailed(
            f"The certificate of {where} failed verification (OpenSSL verify error"
            f" {verify_error})."
        )
    if "unknown ca" in text or "certificate unknown" in text or "bad certificate" in text:
        return TLSFailed(
            f"{where} refused our client certificate: it is not signed by a CA that"
            " peer trusts (wrong CA)."
        )
    if "certificate expired" in text:
        return TLSFailed(f"{where} refused our client certificate: it has expired.")
    if "certificate required" in text or "handshake failure" in text:
        return TLSFailed(
            f"{where} requires a client certificate; configure one (cert= and key=)."
        )
    return TLSFailed(f"The TLS handshake with {where} failed: {text}.")


def wrap_client_tls(reactor: Any, creator: Any,
                    endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """C{wrapClientTLS} whose small-write aggregation (Twisted 23+) runs on C{reactor}.

    Left alone, newer Twisted flushes TLS writes with the global reactor's C{callLater};
    the blocking client runs its own reactor in a thread, so its hello would never be
    sent. Twisted 22.4 has no aggregation and no C{clock} argument.
    """
    if "clock" in inspect.signature(wrapClientTLS).parameters:
        return wrapClientTLS(creator, endpoint, clock=reactor)
    return wrapClientTLS(creator, endpoint)


_SEPARATOR = re.compile(r"(?<!\\):")


def client_from_string(reactor: Any, description: str
                       ) -> tuple[IStreamClientEndpoint, VerifyingCreator | None]:
    """A client endpoint from a Twisted endpoint string, also taking
    C{tls:host=H:port=P:ca=FILE[:certificate=FILE][:privateKey=FILE][:timeout=S]}."""
    if not description.startswith("tls:") or ":ca=" not in description:
        return clientFromString(reactor, description), None
    fields: dict[str, str] = {}
    for part in _SEPARATOR.split(description[4:]):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} in {description!r} is not name=value")
        fields[name] = value.replace("\\:", ":")
    unknown = set(fields) - {"host", "port", "ca", "certificate", "privateKey", "timeout"}
    if unknown or "host" not in fields or "port" not in fields:
        raise ValueError(
            f"{description!r}: a tls: endpoint with ca= takes host=, port=, ca= and"
            " optionally certificate=, privateKey=, timeout="
            + (f" (not {', '.join(sorted(unknown))})" if unknown else "")
        )
    tls = ClientTLS(fields["ca"], fields.get("certificate"), fields.get("privateKey"))
    return tls.endpoint(reactor, fields["host"], int(fields["port"]),
                        float(fields.get("timeout", 10.0)))


# --- listening ------------------------------------------------------------------------


def ask_client_certificates(reactor: Any, description: str,
                            ca: str) -> IStreamServerEndpoint:
    """The endpoint of C{description}; an C{ssl:} one asks every peer for a certificate
    and verifies any it presents against the CA in C{ca} (a peer with a certificate from
    another CA fails the handshake; one without a certificate connects)."""
    endpoint = serverFromString(reactor, description)
    if isinstance(endpoint, SSL4ServerEndpoint):
        authority = load_ca(ca).original
        replace_ssl_options(endpoint, lambda old: ssl.CertificateOptions(
            privateKey=old.privateKey,
            certificate=old.certificate,
            extraCertChain=old.extraCertChain,
            verify=True,
            caCerts=[authority],
            requireCertificate=False,
        ))
    return endpoint


def peer_certificate(transport: Any) -> Any:
    """The certificate the peer presented and TLS verified, or None (not TLS, none)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        return get()
    except Exception:
        return None


def certificate_subject(certificate: Any) -> str:
    """The common name of an OpenSSL certificate, for log lines."""
    name = certificate.get_subject().commonName
    return name or str(certificate.get_subject())


def verified_by(certificate: Any, ca: str) -> bool:
    """Whether C{certificate} (an OpenSSL X509) chains directly to the CA in C{ca}."""
    store = crypto.X509Store()
    store.add_cert(load_ca(ca).original)
    try:
        crypto.X509StoreContext(store, certificate).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


@attrs.define(eq=False)
class ClientCertListener(Listener):
    """A L{Listener} whose C{ssl:} endpoints ask peers for certificates from C{ca}."""

    ca: str = ""

    def startService(self) -> None:
        from twisted.application import service

        service.Service.startService(self)
        try:
            listening = ask_client_certificates(
                self.reactor, self.endpoint, self.ca).listen(self.factory)
        except Exception:
            self._failed(Failure())
            return
        listening.addCallbacks(self._listening, self._failed)
