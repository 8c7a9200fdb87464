"""What the tracker's store keeps, and the one small interface every store implements.

The records are plain values (no reactor, no connections): the shell makes them from the
scheduling core's objects and effects, the store writes them, and at start the shell
rebuilds the core from a L{Snapshot}. Times are seconds since the epoch (the reactor's
clock), so history rows mean the same thing after a restart.

Secrets never reach the store: a lease's ticket and a request's re-attach secret are kept
as their SHA-256 (L{secret_hash}); the board and the client present the secret, the
tracker compares hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import attrs
from zope.interface import Interface


def secret_hash(secret: str) -> str:
    """The SHA-256 of a ticket or re-attach secret, in hex: what the store keeps."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def join_tags(tags: Iterable[str]) -> str:
    """Tags as the store keeps them: sorted, comma-separated (a tag has no comma)."""
    return ",".join(sorted(tags))


def split_tags(text: str) -> frozenset[str]:
    return frozenset(t for t in text.split(",") if t)


@attrs.frozen
class DeviceRecord:
    """A device and what an admin (or its health) set on it; survives restarts so a
    drained or quarantined board stays so."""

    name: str
    key: str
    address: str
    flavor: str
    tags: frozenset[str] = frozenset()
    max_lease: float | None = None
    drained: bool = False
    quarantined: bool = False
    quarantine_reason: str = ""
    registered_at: float = 0.0


@attrs.frozen
class RequestRecord:
    """A waiting request: enough to put it back in its queue at its place."""

    id: str
    key: str
    user: str
    priority: int
    tags: frozenset[str]
    flavor: str
    arrival: int
    """Its place in arrival order (the core's counter): ties break by it."""
    enqueued_at: float
    lease_wanted: float | None = None
    wait: float | None = None
    deadline: float | None = None
    secret_hash: str = ""
    """SHA-256 of the secret the client re-attaches with after a restart."""


@attrs.frozen
class LeaseRecord:
    """An active lease and the request it granted (its history row needs both)."""

    id: str
    device: str
    key: str
    user: str
    request_id: str
    priority: int
    tags: frozenset[str]
    flavor: str
    requested_at: float
    granted_at: float
    deadline: float
    ticket_hash: str
    redeemed: bool = False
    secret_hash: str = ""


@attrs.frozen
class HistoryRow:
    """One ended lease (C{granted_at} set) or one request that ended without a grant.

    C{outcome} is how it ended (the core's L{LeaseOutcome} or L{RequestOutcome} value);
    C{detail} the sentence its owner was told. Waited is C{granted_at - requested_at}
    (or C{ended_at - requested_at} without a grant); held is C{ended_at - granted_at}.
    """

    id: str
    user: str
    key: str
    requested_at: float
    ended_at: float
    outcome: str
    granted_at: float | None = None
    device: str | None = None
    request_id: str | None = None
    priority: int = 1
    detail: str = ""

    @property
    def kind(self) -> str:
        return "lease" if self.granted_at is not None else "request"

    @property
    def waited(self) -> float:
        end = self.granted_at if self.granted_at is not None else self.ended_at
        return end - self.requested_at

    @property
    def held(self) -> float:
        return 0.0 if self.granted_at is None else self.ended_at - self.granted_at


@attrs.frozen
class LiveState:
    """Everything live at one moment: what a store holds besides history."""

    devices: tuple[DeviceRecord, ...] = ()
    leases: tuple[LeaseRecord, ...] = ()
    requests: tuple[RequestRecord, ...] = ()


@attrs.frozen
class Snapshot:
    """What L{IStore.load} returns at start."""

    live: LiveState
    epoch: int
    """How many times a tracker has started on this store, this start included: ids
    made with it never repeat across restarts."""
    meta: dict[str, str] = attrs.Factory(dict)


@attrs.define
class Batch:
    """Changes written in one transaction. C{devices}, C{leases}, C{requests}: by id, the
    record to keep or None to delete; C{history}: rows to add (an id already there is
    skipped, so a batch retried after an unknown commit adds nothing twice).
    C{replace}: when set, every live row is replaced by it first (a store catching up
    after an outage writes the tracker's whole memory, not what it missed)."""

    devices: dict[str, DeviceRecord | None] = attrs.Factory(dict)
    leases: dict[str, LeaseRecord | None] = attrs.Factory(dict)
    requests: dict[str, RequestRecord | None] = attrs.Factory(dict)
    history: list[HistoryRow] = attrs.Factory(list)
    meta: dict[str, str] = attrs.Factory(dict)
    replace: LiveState | None = None

    def __len__(self) -> int:
        return (
            len(self.devices) + len(self.leases) + len(self.requests) + len(self.history)
            + len(self.meta) + (1 if self.replace is not None else 0)
        )

    def merge(self, later: Batch) -> None:
        """Fold C{later}'s changes in after this one's (the later record wins)."""
        if later.replace is not None:
            self.replace = later.replace
            self.devices.clear()
            self.leases.clear()
            self.requests.clear()
        self.devices.update(later.devices)
        self.leases.update(later.leases)
        self.requests.update(later.requests)
        self.history.extend(later.history)
        self.meta.update(later.meta)


@attrs.frozen
class HistoryQuery:
    """A bounded page of history, newest first. C{before}: the (ended_at, id) of the last
    row of the previous page."""

    user: str | None = None
    device: str | None = None
    key: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
    limit: int = 100


GROUPINGS = ("user", "account", "key", "device")
"""What a usage report's groups may stand for."""


@attrs.frozen
class UsageQuery:
    """The numbers of a usage report of the window [C{since}, C{until}), grouped C{by}
    user, account, key or device; only C{user}'s and C{key}'s rows when given.

    The rows looked at are those that ended at or after C{since}: a lease counts the
    part of [granted_at, ended_at] inside the window and its wait if it was granted
    there; a request that ended unserved counts if it ended inside the window; a row
    for C{by="device"} needs a device. C{accounts}: (user, account) pairs, for
    C{by="account"} (a user in none is an account of their own name). C{extra}: rows
    the store may not have (leases held now, as rows that end at C{until}; rows not
    yet written); one whose id the store has counts once."""

    since: float
    until: float
    by: str = "user"
    user: str | None = None
    key: str | None = None
    accounts: tuple[tuple[str, str], ...] = ()
    extra: tuple[HistoryRow, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.by not in GROUPINGS:
            raise ValueError(f"A usage report is by {', '.join(GROUPINGS)}; not {self.by!r}.")


@attrs.frozen
class UsageGroup:
    """One group of a usage report (L{UsageQuery}): C{name} is the user, account, key or
    device, C{key} the device key. C{seconds}: board-seconds inside the window;
    C{waits}: grants made in it, whose waits have the nearest-rank median C{wait_p50}
    and 95th percentile C{wait_p95} (None without grants)."""

    key: str
    name: str
    leases: int
    seconds: float
    unserved: int
    waits: int = 0
    wait_p50: float | None = None
    wait_p95: float | None = None


class StoreError(Exception):
    """The store cannot be opened, read or written; the message is one sentence that
    says which store, what went wrong and what happens next."""


class IStore(Interface):
    """A durable copy of the tracker's state. Every method blocks (it does I/O): the
    shell calls them in the store's own thread (L{compassd.tracker.store.journal}),
    except L{open} and L{load} at start, before the tracker serves anyone.

    Every method raises L{StoreError} with a sentence when the database fails.
    """

    description: str
    """Where the store is, for messages (a path or a URL without its password)."""

    def open() -> None:
        """Connect, create or migrate the schema to the newest version, and check it."""

    def load() -> Snapshot:
        """Read the live state, count this start (the epoch) and return both."""

    def write(batch: Batch) -> None:
        """Apply C{batch} in one transaction."""

    def prune(before: float) -> int:
        """Delete history rows that ended before C{before}; return how many."""

    def history(query: HistoryQuery) -> list[HistoryRow]:
        """A page of history rows, newest first."""

    def usage(query: UsageQuery) -> list[UsageGroup]:
        """The groups of a usage report, added up by the database (every row of the
        window is read once, none comes back), sorted by key then name."""

    def close() -> None:
        """Close the connection (the store may be opened again)."""
