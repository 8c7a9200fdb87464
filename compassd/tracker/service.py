"""compass-tracker's Twisted shell: AMP connections in, scheduler effects out.

L{TrackerService} owns the L{Scheduler} and everything with time or I/O in it: the one
timer for the scheduler's next deadline, the board heartbeat timeouts, the coalesced
queue-position pushes, and the log lines. L{TrackerConnection} is one AMP connection
(a client, a board or an admin): L{compassd.tracker.connection} has what every connection
does, L{compassd.tracker.clients}, L{compassd.tracker.boards} and L{compassd.tracker.admin}
its responders, which translate commands into scheduler calls and never decide anything
themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from ..protocol import board_tracker as bt
from ..protocol import client_tracker as ct
from ..protocol.accounting import FEATURE_REPORTS
from . import persist
from .access import Access, TokensFileError, load_tokens, shares_of
from .accounting import RecentHistory
from .admin import AdminResponders
from .audit import AuditLog, Throttle
from .boards import BoardResponders
from .clients import ClientResponders
from .connection import log
from .records import (
    DeviceChanged,
    DeviceState,
    Effect,
    EndOnBoard,
    Granted,
    LeaseEnded,
    QueueChanged,
    RequestEnded,
)
from .reports import ReportResponders, memory_note
from .scheduler import Scheduler
from .standby import Standby
from .store import Journal, Snapshot
from .store.records import HistoryQuery, HistoryRow, UsageGroup, UsageQuery

_ROUTINE_STATES = (DeviceState.BUSY, DeviceState.FREE)

PUSH_EVERY_CHANGE_UP_TO = 100
"""Waiting requests at this position or nearer hear of every change of their position;
those further back hear when it changed by a tenth."""


def _line(text: str, **fields: Any) -> None:
    """Log one info line whose text the caller built (with an f-string); the fields stay
    in the event for structured observers. Twisted's format strings are parsed anew for
    every event by the text observer, which cost as much as the rest of a grant."""
    log.info("{line}", line=text, **fields)


@attrs.define(eq=False)
class TrackerService(service.Service):
    """The tracker: a scheduler, the connections that talk to it, and its timers.

    C{heartbeat_timeout}: a board that sends nothing for this long is dropped and its
    devices go offline. C{position_interval}: queue positions are pushed to waiting
    clients at most this often (they are also in every request's answer).
    """

    reactor: IReactorTime
    scheduler: Scheduler = attrs.Factory(Scheduler)
    access: Access = attrs.Factory(Access)
    heartbeat_timeout: float = 15.0
    position_interval: float = 0.5
    idle_timeout: float | None = 600.0
    """A client or admin connection that sends nothing for this long while it has no
    request waiting and holds no lease is closed (None: never)."""
    audit: AuditLog | None = None
    """Where audit events go (L{compassd.tracker.audit}); None for nowhere."""
    board_ca: str | None = None
    """A PEM CA file: the board role then needs a TLS client certificate it signed."""
    tokens_path: str | None = None
    """The tokens file L{reload_access} reads again."""
    observers: list[Callable[[list[Effect], float], None]] = attrs.Factory(list)
    """Called with every batch of effects the tracker applies and the time (metrics,
    the dashboard's history and live pages); they only watch."""
    refusals: list[Callable[[str], None]] = attrs.Factory(list)
    """Called with the role asked for whenever a hello is refused."""
    journal: Journal | None = None
    """Where the scheduler's effects are journaled (L{compassd.tracker.store}); None
    keeps the state in memory only."""
    recent: RecentHistory = attrs.Factory(RecentHistory)
    """The history rows of the leases and unserved requests that ended since the
    tracker started (bounded): what C{compass history} reads without a store."""
    history_reader: Callable[[HistoryQuery], Deferred[list[HistoryRow]]] | None = None
    """Reads a page of history from the durable store, off the reactor; None: the
    reports read L{recent}."""
    usage_reader: Callable[[UsageQuery], Deferred[list[UsageGroup]]] | None = None
    """Adds up a usage report in the durable store, off the reactor; None: in the
    journal's store (in its thread) when there is one, else from L{recent}."""

    standby: Standby | None = None
    """Set while this tracker is the standby of a pair on PostgreSQL: it then serves
    nobody and redirects every hello to the active tracker (L{compassd.tracker.standby})."""

    refusal_lines: Throttle = attrs.Factory(Throttle)
    """How often a refusal of a caller not yet known is audited, per peer address."""
    refusal_warnings: Throttle = attrs.Factory(Throttle)
    """How often a refused hello is logged as a warning, per peer address."""

    device_owners: dict[str, str] = attrs.Factory(dict)
    """Each device name and the user (token or certificate) that first registered it:
    no other may register that name while this tracker runs."""
    _connections: set[Any] = attrs.Factory(set)
    _timer: IDelayedCall | None = None
    _timer_at: float | None = None
    _positions_call: IDelayedCall | None = None
    _dirty_keys: set[str] = attrs.Factory(set)
    _sent_positions: dict[str, int] = attrs.Factory(dict)
    _stopping: bool = False

    def __attrs_post_init__(self) -> None:
        service.Service.__init__(self)
        self.recent.started_at = self.now()
        self.observers.append(self.recent.observe)

    @property
    def heartbeat_interval(self) -> float:
        """How often boards are told to send a heartbeat: three tries per timeout."""
        return self.heartbeat_timeout / 3

    def now(self) -> float:
        return self.reactor.seconds()

    def record(self, event: str, **fields: Any) -> None:
        """Write an audit event, if there is an audit log."""
        if self.audit is not None:
            self.audit.write(event, **fields)

    def reload_access(self) -> bool:
        """Read the tokens file again (on SIGHUP). Connections already greeted keep the
        identity they have; new hellos use the new table. A file with a mistake leaves
        the old table in force (and says so in the log). Returns whether it changed."""
        if self.audit is not None:
            self.audit.reopen()
        if self.tokens_path is None:
            return False
        try:
            tokens = load_tokens(self.tokens_path)
        except TokensFileError as e:
            log.error("kept the old tokens: {why}", why=str(e))
            self.record("tokens-reload-failed", reason=str(e))
            return False
        self.access = attrs.evolve(self.access, tokens=tokens)
        self.scheduler.set_shares(self.now(), shares_of(tokens))
        self._dirty_keys.update(self.scheduler.keys())
        log.info("reloaded {count} tokens from {path}", count=len(tokens),
                 path=self.tokens_path)
        self.record("tokens-reloaded", reason=f"{len(tokens)} tokens from {self.tokens_path}")
        return True

    def startService(self) -> None:
        if self.journal is not None:
            self.journal.start()
        service.Service.startService(self)
        self._arm()
    @inlineCallbacks
    def history_rows(self, query: HistoryQuery, most: int
                     ) -> Generator[Deferred[Any], Any, tuple[list[HistoryRow], str]]:
        """The rows C{query} asks for, newest first, at most C{most} of them; and a note
        of where they came from. With a store (L{history_reader}, else the journal's
        store) they are the store's rows and the memory's together: the memory has what
        the store may not have written yet, the store what ended before this start. A
        store that cannot be read leaves the memory's rows, and the note says so."""
        rows, cut = yield _pages(lambda q: succeed(self.recent.history(q)), query, most)
        source = memory_note(self.recent.started_at)
        read = self.history_reader
        journal = self.journal
        if read is None and journal is not None:
            store = journal.store
            read = lambda q: journal.read(lambda: store.history(q))  # noqa: E731
        if read is not None:
            try:
                stored, stored_cut = yield _pages(read, query, most)
            except Exception as e:
                log.warn("a history report could not read the store: {why}; it has only"
                         " the tracker's memory", why=str(e))
                source += f"; the store could not be read ({e})"
            else:
                seen = {row.id for row in rows}
                rows = sorted(rows + [row for row in stored if row.id not in seen],
                              key=lambda row: (row.ended_at, row.id), reverse=True)[:most]
                source, cut = "store", cut or stored_cut
        if cut and most > query.limit:
            source += f"; cut at the newest {most} rows"
        return rows, source

    def stopService(self) -> Any:
        """Stop: close every connection, write what the store has not yet, close it. A
        stop is not the end of anyone's request or lease: the connections it closes end
        nothing (a restart brings them back; without a store they are gone anyway)."""
        self._stopping = True
        for call in (self._timer, self._positions_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._positions_call = None
        for connection in list(self._connections):
            connection.drop()
        stopped = [maybeDeferred(service.Service.stopService, self)]
        if self.journal is not None:
            stopped.append(self.journal.stop())
        done: Deferred[Any] = gatherResults(stopped, consumeErrors=True)
        return done

    # --- the store --------------------------------------------------------------------

    def restore(self, snapshot: Snapshot, grace: float) -> None:
        """Bring back what the store kept (before the service starts): ids of this
        start carry the store's epoch, so they never repeat earlier ones, and the
        scheduler's random one, so they never repeat those of a tracker whose store was
        new or lost (a board may still serve a lease of that tracker: it is adopted, not
        taken for one this tracker ended)."""
        self.scheduler.id_prefix = f"{snapshot.epoch}.{self.scheduler.id_prefix}"
        now = self.now()
        effects = persist.restore(self.scheduler, snapshot, now, grace)
        live = snapshot.live
        if live.devices or live.leases or live.requests:
            log.info(
                "brought back {devices} devices, {leases} leases and {requests} waiting"
                " requests; their clients have {grace:g} s to re-attach",
                devices=len(live.devices), leases=len(live.leases),
                requests=len(live.requests), grace=grace)
        self.apply(effects + self.scheduler.advance(now))

    def take_over(self, journal: Journal, snapshot: Snapshot, grace: float) -> None:
        """A standby took the active lock: journal to C{journal} from now on and bring
        back what the store kept, as a restarted tracker does."""
        self.standby = None
        self.journal = journal
        self.restore(snapshot, grace)
        if self.running:
            journal.start()

    def journal_request(self, request: Any) -> None:
        """A request was queued: keep it (the core's queueing has no effect of its own)."""
        if self.journal is not None and request.id in self.scheduler.requests:
            self.journal.put_request(persist.request_record(request))

    def journal_lease(self, lease: Any) -> None:
        """A lease changed without an effect (its ticket was claimed)."""
        if self.journal is not None and lease.id in self.scheduler.leases:
            self.journal.put_lease(persist.lease_record(lease))

    def _journal(self, effects: list[Effect]) -> None:
        journal = self.journal
        assert journal is not None
        now = self.now()
        devices = self.scheduler.devices
        granted_keys = set()
        used: set[tuple[str, str]] = set()
        for effect in effects:
            if isinstance(effect, Granted):
                lease = effect.lease
                journal.drop_request(lease.request.id)
                journal.put_lease(persist.lease_record(lease))
                granted_keys.add(lease.request.key)
            elif isinstance(effect, RequestEnded):
                journal.drop_request(effect.request.id)
                journal.add_history(persist.request_history(effect, now))
            elif isinstance(effect, LeaseEnded):
                journal.drop_lease(effect.lease.id)
                journal.add_history(persist.lease_history(effect, now))
                used.add((effect.lease.request.key, effect.lease.request.user))
            elif isinstance(effect, DeviceChanged):
                device = effect.device
                if devices.get(device.name) is device:
                    journal.put_device(persist.device_record(device))
                else:
                    journal.drop_device(device.name)
        for name, value in persist.recency_meta(self.scheduler, granted_keys).items():
            journal.set_meta(name, value)
        if used:
            self.journal_usage(used)

    def journal_usage(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Keep the fair-share usage of each (key, user) in C{pairs} (a lease ended, or
        an admin reset it)."""
        if self.journal is not None and self.scheduler.fair_share:
            meta = persist.usage_meta(self.scheduler, pairs, self.now())
            for name, value in meta.items():
                self.journal.set_meta(name, value)

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: TrackerConnection(self))

    # --- effects ----------------------------------------------------------------------

    def apply(self, effects: list[Effect]) -> None:
        """Carry out what the scheduler decided, then re-arm the deadline timer."""
        if self.journal is not None:
            self._journal(effects)
        if self.observers and effects:
            now = self.now()
            for observer in self.observers:
                observer(effects, now)
        # A grant or an ended lease has its own log line; the device's busy/free change
        # that comes with it would only repeat it, and writing a log line costs as much
        # as the rest of a grant.
        routine = {
            effect.lease.device.name
            for effect in effects
            if isinstance(effect, (Granted, LeaseEnded))
        }
        for effect in effects:
            if isinstance(effect, Granted):
                self._granted(effect)
            elif isinstance(effect, RequestEnded):
                self._request_ended(effect)
            elif isinstance(effect, LeaseEnded):
                self._lease_ended(effect)
            elif isinstance(effect, QueueChanged):
                self._dirty_keys.add(effect.key)
            elif isinstance(effect, EndOnBoard):
                self._end_on_board(effect)
            elif isinstance(effect, DeviceChanged) and not (
                effect.device.name in routine and effect.state in _ROUTINE_STATES
            ):
                log.info(
                    "device {device} ({key}) is {state}: {why}",
                    device=effect.device.name,
                    key=effect.device.key,
                    state=effect.state.value,
                    why=effect.why,
                )
        if self._dirty_keys and self._positions_call is None and self.running:
            self._positions_call = self.reactor.callLater(
                self.position_interval, self._push_positions
            )
        self._arm()

    def _granted(self, effect: Granted) -> None:
        lease = effect.lease
        request = lease.request
        self._sent_positions.pop(request.id, None)
        self.record("grant", user=request.user, device=lease.device.name, lease=lease.id,
                    request=request.id, key=request.key)
        waited = lease.granted_at - request.enqueued_at
        _line(
            f"granted {lease.id} on {lease.device.name} to {request.user} for {request.id}"
            f" after waiting {waited:.3f} s; lease {lease.seconds:g} s",
            lease=lease.id,
            device=lease.device.name,
            user=request.user,
            request=request.id,
            waited=waited,
            seconds=lease.seconds,
        )
        self._tell(
            request.owner,
            ct.Granted,
            request=request.id,
            lease=lease.id,
            ticket=lease.ticket,
            device=lease.device.name,
            address=lease.device.address,
            expires_in=lease.deadline - self.now(),
            info=list(lease.device.info),
        )

    def _request_ended(self, effect: RequestEnded) -> None:
        request = effect.request
        self._sent_positions.pop(request.id, None)
        if effect.outcome.value != "granted":
            self.record("request-ended", user=request.user, request=request.id,
                        reason=effect.message, outcome=effect.outcome.value,
                        key=request.key)
        _line(
            f"{request.id} of {request.user} for {request.key} ended {effect.outcome.value}:"
            f" {effect.message}",
            request=request.id,
            user=request.user,
            key=request.key,
            outcome=effect.outcome.value,
            message=effect.message,
        )
        self._tell(
            request.owner,
            ct.RequestEnded,
            request=request.id,
            reason=effect.outcome.value,
            message=effect.message,
            position=effect.position,
            waited=effect.waited,
        )

    def _lease_ended(self, effect: LeaseEnded) -> None:
        lease = effect.lease
        self.record(effect.outcome.value, user=lease.user, device=lease.device.name,
                    lease=lease.id, request=lease.request.id, reason=effect.message)
        _line(
            f"{lease.id} of {lease.user} on {lease.device.name} ended {effect.outcome.value}:"
            f" {effect.message}",
            lease=lease.id,
            user=lease.user,
            device=lease.device.name,
            outcome=effect.outcome.value,
            message=effect.message,
        )
        self._tell(
            lease.owner,
            ct.LeaseEnded,
            lease=lease.id,
            reason=effect.outcome.value,
            message=effect.message,
        )
        if effect.revoke:
            self._tell(
                lease.device.owner,
                bt.Revoke,
                device=lease.device.name,
                lease=lease.id,
                reason=effect.outcome.value,
                message=effect.message,
            )

    def _end_on_board(self, effect: EndOnBoard) -> None:
        device = effect.device
        _line(f"{device.name} still serves {effect.lease}, which is not active here; its"
              " board is told to end it", device=device.name, lease=effect.lease)
        self._tell(device.owner, bt.Revoke, device=device.name, lease=effect.lease,
                   reason=effect.reason, message=effect.message)

    def _tell(self, owner: object, command: type[amp.Command], **arguments: Any) -> None:
        """Tell a connection (AMP or TVM) what the scheduler decided about its business."""
        notify = getattr(owner, "notify", None)
        if notify is not None:
            notify(command, arguments)

    def connections(self) -> list[Any]:
        """Every open connection, AMP and TVM (for metrics)."""
        return list(self._connections)

    def tvm_connections(self) -> list[Any]:
        """The connections speaking TVM's tracker protocol."""
        from .tvm import TvmTrackerConnection

        return [c for c in self._connections if isinstance(c, TvmTrackerConnection)]

    def _arm(self) -> None:
        when = self.scheduler.next_deadline()
        if when is not None and self._timer is not None and self._timer_at is not None \
                and self._timer_at <= when:
            # Armed for now or earlier: a timer that fires before anything is due only
            # re-arms, which is cheaper than cancelling and re-scheduling one per grant.
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_at = None
        if when is not None and self.running:
            self._timer_at = when
            self._timer = self.reactor.callLater(max(0.0, when - self.now()), self._deadline)

    def _deadline(self) -> None:
        self._timer = self._timer_at = None
        self.apply(self.scheduler.advance(self.now()))

    def _push_positions(self) -> None:
        self._positions_call = None
        keys, self._dirty_keys = self._dirty_keys, set()
        now = self.now()
        for key in keys:
            order = self.scheduler.waiting(key, now)
            news: list[tuple[str, int]] = []
            for position, waiting in enumerate(order):
                request_id = waiting.id
                sent = self._sent_positions.get(request_id)
                if sent == position:
                    continue
                if (sent is not None and position > PUSH_EVERY_CHANGE_UP_TO
                        and abs(sent - position) * 10 < sent):
                    # Far back in a long queue, moving up one place is not news: tell
                    # once the position changed by a tenth, so one grant does not cost
                    # a notice to every waiting request.
                    continue
                self._sent_positions[request_id] = position
                news.append((request_id, position))
            why = self.scheduler.reasons(key, now, order, {r for r, _ in news})
            for request_id, position in news:
                request = self.scheduler.requests[request_id]
                self._tell(request.owner, ct.Position, request=request_id, position=position,
                           why=why.get(request_id, ""))

    # --- connections ------------------------------------------------------------------

    def connected(self, connection: Any) -> None:
        self._connections.add(connection)

    def disconnected(self, connection: Any, why: str) -> None:
        self._connections.discard(connection)
        if self._stopping:
            return
        now = self.now()
        effects = self.scheduler.client_lost(now, connection)
        effects += self.scheduler.board_lost(now, connection)
        identity = getattr(connection, "identity", None)
        if identity is not None:
            log.info(
                "{role} {user} at {peer} disconnected: {why}",
                role=connection.role,
                user=identity.user,
                peer=connection.describe(),
                why=why,
            )
        self.apply(effects)


@inlineCallbacks
def _pages(read: Callable[[HistoryQuery], Deferred[list[HistoryRow]]], query: HistoryQuery,
           most: int) -> Generator[Deferred[Any], Any, tuple[list[HistoryRow], bool]]:
    """At most C{most} rows of C{query}, newest first, read page by page; and whether
    there were more."""
    rows: list[HistoryRow] = []
    before = query.before
    while len(rows) < most:
        want = min(10_000, most - len(rows))
        page = yield read(attrs.evolve(query, before=before, limit=want))
        rows += page
        if len(page) < want:
            return rows, False
        before = (page[-1].ended_at, page[-1].id)
    return rows, True


class TrackerConnection(ClientResponders, BoardResponders, AdminResponders,
                        ReportResponders):
    """One connection to the tracker, answering every role's commands (the hello says
    which role it has, and each responder checks it)."""

    features = (FEATURE_REPORTS,)


__all__ = ["TrackerService", "TrackerConnection"]
