"""A standby tracker: two trackers on one PostgreSQL database, one of them active.

The active tracker holds a PostgreSQL session-level advisory lock on a connection of its
own (L{compassd.tracker.store.postgresql.ActiveLock}) and writes the address clients and
boards dial. Another tracker started on the same database finds the lock taken: it is a
standby. It listens, but serves nobody: every hello gets a redirect to the active
tracker (L{Standby}; see L{compassd.tracker.connection}). It asks for the lock again
every L{LockKeeper.poll_every} seconds; when the active tracker dies, its connection
drops, PostgreSQL frees the lock, and the standby takes it, loads the store and restores
its state exactly as a restarted tracker does (boards register again and report their
sessions, clients re-attach with their secrets).

The active tracker checks its lock's connection every L{LockKeeper.check_every} seconds.
If the connection is gone it takes the lock again; if another tracker took it meanwhile,
this one is no longer the active one and must not write: it stops at once with a
non-zero status (systemd's C{Restart=on-failure} starts it again, as a standby).

Every call on the lock blocks, so each runs in this module's own thread.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..addresses import advertised_address, endpoint_arguments
from .connection import log
from .store import StoreError

if TYPE_CHECKING:
    from .store.postgresql import ActiveLock

LOST_LOCK_STATUS = 75
"""The exit status of an active tracker that lost its lock to another (EX_TEMPFAIL)."""


@attrs.define
class Standby:
    """What a standby tracker knows: its own address and the active tracker's."""

    address: str
    active: str | None = None
    """The address the active tracker wrote (None while none is known)."""
    since: float = 0.0

    def redirect_sentence(self) -> str:
        """What a caller too old to follow a redirect is told."""
        if self.active:
            where = f"the active tracker is at {self.active}"
        else:
            where = ("the active tracker has not said where it is yet (it may be starting"
                     " or failing over); try again in a few seconds")
        return (f"This tracker ({self.address}) is a standby: it serves nobody while another"
                f" tracker of its pair is active, and {where}. Point --tracker or"
                " COMPASS_TRACKER at the active one, or use a compassd client and board"
                " server of version 2 of the protocol or later, which follow the redirect"
                " and take both addresses (--tracker A,B).")


def default_advertise(listen: list[str]) -> str:
    """The C{HOST:PORT} a standby names for this tracker when C{--advertise} is not
    given: the first C{tcp:}/C{ssl:} --listen port, on its interface or, for a wildcard
    one, this machine's name (port 9190 when no endpoint names one)."""
    for endpoint in listen:
        kind, _, _ = endpoint.partition(":")
        if kind.lower() not in ("tcp", "ssl"):
            continue
        args, kwargs = endpoint_arguments(endpoint)
        port = kwargs.get("port", args[0] if args else "")
        if port.isdigit() and int(port) > 0:
            return advertised_address(kwargs.get("interface", ""), int(port))
    return advertised_address("", 9190)


class LockKeeper(service.Service):
    """Keeps C{lock}: polls for it while this tracker is a standby, and checks it while
    it is the active one. Once the lock is taken, C{load} reads the store (in this
    keeper's thread) and C{restore} brings the tracker's state back from it (on the
    reactor); a store that cannot be read lets the lock go, and polling goes on.
    C{run} runs a blocking call off the reactor thread (default: the keeper's own
    thread); C{exit} leaves the process (default: at once, with that status)."""

    poll_every = 0.5
    check_every = 2.0

    def __init__(self, reactor: Any, tracker: Any, lock: ActiveLock,
                 load: Callable[[], Any], restore: Callable[[Any], object],
                 exit: Callable[[int], object] | None = None,
                 run: Callable[[Callable[[], Any]], Deferred[Any]] | None = None) -> None:
        self.reactor = reactor
        self.tracker = tracker
        self.lock = lock
        self.load = load
        self.restore = restore
        self._exit = exit or _exit_now
        self._run = run
        self._pool: ThreadPool | None = None
        self._loop: LoopingCall | None = None
        self._problem: str | None = None
        self.took_over_at: float | None = None
        """When (the reactor's clock) this standby took the lock, for tests and logs."""

    def _in_thread(self, call: Callable[[], Any]) -> Deferred[Any]:
        if self._run is not None:
            return self._run(call)
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="compass-active-lock")
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, call)

    def startService(self) -> None:
        super().startService()
        self._start(self._check if self.lock.held else self._poll,
                    self.check_every if self.lock.held else self.poll_every)

    def _start(self, what: Callable[[], Any], every: float) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = LoopingCall(what)
        self._loop.clock = self.reactor
        self._loop.start(every, now=not self.lock.held).addErrback(
            lambda f: log.failure("the tracker's active lock loop failed", f))

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.callInThread(self.lock.close)
            pool.stop()
        else:
            self.lock.close()

    def _say_once(self, problem: str) -> None:
        if problem != self._problem:
            log.warn("{problem}", problem=problem)
        self._problem = problem

    # --- a standby --------------------------------------------------------------------

    @inlineCallbacks
    def _poll(self) -> Any:
        standby = self.tracker.standby
        try:
            taken, active = yield self._in_thread(self._take_or_read)
        except StoreError as e:
            self._say_once(f"{e} This standby keeps trying every {self.poll_every:g} s.")
            return
        self._problem = None
        if not self.running:
            return
        if not taken:
            if standby is not None and active != standby.active:
                standby.active = active
                log.info("standby: the active tracker is {active}",
                         active=active or "not known yet")
            return
        waited = self.reactor.seconds() - (standby.since if standby else 0.0)
        log.info("took the active lock after {waited:.1f} s as a standby; loading the"
                 " store", waited=waited)
        try:
            snapshot = yield self._in_thread(self.load)
        except StoreError as e:
            log.error("could not take over as the active tracker: {why} Letting the lock"
                      " go and waiting again.", why=str(e))
            yield self._in_thread(self.lock.close)
            return
        self.restore(snapshot)
        self.took_over_at = self.reactor.seconds()
        if self.running:
            self._start(self._check, self.check_every)

    def _take_or_read(self) -> tuple[bool, str | None]:
        if self.lock.try_take(time.time()):
            return True, self.lock.address
        return False, self.lock.active()

    # --- the active tracker -----------------------------------------------------------

    @inlineCallbacks
    def _check(self) -> Any:
        held = yield self._in_thread(self.lock.still_held)
        if held or not self.running:
            return
        log.warn("the connection holding the active lock in {store} is gone; taking the"
                 " lock again", store=self.lock.description)
        try:
            taken = yield self._in_thread(lambda: self.lock.try_take(time.time()))
        except StoreError as e:
            self._say_once(f"{e} This tracker goes on from memory and tries again in"
                           f" {self.check_every:g} s.")
            return
        if taken:
            log.info("took the active lock again; this tracker is still the active one")
            self._problem = None
            return
        active = yield self._in_thread(self.lock.active)
        log.error(
            "another tracker ({active}) took the active lock while this one had lost its"
            " connection to {store}: this tracker is no longer the active one and stops"
            " now, without writing, so that only one tracker writes the store; started"
            " again it is a standby", active=active or "unknown", store=self.lock.description)
        self.tracker.journal = None
        self._exit(LOST_LOCK_STATUS)


def _exit_now(status: int) -> None:
    """Leave the process at once (no service writes anything more)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
