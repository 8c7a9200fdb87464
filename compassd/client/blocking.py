"""The blocking client of the tracker and of sessions on boards, for scripts, notebooks
and CI jobs.

It reads like TVM's RPC client::

    from compassd.client import connect_tracker

    tracker = connect_tracker("127.0.0.1", 9190)
    with tracker.request("npu-x2", wait=600) as lease:
        print(lease.device, lease.address)
    # the lease is released here, also when the block raised

Every call waits for the tracker's answer; the Twisted machinery runs on a private
background thread (see L{compassd.client._reactor}), so this works in any program.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from ..tls import ClientTLS
from . import _reactor
from ._transfer import Progress, Source
from .asynchronous import DEFAULT_PORT, AsyncLease, AsyncTracker
from .model import AsyncModel, Inputs
from .session import AsyncSession, RemoteFile


class Model:
    """A model loaded in a blocking L{Session}; see L{AsyncModel}."""

    def __init__(self, model: AsyncModel) -> None:
        self._model = model

    def __repr__(self) -> str:
        return repr(self._model).replace("<AsyncModel", "<Model", 1)

    name = property(lambda self: self._model.name)
    path = property(lambda self: self._model.path)
    inputs = property(lambda self: list(self._model.inputs))
    outputs = property(lambda self: list(self._model.outputs))
    last_seconds = property(lambda self: self._model.last_seconds)

    def check(self, inputs: Inputs) -> list[np.ndarray]:
        """See L{AsyncModel.check}."""
        return self._model.check(inputs)

    def run(self, inputs: Inputs, *, timeout: float | None = None) -> list[np.ndarray]:
        """Run once; the outputs as numpy arrays in model order."""
        arrays = self._model.check(inputs)  # a mismatch is raised here, nothing crosses
        # threads. The board enforces the timeout (and kills a hung run); the wait here
        # is for it.
        return _reactor.call(self._model._run, inputs, timeout, arrays)

    def benchmark(self, inputs: Inputs, number: int = 10, repeat: int = 3,
                  warmup: int = 1) -> list[float]:
        """Each round's mean seconds per run, measured on the board."""
        self._model.check(inputs)
        return _reactor.call(self._model.benchmark, inputs, number=number, repeat=repeat,
                             warmup=warmup)


class Session:
    """A session on a board, blocking; use it in a C{with} block or call L{close}."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def __repr__(self) -> str:
        return repr(self._session).replace("<AsyncSession", "<Session", 1)

    session = property(lambda self: self._session.session)
    lease = property(lambda self: self._session.lease)
    address = property(lambda self: self._session.address)
    expires_in = property(lambda self: self._session.expires_in)
    backend = property(lambda self: self._session.backend)
    info = property(lambda self: dict(self._session.info))
    max_upload = property(lambda self: self._session.max_upload)
    features = property(lambda self: self._session.features)
    cached = property(lambda self: frozenset(self._session.cached))
    active = property(lambda self: self._session.active)
    end_message = property(lambda self: self._session.end_message)
    end_reason = property(lambda self: self._session.end_reason)

    def upload(self, source: Source, remote_name: str | None = None,
               progress: Progress | None = None) -> str:
        """Store a local file or bytes in the session directory; returns the remote name.
        See L{AsyncSession.upload}: a file is hashed in a thread, while it is sent where
        the board allows. C{progress} runs on the client's background thread."""
        return _reactor.call(self._session.upload, source, remote_name, progress)

    def download(self, remote: str, local_path: str | os.PathLike[str] | None = None,
                 progress: Progress | None = None) -> Any:
        """The file's bytes, or its local path once written to C{local_path}."""
        return _reactor.call(self._session.download, remote, local_path, progress)

    def listdir(self, path: str | None = None) -> list[RemoteFile]:
        return _reactor.call(self._session.listdir, path)

    def remove(self, path: str) -> None:
        _reactor.call(self._session.remove, path)

    def load_model(self, path: str | os.PathLike[str],
                   manifest: str | os.PathLike[str] | None = None,
                   progress: Callable[[int, int], object] | None = None) -> Model:
        """Upload (if local) and load a model; see L{AsyncSession.load_model}.
        C{progress} runs on the client's background thread."""
        return Model(_reactor.call(self._session.load_model, path, manifest, progress))

    def close(self) -> None:
        _reactor.call(self._session.close)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def connect_session(address: str, ticket: str, token: str | None = None, *,
                    user: str | None = None, endpoint: str | None = None,
                    timeout: float = 10.0, device: str | None = None) -> Session:
    """Open the session of a granted lease on the board at C{address} (blocking).
    C{device} (the lease's device) is needed when C{address} is a compass-proxy."""
    return Session(
        _reactor.call(
            lambda: AsyncSession.open(_reactor.reactor(), address, ticket, token=token,
                                      user=user, endpoint=endpoint, timeout=timeout,
                                      device=device)
        )
    )


class Lease:
    """A device held for a while: use it inside C{with}, or call L{release}."""

    def __init__(self, lease: AsyncLease) -> None:
        self._lease = lease
        self._session: Session | None = None

    def __repr__(self) -> str:
        return f"<Lease {self.id} on {self.device} at {self.address}, {self.remaining:.0f} s left>"

    id = property(lambda self: self._lease.id)
    request = property(lambda self: self._lease.request)
    key = property(lambda self: self._lease.key)
    device = property(lambda self: self._lease.device)
    address = property(lambda self: self._lease.address)
    ticket = property(lambda self: self._lease.ticket)
    info = property(lambda self: dict(self._lease.info))

    @property
    def remaining(self) -> float:
        """Seconds left before the tracker ends the lease."""
        return self._lease.remaining

    @property
    def active(self) -> bool:
        return self._lease.active

    @property
    def end_reason(self) -> Exception | None:
        """Why the lease ended early (a L{compassd.client.LeaseLost}), if it did."""
        return self._lease.end_reason

    def release(self) -> None:
        """Give the device back now (nothing happens if the lease already ended); its
        session, if one was opened, is closed first."""
        _reactor.call(self._lease.release)

    # --- the session on the device, opened on first use ---------------------------------

    def open_session(self, token: str | None = None, *, endpoint: str | None = None,
                     timeout: float = 10.0) -> Session:
        """The session on the leased device (see L{Session}),
        opened with the lease's ticket on first use; later calls return the same one."""
        if self._session is None:
            self._session = Session(
                _reactor.call(
                    lambda: self._lease.open_session(
                        _reactor.reactor(), token=token, endpoint=endpoint, timeout=timeout
                    )
                )
            )
        return self._session

    def close_session(self) -> None:
        """Close the session if one was opened; the lease stays held."""
        if self._session is not None:
            self._session.close()

    def load_model(self, path: str | os.PathLike[str],
                   manifest: str | os.PathLike[str] | None = None) -> Model:
        """Upload (if local) and load a model on the device; see L{Session.load_model}."""
        return self.open_session().load_model(path, manifest)

    def upload(self, source: Source, remote_name: str | None = None,
               progress: Progress | None = None) -> str:
        return self.open_session().upload(source, remote_name, progress)

    def download(self, remote: str, local_path: str | os.PathLike[str] | None = None,
                 progress: Progress | None = None) -> Any:
        return self.open_session().download(remote, local_path, progress)

    def listdir(self, path: str | None = None) -> list[RemoteFile]:
        return self.open_session().listdir(path)

    def remove(self, path: str) -> None:
        self.open_session().remove(path)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._session is not None:
            try:
                self.close_session()
            finally:
                if self._lease.tracker.connected:
                    self.release()
            return
        if self._lease.tracker.connected:
            self.release()


class Tracker:
    """A connection to compass-tracker. Close it with L{close} or a C{with} block."""

    def __init__(self, tracker: AsyncTracker,
                 reconnect: Callable[[], Any] | None = None) -> None:
        self._connection = tracker
        self._reconnect = reconnect
        self._closed = False

    @property
    def _tracker(self) -> AsyncTracker:
        """The live connection: one the tracker closed (idle too long, restarted) is made
        again on next use, unless we closed it."""
        if not self._connection.connected and self._reconnect is not None \
                and not self._closed:
            self._connection = _reactor.call(self._reconnect)
        return self._connection

    @property
    def user(self) -> str:
        """The user name the tracker knows this connection by."""
        return self._tracker.user

    @property
    def roles(self) -> list[str]:
        return list(self._tracker.roles)

    @property
    def address(self) -> str:
        """The tracker this connection is to (the active one of a standby pair)."""
        return self._tracker.address

    @property
    def redirected(self) -> bool:
        """Whether a standby redirected this client to the tracker it is connected to."""
        return self._tracker.redirected

    @property
    def trackers(self) -> tuple[str, ...]:
        """Every tracker this client was given (several for a standby pair)."""
        return self._tracker.trackers

    def tracker_states(self) -> list[dict[str, str]]:
        """Which tracker is active and what the others are (see
        L{AsyncTracker.tracker_states})."""
        return list(_reactor.call(self._tracker.tracker_states))

    def request(
        self,
        key: str,
        priority: int = 1,
        lease: float | None = None,
        wait: float | None = None,
        tags: tuple[str, ...] | list[str] = (),
        on_position: Callable[[int], object] | None = None,
        on_queued: Callable[[str, int, int], object] | None = None,
        on_why: Callable[[str], object] | None = None,
        on_notice: Callable[[str], object] | None = None,
        wait_for_board: bool = False,
    ) -> Lease:
        """Wait for a device of C{key} and return its L{Lease}.

        C{priority}: higher first. C{lease}: seconds wanted (capped by the tracker).
        C{wait}: seconds to wait in the queue before L{WaitTimeout}; None waits as long
        as it takes (Ctrl-C cancels the request). C{tags}: the device must have them all.
        If the tracker restarts meanwhile, the request is taken back (see
        L{AsyncTracker.request}) and C{on_notice} hears one line about it.
        A key no device serves raises L{NoSuchKey} (naming the keys that have devices)
        unless C{wait_for_board}, which waits until a board of C{key} registers.
        The callbacks run on the client's background thread.
        """
        return Lease(
            _reactor.call(
                self._tracker.request, key, priority=priority, lease=lease, wait=wait,
                tags=tags, on_position=on_position, on_queued=on_queued, on_why=on_why,
                on_notice=on_notice,
                wait_for_board=wait_for_board,
            )
        )

    def cancel(self, request: str) -> None:
        _reactor.call(self._tracker.cancel, request)

    def release(self, lease: str) -> None:
        _reactor.call(self._tracker.release, lease)

    def drain(self, device: str) -> None:
        """Admin: finish the current lease on C{device}, then grant it no more."""
        _reactor.call(self._tracker.drain, device)

    def undrain(self, device: str) -> None:
        _reactor.call(self._tracker.undrain, device)

    def kick(self, lease: str, reason: str = "") -> None:
        """Admin: end C{lease} now."""
        _reactor.call(self._tracker.kick, lease, reason)

    def devices(self) -> list[dict[str, Any]]:
        return _reactor.call(self._tracker.devices)

    def queues(self, waiting_limit: int | None = None) -> list[dict[str, Any]]:
        return _reactor.call(self._tracker.queues, waiting_limit)

    def summary(self, waiting_limit: int | None = None) -> dict[str, Any]:
        """C{{"devices": [...], "queues": [...]}}, as ``compass status --json`` prints."""
        return _reactor.call(self._tracker.summary, waiting_limit)

    def usage(self, key: str | None = None, user: str | None = None, by: str = "user",
              since: float | None = None) -> dict[str, Any]:
        """A usage report (see L{AsyncTracker.usage}), as ``compass usage --json``."""
        return _reactor.call(self._tracker.usage, key, user, by, since)

    def reset_usage(self, user: str | None = None) -> list[str]:
        """Admin: forget C{user}'s decayed usage (everyone's with None)."""
        return _reactor.call(self._tracker.reset_usage, user)

    def history(self, user: str | None = None, device: str | None = None,
                key: str | None = None, since: float | None = None,
                limit: int = 100) -> dict[str, Any]:
        """The newest history rows (see L{AsyncTracker.history})."""
        return _reactor.call(self._tracker.history, user, device, key, since, limit)

    def close(self) -> None:
        """Disconnect; the tracker withdraws waiting requests and ends held leases."""
        self._closed = True
        _reactor.call(self._connection.close)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_tracker(
    host: str | Sequence[str] = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    user: str | None = None,
    endpoint: str | None = None,
    timeout: float = 10.0,
    tls: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> Tracker:
    """Connect to compass-tracker at C{host}:C{port} and say hello.

    C{tls=True} (or a C{ca}) connects with TLS: the tracker's certificate must be signed
    by the CA in the PEM file C{ca} and name C{host}; C{cert} and C{key} (PEM files; the
    key may be in C{cert}) are this client's own certificate, for trackers that ask.
    Sessions on leases from this tracker use the same settings with their boards.

    C{token} identifies the user to a tracker that has a tokens file; without one the
    tracker must allow anonymous use, and C{user} (default: the login name) is the name
    it shows. C{endpoint} is a Twisted client endpoint string used instead of host and
    port (for example C{tls:host=...:port=...:trustRoots=...}).

    C{host} may name a standby pair (or more trackers): a list of C{HOST[:PORT]}, or
    one string with commas (C{"a:9190,b:9190"}). The client dials them in turn, follows
    a standby's redirect to the active tracker, and when the active one goes away
    while requests wait or leases are held, dials the others and re-attaches them
    (see L{AsyncTracker.connect}).
    """
    client_tls = _client_tls(tls, ca, cert, key)

    def connect() -> Any:
        return AsyncTracker.connect(
            _reactor.reactor(), host, port, token=token, user=user, endpoint=endpoint,
            timeout=timeout, tls=client_tls,
        )

    return Tracker(_reactor.call(connect), reconnect=connect)


def _client_tls(tls: bool, ca: str | None, cert: str | None,
                key: str | None) -> ClientTLS | None:
    if not (tls or ca):
        return None
    if ca is None:
        raise ValueError("tls=True needs ca=: the PEM file of the CA that signed the"
                         " tracker's certificate.")
    return ClientTLS(ca, cert, key)
