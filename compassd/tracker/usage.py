"""How much board time each user of one device key has had lately: fair share's ledger.

A user's usage of a key is the board-seconds their leases held, each second weighed by
``2 ** -(age / half_life)``: a lease that ended one half-life ago counts half. Running
leases count as they run. A user's *standing* is their usage divided by their share;
at one priority the user with the lowest standing goes first (Slurm's fair-share factor
``2 ** -(U / S)`` orders users the same way).

Decayed usage changes with every passing second, but the ledger keeps it in a form that
does not: usage scaled by ``2 ** ((now - epoch) / half_life)``. Between two users without
running leases the order never changes as time passes, and a user with running leases
only climbs, so the queue's heaps stay valid lower bounds and a grant stays O(log n)
(see L{compassd.tracker.fairqueue}). The epoch moves forward now and then so the scaled
numbers stay small; the queue then re-keys its heaps (L{UsageLedger.rebase}).

Plain data, time passed in; no Twisted, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

DEFAULT_SHARE = 1.0
"""The share of a user the tracker was told nothing about: everyone equal."""

_REBASE_AFTER = 40.0
"""Half-lives after which the epoch moves (2**40 keeps every number far from overflow)."""


def effective_shares(
    users: Mapping[str, tuple[float, str | None]], accounts: Mapping[str, float]
) -> dict[str, float]:
    """Each user's share of the whole, from their own share and their account's.

    C{users} maps a user to (share, account or None); C{accounts} maps an account to its
    share. A user in an account gets the account's share split among its members in
    proportion to their own shares; a user in no account stands alone with their share.
    An account named by a user but given no share has L{DEFAULT_SHARE}.
    """
    members: dict[str, float] = {}
    for share, account in users.values():
        if account is not None:
            members[account] = members.get(account, 0.0) + share
    result: dict[str, float] = {}
    for user, (share, account) in users.items():
        if account is None:
            result[user] = share
        else:
            result[user] = accounts.get(account, DEFAULT_SHARE) * share / members[account]
    return result


@attrs.define
class UsageLedger:
    """The decayed board-seconds of each user of one key, and their standing.

    C{shares} gives each user's share (L{DEFAULT_SHARE} for one not named).
    """

    half_life: float
    shares: Mapping[str, float] = attrs.Factory(dict)
    epoch: float | None = None
    _done: dict[str, float] = attrs.Factory(dict)
    """Usage of ended leases, scaled to the epoch."""
    _running: dict[str, tuple[int, float]] = attrs.Factory(dict)
    """Per user: running leases and the sum of their scaled start times."""
    _counted_from: dict[str, float] = attrs.Factory(dict)
    """Per user whose usage was set while leases of theirs ran: when it was set. Those
    leases count from then on, not from their grant (kept while any of them runs)."""

    def __attrs_post_init__(self) -> None:
        if not self.half_life > 0:
            raise ValueError(f"A half-life of {self.half_life} s is not positive.")

    @property
    def _k(self) -> float:
        return self.half_life / math.log(2)

    def _scale(self, now: float) -> float:
        if self.epoch is None:
            self.epoch = now
        return float(2.0 ** ((now - self.epoch) / self.half_life))

    def share(self, user: str) -> float:
        return self.shares.get(user, DEFAULT_SHARE)

    def users(self) -> set[str]:
        """Every user with usage on record (ended or running)."""
        return set(self._done) | set(self._running)

    def started(self, user: str, now: float) -> None:
        """A lease of C{user} began at C{now}."""
        count, starts = self._running.get(user, (0, 0.0))
        self._running[user] = (count + 1, starts + self._scale(now))

    def ended(self, user: str, granted_at: float, now: float) -> None:
        """A lease of C{user} granted at C{granted_at} ended at C{now}. If C{user}'s
        usage was set (L{set_usage}) while it ran, it counts from then, not its grant."""
        began = self._scale(max(granted_at, self._counted_from.get(user, granted_at)))
        count, starts = self._running.get(user, (0, 0.0))
        if count <= 1:
            self._running.pop(user, None)
            self._counted_from.pop(user, None)
        else:
            self._running[user] = (count - 1, starts - began)
        if count >= 1:
            self._done[user] = self._done.get(user, 0.0) + self._k * (
                self._scale(now) - began
            )

    def _scaled(self, user: str, now: float) -> float:
        done = self._done.get(user, 0.0)
        running = self._running.get(user)
        if running is None:
            return done
        count, starts = running
        return done + max(0.0, self._k * (count * self._scale(now) - starts))

    def standing(self, user: str, now: float) -> float:
        """The sort key of C{user} at C{now}: scaled usage per share (lower goes first).
        Only comparable with other standings of this ledger at the same epoch."""
        return self._scaled(user, now) / self.share(user)

    def usage(self, user: str, now: float) -> float:
        """C{user}'s decayed usage at C{now}, in board-seconds."""
        if self.epoch is None:
            return 0.0
        return self._scaled(user, now) / self._scale(now)

    def settled(self, user: str, now: float) -> float:
        """C{user}'s decayed usage at C{now} from leases that ended, running ones left
        out: what the tracker's store keeps (a running lease is kept as the lease, and
        counts again from its grant when it is brought back after a restart)."""
        if self.epoch is None:
            return 0.0
        return self._done.get(user, 0.0) / self._scale(now)

    def set_usage(self, user: str, seconds: float, now: float) -> None:
        """Make C{user}'s decayed usage C{seconds} at C{now} (a restart restores what was
        stored; a reset sets zero). Their running leases count only from C{now} on."""
        scale = self._scale(now)
        if seconds > 0:
            self._done[user] = seconds * scale
        else:
            self._done.pop(user, None)
        running = self._running.get(user)
        if running is not None:
            self._running[user] = (running[0], running[0] * scale)
            self._counted_from[user] = now

    def rebase(self, now: float) -> bool:
        """Move the epoch to C{now} if it is far behind; say whether it moved (every
        standing then changed by the same factor, so heaps keyed by them need rebuilding)."""
        if self.epoch is None or now - self.epoch < _REBASE_AFTER * self.half_life:
            return False
        factor = 1.0 / self._scale(now)
        self._done = {user: value * factor for user, value in self._done.items()}
        self._running = {
            user: (count, starts * factor) for user, (count, starts) in self._running.items()
        }
        self.epoch = now
        return True
