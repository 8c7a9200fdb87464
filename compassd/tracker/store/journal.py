"""The tracker's journal: changes to the store, batched per reactor turn, written in a
thread of their own.

The shell calls L{Journal.put_device}, L{Journal.add_history} and friends as the
scheduling core's effects come out; they only record the change in memory. At the end of
the reactor turn one L{Batch} goes to the store's thread and is written in one
transaction (group commit); while it is being written, the next turns' changes gather
into the next batch, so under load batches grow and the reactor never waits for a disk.

When a write fails, the tracker's memory stays authoritative: the journal logs one
sentence saying so, keeps what it could not write, retries with backoff (opening the
store again), and when the store answers it writes the tracker's whole live state (from
C{snapshot}) plus the history rows it kept, then says the store caught up.

An answer that tells a client something a restart must keep (its request is queued, its
lease is released, a device is drained) waits for L{Journal.written}: the batch holding
the change is committed. Many answers wait on one commit, and none waits on a store that
is failing or has not finished a write within C{answer_wait} seconds: then the answer goes
out at once and the tracker goes on from memory, as it does while the store is down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .records import (
    Batch,
    DeviceRecord,
    HistoryRow,
    IStore,
    LeaseRecord,
    LiveState,
    RequestRecord,
    StoreError,
)

log = Logger(namespace="compass.tracker.store")

T = TypeVar("T")

DAY = 86400.0
DEFAULT_RETENTION = 90 * DAY


@attrs.define(eq=False)
class Journal:
    """Writes the tracker's changes to C{store}, never blocking the reactor.

    C{snapshot} returns the tracker's whole live state (used to catch up after a failed
    write). C{retention}: history rows older than this many seconds are pruned every
    C{prune_every} seconds (None keeps them forever). C{run} runs a blocking call off the
    reactor thread and returns a Deferred of its result; by default the journal's own
    one-thread pool, so writes keep their order and the store's connection its thread.
    """

    store: IStore
    reactor: Any
    snapshot: Callable[[], LiveState]
    retention: float | None = DEFAULT_RETENTION
    prune_every: float = 3600.0
    retry_initial: float = 1.0
    retry_max: float = 30.0
    max_kept_history: int = 1_000_000
    run: Callable[[Callable[[], Any]], Deferred[Any]] | None = None
    answer_wait: float = 2.0
    """Seconds an answer waits for the write of what it tells (L{written}) before it goes
    out anyway."""

    _pending: Batch = attrs.Factory(Batch)
    _in_flight: Batch | None = None
    _writing: bool = False
    _call: IDelayedCall | None = None
    _prune_call: IDelayedCall | None = None
    _retry_delay: float = 0.0
    _problem: str | None = None
    _catch_up: bool = False
    _is_open: bool = True
    _idle_waiters: list[Deferred[None]] = attrs.Factory(list)
    _pool: ThreadPool | None = None
    _report_pool: ThreadPool | None = None
    _reader: Any = None
    _dropped_history: int = 0
    _stopping: bool = False
    _recorded: int = 0
    """Changes recorded so far (a running count)."""
    _in_write: int = 0
    """The count of changes recorded when the batch being written was taken."""
    _committed: int = 0
    """The count of changes recorded when the last batch written was taken."""
    _answers: deque[tuple[int, float, Deferred[None]]] = attrs.Factory(deque)
    """What L{written} handed out, in order: the changes each waits for, when it stops
    waiting, and its Deferred."""
    _overdue_call: IDelayedCall | None = None
    _stalled_since: float | None = None
    writes: int = 0
    """Batches written (for tests and the bench)."""

    # --- what the shell records ---------------------------------------------------------

    def put_device(self, record: DeviceRecord) -> None:
        self._pending.devices[record.name] = record
        self._soon()

    def drop_device(self, name: str) -> None:
        self._pending.devices[name] = None
        self._soon()

    def put_lease(self, record: LeaseRecord) -> None:
        self._pending.leases[record.id] = record
        self._soon()

    def drop_lease(self, lease_id: str) -> None:
        self._pending.leases[lease_id] = None
        self._soon()

    def put_request(self, record: RequestRecord) -> None:
        self._pending.requests[record.id] = record
        self._soon()

    def drop_request(self, request_id: str) -> None:
        self._pending.requests[request_id] = None
        self._soon()

    def add_history(self, row: HistoryRow) -> None:
        history = self._pending.history
        history.append(row)
        if len(history) > self.max_kept_history:
            # Only while the store is down for very long: keep the newest rows.
            del history[: len(history) - self.max_kept_history]
            self._dropped_history += 1
        self._soon()

    def set_meta(self, name: str, value: str) -> None:
        self._pending.meta[name] = value
        self._soon()

    # --- state ------------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        """The sentence saying why the store is behind, or None while it is up to date."""
        return self._problem

    def unwritten_history(self) -> list[HistoryRow]:
        """The history rows recorded but not yet known to be written: the batch being
        written and those waiting (a report adds them to what it reads from the store)."""
        rows = list(self._in_flight.history) if self._in_flight is not None else []
        return rows + self._pending.history

    def written(self) -> Deferred[None] | None:
        """A Deferred that fires once every change recorded so far is committed, so that
        an answer saying it is true survives the tracker being killed; None when there
        is nothing to wait for or no point waiting (nothing unwritten, the store failing
        or stuck in a write: the tracker goes on from memory). The Deferred also fires,
        never fails, when a write fails or has taken C{answer_wait} seconds; many callers
        wait on one commit."""
        if (self._recorded == self._committed or self._problem is not None
                or self._stalled_since is not None or self._stopping):
            return None
        waiter: Deferred[None] = Deferred()
        until = self.reactor.seconds() + self.answer_wait
        self._answers.append((self._recorded, until, waiter))
        if self._overdue_call is None:
            self._overdue_call = self.reactor.callLater(self.answer_wait, self._overdue)
        return waiter

    def idle(self) -> Deferred[None]:
        """A Deferred that fires once every change recorded so far is written (it waits
        through failures and retries)."""
        if not self._writing and not len(self._pending) and not self._catch_up:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    # --- service ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the history pruning (the store's thread starts with the first write)."""
        if self.retention is not None:
            self._prune_call = self.reactor.callLater(0, self._prune)

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Write what is pending (waiting at most C{timeout} seconds), then stop the
        thread and close the store."""
        self._stopping = True
        if self._prune_call is not None and self._prune_call.active():
            self._prune_call.cancel()
        self._prune_call = None
        if self._call is not None and self._call.active() and not self._writing:
            self._call.cancel()
            self._call = None
            self._flush()
        done: Deferred[None] = self.idle()
        timer = self.reactor.callLater(timeout, done.cancel)

        def finish(result: object) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                log.warn("{store}: stopping with changes not written: {why}",
                         store=self.store.description, why=self._problem or "timed out")
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
            reports, self._report_pool = self._report_pool, None
            if reports is not None:
                reports.callInThread(self._reader.close)
                reports.stop()
            if self._overdue_call is not None and self._overdue_call.active():
                self._overdue_call.cancel()
            self._overdue_call = None
            self._answer(None)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.callInThread(self.store.close)
                pool.stop()
            else:
                self.store.close()

        done.addBoth(finish)
        return done

    def read(self, call: Callable[[], T]) -> Deferred[T]:
        """Run C{call} (a read of the store, such as C{store.history}) in the store's
        thread, where its connection lives; the reactor never waits for it. Changes
        recorded but not yet written are not in what it reads."""
        return self._in_thread(call)

    def report(self, call: Callable[[Any], T]) -> Deferred[T]:
        """Run C{call(store)}, a long read such as a usage report, on a second connection
        to the store in a thread of its own, so that the journal's writes (and the
        answers that wait for them) never wait behind it. A store without a second
        connection, or a journal given its own C{run}, reads in the store's thread."""
        make = getattr(self.store, "reader", None)
        if self.run is not None or make is None:
            return self.read(lambda: call(self.store))
        if self._report_pool is None:
            self._reader = make()
            self._report_pool = ThreadPool(minthreads=1, maxthreads=1,
                                           name="compass-store-reports")
            self._report_pool.start()
        reader = self._reader

        def read() -> T:
            if reader._conn is None:
                reader.open_for_reading()
            try:
                return call(reader)
            except StoreError:
                reader.close()  # opened again by the next report
                raise

        return deferToThreadPool(self.reactor, self._report_pool, read)

    # --- writing ----------------------------------------------------------------------

    def _in_thread(self, call: Callable[[], T]) -> Deferred[T]:
        if self.run is not None:
            return self.run(call)
        if self._pool is None:  # a change recorded before the service started
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="compass-store")
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, call)

    def _soon(self) -> None:
        self._recorded += 1
        if self._call is None and not self._writing:
            self._call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        if self._writing or (not len(self._pending) and not self._catch_up):
            self._wake_idle()
            return
        batch, self._pending = self._pending, Batch()
        self._in_write = self._recorded
        if self._catch_up:
            batch.replace = self.snapshot()
        self._writing = True
        self._in_flight = batch
        d = self._in_thread(lambda: self._write(batch))
        d.addCallbacks(self._written, self._failed, errbackArgs=(batch,))

    def _write(self, batch: Batch) -> int:
        """In the store's thread: (re)open the store if a failure closed it, then write."""
        try:
            if not self._is_open:
                self.store.open()
                self._is_open = True
            self.store.write(batch)
        except BaseException:
            self.store.close()
            self._is_open = False
            raise
        return len(batch)

    def _written(self, count: int) -> None:
        self._writing = False
        self._in_flight = None
        self.writes += 1
        self._committed = self._in_write
        if self._stalled_since is not None:
            log.info("{store}: a write that took {seconds:.1f} s is done; answers wait for"
                     " the store again", store=self.store.description,
                     seconds=self.reactor.seconds() - self._stalled_since)
            self._stalled_since = None
        if self._problem is not None:
            log.info("{store}: written again; the store caught up with the tracker's state",
                     store=self.store.description)
            if self._dropped_history:
                log.warn("{store}: {count} history rows were dropped while it could not"
                         " be written", store=self.store.description,
                         count=self._dropped_history)
        self._problem = None
        self._catch_up = False
        self._retry_delay = 0.0
        self._dropped_history = 0
        if len(self._pending):
            self._call = self.reactor.callLater(0, self._flush)
        else:
            self._wake_idle()
        self._answer(self._committed)

    def _failed(self, failure: Failure, batch: Batch) -> None:
        self._writing = False
        self._in_flight = None
        if failure.check(StoreError):
            problem = str(failure.value)
        else:
            log.failure("writing to {store} failed", failure, store=self.store.description)
            problem = (f"The tracker's store {self.store.description} could not save the"
                       f" tracker's state: {failure.getErrorMessage()}.")
        if problem != self._problem:
            log.error("{problem} The tracker keeps scheduling from memory and will bring"
                      " the store up to date when it can.", problem=problem)
        self._problem = problem
        self._catch_up = True
        batch.merge(self._pending)
        batch.replace = None
        self._pending = batch
        self._retry_delay = min(self.retry_max, max(self.retry_initial, self._retry_delay * 2))
        self._call = self.reactor.callLater(self._retry_delay, self._flush)
        self._stalled_since = None
        self._answer(None)  # the problem is logged; the answers go out from memory

    def _wake_idle(self) -> None:
        if self._writing or len(self._pending) or self._catch_up:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _answer(self, upto: int | None) -> None:
        """Let the answers waiting for changes up to C{upto} (None: all) go out."""
        answers = self._answers
        ready: list[Deferred[None]] = []
        while answers and (upto is None or answers[0][0] <= upto):
            ready.append(answers.popleft()[2])
        for waiter in ready:
            waiter.callback(None)

    def _overdue(self) -> None:
        """The oldest answers have waited C{answer_wait} seconds: the store is stuck in
        a write. Say so once, and answer everyone from memory until the write is done."""
        self._overdue_call = None
        answers = self._answers
        if not answers:
            return
        now = self.reactor.seconds()
        if answers[0][1] > now:
            self._overdue_call = self.reactor.callLater(answers[0][1] - now, self._overdue)
            return
        if self._stalled_since is None:
            self._stalled_since = now - self.answer_wait
            log.error(
                "The tracker's store {store} has not finished a write in {seconds:g} s;"
                " the tracker answers without waiting for it and keeps scheduling from"
                " memory (what it has not written is lost if the tracker stops before the"
                " store catches up).", store=self.store.description,
                seconds=self.answer_wait)
        self._answer(None)

    # --- retention --------------------------------------------------------------------

    def _prune(self) -> None:
        self._prune_call = None
        if self.retention is None or self._stopping:
            return
        before = self.reactor.seconds() - self.retention
        d = self._in_thread(lambda: self._prune_in_thread(before))

        def done(count: int | None) -> None:
            if count:
                log.info("{store}: pruned {count} history rows older than {days:g} days",
                         store=self.store.description, count=count,
                         days=(self.retention or 0) / DAY)

        def failed(failure: Failure) -> None:
            log.warn("{store}: pruning old history failed: {why}",
                     store=self.store.description, why=failure.getErrorMessage())

        d.addCallbacks(done, failed)
        if not self._stopping:
            self._prune_call = self.reactor.callLater(self.prune_every, self._prune)

    def _prune_in_thread(self, before: float) -> int | None:
        if not self._is_open:
            return None
        return self.store.prune(before)
