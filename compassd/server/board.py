"""The board: one device, at most one session at a time, and the way back to free.

L{BoardService} ties together the tracker link, the warm spare executor, the session
directory and the lease deadline. Every way a session can end (the client closes it or
goes away, the lease expires, the tracker revokes it, the executor dies, the server
stops) goes through L{BoardService.end_session}, which kills the session's executor,
removes its directory and its arena, tells the client and the tracker, and starts a new
spare executor so the next session does not wait for one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import __version__
from ..addresses import advertised_address
from ..executor.arena import Arena
from ..executor.arena_space import ArenaSpace, free_bytes
from ..executor.handle import ExecutorHandle, spawn_executor
from ..protocol.errors import BoardBusy, ExecutorDied, SessionEnded, Unavailable
from .leftovers import Workdir
from .modelcache import ModelCache, default_limit
from .sessiondir import MAX_ENTRIES, SessionDirectory, clean_stale
from .tracker_link import BoardDescription, TrackerLink

if TYPE_CHECKING:
    from .metrics import ServerMetrics

log = Logger(namespace="compass.server")

DEFAULT_ARENA = 1 << 30
"""Bytes of shared memory per session for tensors (a sparse file: pages cost only when
touched, and are reserved before they are; see L{compassd.executor.arena_space})."""

MIB = 1 << 20
DEFAULT_MIN_FREE_DISK = 64 * MIB
"""Below this many free bytes in the work directory the board reports itself unhealthy."""
DEFAULT_MIN_FREE_SHM = 16 * MIB
"""Below this many free bytes where arenas live (C{/dev/shm}) the board is unhealthy."""


class ActiveSession:
    """The session the board serves now."""

    def __init__(self, ident: str, lease: str, user: str, deadline: float,
                 directory: SessionDirectory, arena: Arena,
                 executor: ExecutorHandle, connection: Any) -> None:
        self.ident = ident
        self.lease = lease
        self.user = user
        self.deadline = deadline
        self.directory = directory
        self.arena = arena
        self.executor = executor
        self.connection = connection
        self.started = time.monotonic()
        self.timer: IDelayedCall | None = None
        self.ended: str | None = None
        """Why it ended, once it has."""
        self.models: dict[str, str] = {}
        self.space = ArenaSpace(arena.path)
        """What the server reserved of the arena (it reserves inputs' pages before
        receiving them)."""


def _arena_dir(session_dir: Path) -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else session_dir


class BoardService(service.MultiService):
    """Serve one device: register it, keep a spare executor warm, run one session at a time."""

    def __init__(
        self,
        reactor: Any,
        *,
        key: str,
        device: str,
        backend: str,
        tracker: str,
        workdir: str | os.PathLike[str],
        driver: str | None = None,
        advertise: str | None = None,
        tags: list[str] | None = None,
        max_lease: float | None = None,
        token: str | None = None,
        max_upload: int = 4 << 30,
        run_timeout: float = 300.0,
        health_interval: float = 30.0,
        arena_size: int = DEFAULT_ARENA,
        proxy: str | None = None,
        min_free_disk: int = DEFAULT_MIN_FREE_DISK,
        min_free_shm: int = DEFAULT_MIN_FREE_SHM,
        cache_size: int | None = None,
        max_files: int = MAX_ENTRIES,
        executor_memory: int | None = None,
    ) -> None:
        super().__init__()
        self.proxy = proxy
        """The compass-proxy endpoint this board reaches its tracker and clients through."""
        self.reactor = reactor
        self.in_thread: Callable[..., Deferred[Any]] = deferToThread
        """Runs long CPU or disk work (hashing uploads and downloads) off the reactor
        thread; tests on a Clock replace it with a synchronous call."""
        self.key = key
        self.device = device
        self.backend = backend
        self.driver = driver
        self.workdir = Path(workdir)
        self.advertise = advertise
        self.max_upload = max_upload
        self.max_files = max_files
        """Files and folders one session may hold."""
        self.executor_memory = executor_memory
        """Bytes of address space an executor may use besides its tensor arena (None:
        no limit): its RLIMIT_AS is this plus the arena's size."""
        self.cache_size = cache_size
        """Bytes the model cache may hold; None: a share of the work directory's disk
        (L{modelcache.default_limit}); 0: no cache."""
        self.cache: ModelCache | None = None
        """The model cache, once the service started (None when C{cache_size} is 0)."""
        self.run_timeout = run_timeout
        self.health_interval = health_interval
        self.arena_size = arena_size
        self.min_free_disk = min_free_disk
        self.min_free_shm = min_free_shm
        self.records = Workdir(self.workdir)
        """The lock and records that let the next start remove what this run leaves."""
        self.session: ActiveSession | None = None
        self.backend_info: list[str] = []
        self._spare_pending: ExecutorHandle | None = None
        self._spare_handle: ExecutorHandle | None = None
        self._health: LoopingCall | None = None
        self._redeeming = 0
        """Tickets being checked with the tracker right now."""
        self._opening: tuple[str, str, float] | None = None
        """(lease, holder, deadline) of a session whose ticket was redeemed and whose
        executor is being attached."""
        self._revoked_leases: set[str] = set()
        """Leases the tracker ended while their session was still opening."""
        self.sessions_served = 0
        self.metrics: ServerMetrics | None = None
        """Where the board counts sessions, runs, bytes and executors (--metrics)."""
        self.link = TrackerLink(
            reactor, proxy or tracker,
            BoardDescription(device=device, key=key, address=advertise or "",
                             tags=list(tags or []), max_lease=max_lease,
                             info=[f"backend={backend}", f"server=compass-server {__version__}"],
                             healthy=False, health_detail="starting"),
            on_revoke=self._revoked, token=token,
            on_dial=self._dial if proxy else None, report=self.serving)

    @classmethod
    def from_options(cls, options: Any, reactor: Any) -> BoardService:
        return cls(
            reactor, key=options["key"], device=options["device"],
            backend=options["backend"], tracker=options["tracker-endpoint"],
            workdir=options["workdir"], driver=options["driver"],
            advertise=options["advertise"], tags=options["tags"],
            max_lease=options["max-lease"], token=options["token"],
            max_upload=options["max-upload"], run_timeout=options["run-timeout"],
            health_interval=options["health-interval"], proxy=options.get("proxy"),
            min_free_disk=options.get("min-free-disk", DEFAULT_MIN_FREE_DISK),
            min_free_shm=options.get("min-free-shm", DEFAULT_MIN_FREE_SHM),
            cache_size=options.get("cache-size"),
            max_files=options.get("max-files", MAX_ENTRIES),
            executor_memory=options.get("executor-memory"))

    def factory(self) -> Factory:
        from .session import SessionConnection

        return Factory.forProtocol(lambda: SessionConnection(self))

    # --- life ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.records.lock()
        except Exception as e:
            log.error("{device}: {error}", device=self.device, error=e)
            raise
        self._remove_leftovers()
        limit = default_limit(self.workdir) if self.cache_size is None else self.cache_size
        if limit > 0:
            self.cache = ModelCache.open(self.workdir / "cache", limit)
        self._health = LoopingCall(self._check_health)
        self._health.clock = self.reactor
        self._health.start(self.health_interval, now=False)
        self._warm_spare()
        if self.advertise or self.proxy:  # behind a proxy, the proxy's address is used
            self.link.startService()

    def listening(self, port: IListeningPort) -> IListeningPort:
        """Called when a client port is bound: it gives the address to advertise."""
        if not self.link.board.address:
            host: Any = port.getHost()
            self.link.board.address = advertised_address(host.host, host.port)
            if self.running and not self.link.running:
                self.link.startService()
        return port

    def stopService(self) -> Deferred[None]:
        if self._health is not None and self._health.running:
            self._health.stop()
        if self.session is not None:
            self.end_session(self.session, "server-stopped",
                             "The board's server is stopping; the session ended.")
        for spare in (self._spare_handle, self._spare_pending):
            if spare is not None:
                spare.kill()
        self._spare_handle = self._spare_pending = None
        self.records.unlock()
        d = maybeDeferred(super().stopService)
        if self.link.running:
            d.addCallback(lambda _: self.link.stopService())
        return d

    # --- the warm spare ------------------------------------------------------------

    def _warm_spare(self) -> None:
        if self._spare_pending is not None or self._spare_handle is not None \
                or not self.running:
            return
        handle = self._spawn(f"{self.device} spare")
        self._spare_pending = handle
        handle.when_ready().addCallbacks(
            lambda _: self._spare_ready(handle), lambda f: self._spare_failed(handle, f))

    def _spawn(self, tag: str) -> ExecutorHandle:
        """Start an executor, recorded in the work directory while it lives."""
        limit = (None if self.executor_memory is None
                 else self.executor_memory + self.arena_size)
        handle = spawn_executor(self.reactor, self.backend, driver=self.driver, tag=tag,
                                memory_limit=limit)
        if self.metrics is not None:
            self.metrics.executor_starts.inc()
        pid = handle.pid
        if pid is not None:
            try:
                self.records.record_executor(pid)
            except OSError as e:
                log.warn("{device}: could not record executor {pid}: {error}",
                         device=self.device, pid=pid, error=e)

            def forget(why: object) -> object:
                self.records.forget_executor(pid)
                return why

            handle.ended.addCallback(forget)
        return handle

    def _spare_ready(self, handle: ExecutorHandle) -> None:
        if self._spare_pending is not handle:
            return  # a session took it while it started
        self._spare_pending = None
        if not self.running:
            handle.kill()
            return
        self._spare_handle = handle
        handle.ended.addCallback(self._spare_ended, handle)
        log.info("{device}: a warm spare executor is ready for the next session",
                 device=self.device)
        self.backend_info = [line for line in handle.info
                             if not line.startswith(("backend=", "pid="))]
        self.link.board.info = [f"backend={self.backend}", *self.backend_info,
                                f"server=compass-server {__version__}"]
        self._check_health()

    def _spare_failed(self, handle: ExecutorHandle, failure: Failure) -> None:
        if self._spare_pending is handle:
            self._spare_pending = None
        if self.metrics is not None:
            self.metrics.executor_crashes.inc()
        detail = f"the {self.backend} executor did not start: {failure.getErrorMessage()}"
        log.warn("{device}: {detail}", device=self.device, detail=detail)
        self.link.set_health(False, detail)

    def _spare_ended(self, why: object, handle: ExecutorHandle) -> object:
        if self._spare_handle is handle:
            self._spare_handle = None
            if self.metrics is not None:
                self.metrics.executor_crashes.inc()
            log.warn("{device}: the spare executor ended ({why}); starting another",
                     device=self.device, why=why)
            self.link.set_health(False, f"the spare executor ended: {why}")
            self._warm_spare()
        return why

    def _check_health(self) -> None:
        if self.session is not None:
            return
        handle = self._spare_handle
        if handle is None:
            self._warm_spare()
            return

        def checked(answer: tuple[bool, str]) -> None:
            healthy, detail = bool(answer[0]), str(answer[1])
            short = self.space_problem()
            if short is not None:
                healthy, detail = False, short
            if self.metrics is not None:
                self.metrics.checked(healthy)
            if healthy != self.link.board.healthy:
                log.info("{device} is {state}: {detail}", device=self.device,
                         state="healthy" if healthy else "unhealthy", detail=detail)
            self.link.set_health(healthy, detail)

        def failed(failure: Failure) -> None:
            if self.metrics is not None:
                self.metrics.checked(False)
            self.link.set_health(False, f"health check failed: {failure.getErrorMessage()}")

        handle.check_health().addCallbacks(checked, failed)

    # --- sessions ------------------------------------------------------------------

    def _dial(self, channel: str) -> Deferred[None]:
        """Connect back to the proxy for one client: the new connection attaches to
        C{channel} and then serves the client's session like a direct one."""
        from ..protocol import proxy as px
        from ..tls import client_from_string

        assert self.proxy is not None
        endpoint, _ = client_from_string(self.reactor, self.proxy)
        connecting: Deferred[Any] = endpoint.connect(self.factory())

        def attach(connection: Any) -> Deferred[None]:
            d = connection.callRemote(px.Attach, channel=channel)

            def refused(failure: Failure) -> Failure:
                connection.drop()
                return failure

            return d.addCallbacks(lambda _: None, refused)

        return connecting.addCallback(attach)

    def serving(self) -> tuple[str, str, float] | None | bool:
        """What this board tells the tracker it serves (L{TrackerLink} reports it on
        every registration and heartbeat): (lease, holder, seconds left), None for
        nothing, or False while a ticket is being checked (the tracker's answer is on
        its way, so nothing true can be said)."""
        if self._redeeming:
            return False
        now = self.reactor.seconds()
        session = self.session
        if session is not None and session.ended is None:
            return (session.lease, session.user, max(0.0, session.deadline - now))
        if self._opening is not None:
            lease, user, deadline = self._opening
            return (lease, user, max(0.0, deadline - now))
        return None

    def open_session(self, connection: Any, ticket: str) -> Deferred[ActiveSession]:
        """Check C{ticket} with the tracker, then give the connection a fresh session."""
        if self.session is not None or self._opening is not None:
            raise BoardBusy(
                f"The board {self.device} is serving another session; a ticket opens a"
                " session only on the board it was granted for, once.")
        self._redeeming += 1
        opening = self.link.redeem(ticket)

        def checked(result: Any) -> Any:
            self._redeeming -= 1
            return result

        def redeemed(answer: dict[str, Any]) -> Deferred[ActiveSession]:
            if self.session is not None or self._opening is not None:
                raise BoardBusy(f"The board {self.device} is serving another session.")
            return self._start(connection, answer["lease"], answer["user"],
                               float(answer["expires_in"]))

        return opening.addBoth(checked).addCallback(redeemed)

    def _take_executor(self) -> Deferred[ExecutorHandle]:
        handle, self._spare_handle = self._spare_handle, None
        if handle is not None:
            d: Deferred[ExecutorHandle] = Deferred()
            d.callback(handle)
            return d
        pending, self._spare_pending = self._spare_pending, None
        if pending is not None:
            return pending.when_ready().addCallback(lambda _: pending)
        fresh = self._spawn(self.device)
        return fresh.ready.addCallback(lambda _: fresh)

    def _start(self, connection: Any, lease: str, user: str,
               expires_in: float) -> Deferred[ActiveSession]:
        ident = secrets.token_hex(8)
        directory: SessionDirectory | None = None
        try:
            directory = SessionDirectory.create(self.workdir, self.max_upload, ident,
                                                max_entries=self.max_files)
            arena_path = (_arena_dir(directory.path)
                          / f"compass-arena-{self.device}-{os.getpid()}-{ident}")
            arena = Arena.create(arena_path, self.arena_size)
            try:
                directory.note_arena(arena.path)
            except OSError:
                arena.close()
                _unlink(arena.path)
                raise
        except (OSError, ValueError) as e:
            if directory is not None:
                directory.destroy()
            log.warn("{device}: cannot set up a session: {error}", device=self.device,
                     error=e)
            self.link.session_ended(lease, f"the board could not set up the session: {e}")
            raise Unavailable(
                f"The board {self.device} could not set up a session ({e}); the lease was"
                " given back, request the board again.") from None
        placeholder: dict[str, ActiveSession] = {}
        deadline = self.reactor.seconds() + expires_in
        self._opening = (lease, user, deadline)

        def attach(handle: ExecutorHandle) -> Deferred[ActiveSession]:
            session = ActiveSession(ident, lease, user, deadline,
                                    directory, arena, handle, connection)
            placeholder["s"] = session
            self._opening = None
            self.session = session
            handle.tag = f"{self.device} session {ident} ({user})"
            handle.ended.addCallback(self._executor_ended, session)
            session.timer = self.reactor.callLater(max(0.0, expires_in), self._expired,
                                                   session)
            log.info("{device}: session {session} opened for {user} (lease {lease},"
                     " {left:.0f} s left)", device=self.device, session=ident, user=user,
                     lease=lease, left=expires_in)
            d = handle.attach(str(directory.files), arena.path, arena.size, ident)
            return d.addCallback(lambda _: self._opened(session))

        def failed(failure: Failure) -> Failure:
            self._opening = None
            session = placeholder.get("s")
            if session is not None:
                self.end_session(session, "failed",
                                 f"The session could not start: {failure.getErrorMessage()}")
            else:
                arena.close()
                _unlink(arena.path)
                directory.destroy()
                self.link.session_ended(lease, "the session could not start")
            return failure

        d = self._take_executor().addCallback(attach).addErrback(failed)
        self.reactor.callLater(0, self._warm_spare)
        return d

    def _opened(self, session: ActiveSession) -> ActiveSession:
        """The session is attached: end it now if the tracker ended its lease meanwhile."""
        if session.lease in self._revoked_leases:
            self._revoked_leases.discard(session.lease)
            self.end_session(session, "revoked",
                             f"Lease {session.lease} ended at the tracker while its session"
                             f" on {self.device} was opening; request the board again.")
            raise SessionEnded(f"Lease {session.lease} ended at the tracker while its"
                               " session was opening; request the board again.")
        return session

    def _expired(self, session: ActiveSession) -> None:
        session.timer = None
        held = time.monotonic() - session.started
        self.end_session(session, "expired",
                         f"The lease expired after {held:.0f} s; the session on"
                         f" {self.device} ended and the board went back to the pool."
                         " Ask for a longer lease (request(..., lease=SECONDS)) if you need"
                         " more time.")

    def _revoked(self, lease: str, reason: str, message: str) -> None:
        """The tracker ended C{lease}: end its session at once, and confirm (the tracker
        keeps the device out of the pool until the board says the session is over)."""
        said = message or f"The tracker ended lease {lease} ({reason})."
        if lease not in said:
            said = f"Lease {lease} ended ({reason}): {said}"
        session = self.session
        if session is not None and session.lease == lease:
            self.end_session(session, reason, said)
            return
        if self._opening is not None and self._opening[0] == lease:
            self._revoked_leases.add(lease)  # ended as soon as it is attached
            return
        self.link.session_ended(lease, f"the board serves no session of lease {lease}")

    def _executor_ended(self, why: object, session: ActiveSession) -> object:
        if session.ended is None:
            if self.metrics is not None:
                self.metrics.executor_crashes.inc()
            self.end_session(session, "executor-died",
                             f"The session's executor on {self.device} ended ({why});"
                             " the session is over and the board went back to the pool.")
        return why

    def client_lost(self, session: ActiveSession) -> None:
        if session.ended is None:
            self.end_session(session, "client-lost", "The client went away.")

    def end_session(self, session: ActiveSession, reason: str, message: str, *,
                    tell_tracker: bool = True) -> None:
        """End C{session}: every resource goes, the client and the tracker are told."""
        if session.ended is not None:
            return
        session.ended = reason
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None
        if self.session is session:
            self.session = None
        # Each step on its own: one that fails must not keep the board busy.
        for what, step in (("kill the executor", session.executor.kill),
                           ("unmap the tensor arena", session.arena.close),
                           ("remove the tensor arena", lambda: _unlink(session.arena.path)),
                           ("remove the session directory", session.directory.destroy)):
            try:
                step()
            except Exception as e:  # a view still held, a file system error
                log.warn("{device}: could not {what} of session {session}: {error}",
                         device=self.device, what=what, session=session.ident, error=e)
        self.sessions_served += 1
        if self.metrics is not None:
            self.metrics.session_ended(reason)
        held = time.monotonic() - session.started
        log.info("{device}: session {session} of {user} ended after {held:.1f} s"
                 " ({reason}): {message}", device=self.device, session=session.ident,
                 user=session.user, held=held, reason=reason, message=message)
        closing = getattr(session.connection, "session_closing", None)
        if closing is not None:
            closing(reason, message)
        if tell_tracker:
            self.link.session_ended(session.lease, f"{reason}: {message}")
        self._warm_spare()

    def _remove_leftovers(self) -> None:
        """Kill and remove what an earlier run of this server left: executors, arenas,
        session directories (L{compassd.server.leftovers}); log each."""
        for what in self.records.kill_leftover_executors():
            log.info("{device}: killed the {what} left by an earlier run",
                     device=self.device, what=what)
        for path in self.records.remove_recorded_arenas():
            log.info("{device}: removed the arena {path} left by an earlier run",
                     device=self.device, path=path)
        for stale in clean_stale(self.workdir):
            log.info("{device}: removed the stale session directory {path} left by an"
                     " earlier run", device=self.device, path=stale)
        self._clean_stale_arenas()

    def space_problem(self) -> str | None:
        """A sentence if the work directory or the arenas' file system is below its
        threshold of free space (a board that would fail every session), else None."""
        checks = [("work directory", str(self.workdir), self.min_free_disk)]
        shm = _arena_dir(self.workdir)
        if shm != self.workdir:
            checks.append(("shared memory", str(shm), self.min_free_shm))
        for what, path, minimum in checks:
            if minimum <= 0:
                continue
            try:
                free = free_bytes(path)
            except OSError as e:
                return f"cannot check the free space of the {what} {path}: {e.strerror}"
            if free < minimum:
                return (f"the {what} {path} has {free / MIB:.0f} MiB free, below the"
                        f" {minimum / MIB:.0f} MiB a session needs; free some space")
        return None

    def _clean_stale_arenas(self) -> None:
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return
        prefix = f"compass-arena-{self.device}-"
        for path in shm.glob(f"{prefix}*-*"):
            pid, sep, ident = path.name[len(prefix):].partition("-")
            # exactly PREFIX-PID-IDENT: a device whose name extends ours is not ours
            if pid.isdigit() and sep and "-" not in ident and not _alive(int(pid)):
                _unlink(str(path))


def _alive(pid: int) -> bool:
    """Whether a process C{pid} exists (its arena may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def session_gone(session: ActiveSession | None) -> SessionEnded:
    """The error for a command that arrives when no session is open."""
    if session is None:
        return SessionEnded("No session is open on this connection: send open-session"
                            " with the ticket the tracker granted first.")
    return SessionEnded(f"The session has ended ({session.ended}); open a new one with a"
                        " new lease.")


__all__ = ["ActiveSession", "BoardService", "ExecutorDied", "Unavailable", "session_gone"]
