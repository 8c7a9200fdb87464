"""The waiting requests of one device key, in the order the tracker serves them.

The order is: higher priority first; at one priority, the user with the lowest
*standing* first, ties by arrival; for one user, arrival order. A user's standing is
either

- fair share (a L{UsageLedger} is given): their decayed board-seconds of this key per
  share, so the user who used least of their share lately goes first; or
- turn-taking (no ledger): when they were last granted a device of this key, so users
  who were never granted come first and at one priority nobody waits behind another
  user's second request.

Requests are grouped by what they need of a device (their flavor and required tags),
so finding the best request a given device can serve looks only at the groups that
device satisfies, and within a group only at heap tops: a grant costs O(log n) in the
number of waiting requests. A heap entry keeps the standing its user had when it was
pushed; standings only grow between L{FairQueue.rekey} calls (a running lease adds
usage, a grant a later turn), so an entry is a lower bound, refreshed when it reaches
the top. Positions take turns in the order of standings at one moment: the first is
exact, later ones an estimate (usage grows as leases run).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import attrs

from .usage import UsageLedger


class Waiting(Protocol):
    """What the queue needs to know about a request."""

    @property
    def id(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def arrival(self) -> int: ...
    @property
    def needs(self) -> tuple[str, frozenset[str]]: ...


R = TypeVar("R", bound=Waiting)

NEVER = -1
"""The recency of a user who was never granted a device of this key."""


@attrs.define
class _Level(Generic[R]):
    """The requests of one group at one priority: a FIFO per user and a heap of users.

    The heap holds at most one live entry per user (the one in C{entry}); entries it
    superseded are dropped when they reach the top, and a live entry whose user was
    granted since is refreshed there, so the heap stays as small as the user count.
    """

    fifos: dict[str, OrderedDict[str, R]] = attrs.Factory(dict)
    heap: list[tuple[float, int, str]] = attrs.Factory(list)
    entry: dict[str, tuple[float, int]] = attrs.Factory(dict)

    def head(self, user: str) -> R:
        return next(iter(self.fifos[user].values()))

    def push_user(self, user: str, standing: float) -> None:
        key = (standing, self.head(user).arrival)
        self.entry[user] = key
        heapq.heappush(self.heap, (*key, user))

    def rebuild(self, standing: Callable[[str], float]) -> None:
        """Key every user afresh (their standings fell, or all changed scale)."""
        self.entry = {user: (standing(user), self.head(user).arrival) for user in self.fifos}
        self.heap = [(*key, user) for user, key in self.entry.items()]
        heapq.heapify(self.heap)

    def drop_user(self, user: str) -> None:
        del self.fifos[user]
        del self.entry[user]

    def best(self, standing: Callable[[str], float]) -> R | None:
        """The first request of the user who goes first."""
        heap = self.heap
        while heap:
            rec, arrival, user = heap[0]
            if self.entry.get(user) != (rec, arrival):
                heapq.heappop(heap)
                continue
            head = next(iter(self.fifos[user].values()))
            current = (standing(user), head.arrival)
            if current == (rec, arrival):
                return head
            self.entry[user] = current
            heapq.heapreplace(heap, (*current, user))
        return None


@attrs.define
class _Group(Generic[R]):
    """Requests that need the same of a device, by priority."""

    levels: dict[int, _Level[R]] = attrs.Factory(dict)
    priorities: list[int] = attrs.Factory(list)  # a max-heap, as negated priorities

    def top(self) -> _Level[R] | None:
        while self.priorities:
            level = self.levels.get(-self.priorities[0])
            if level is not None:
                return level
            heapq.heappop(self.priorities)
        return None


@attrs.define
class FairQueue(Generic[R]):
    """The waiting requests of one key. Plain data: no clock, no I/O."""

    _groups: dict[tuple[str, frozenset[str]], _Group[R]] = attrs.Factory(dict)
    _where: dict[str, R] = attrs.Factory(dict)
    recency: dict[str, int] = attrs.Factory(dict)
    """For each user, the sequence number of their last grant of this key."""
    ledger: UsageLedger | None = None
    """Fair share's usage of this key; None: users take turns by L{recency}."""

    def standing(self, user: str, now: float) -> float:
        """C{user}'s sort key at C{now}: lower goes first at one priority."""
        if self.ledger is not None:
            return self.ledger.standing(user, now)
        return float(self.recency.get(user, NEVER))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._where

    def __iter__(self) -> Iterator[R]:
        return iter(self._where.values())

    def get(self, request_id: str) -> R | None:
        return self._where.get(request_id)

    def add(self, request: R, now: float = 0.0) -> None:
        group = self._groups.get(request.needs)
        if group is None:
            group = self._groups[request.needs] = _Group()
        level = group.levels.get(request.priority)
        if level is None:
            level = group.levels[request.priority] = _Level()
            heapq.heappush(group.priorities, -request.priority)
        fifo = level.fifos.get(request.user)
        if fifo is None:
            fifo = level.fifos[request.user] = OrderedDict()
            fifo[request.id] = request
            level.push_user(request.user, self.standing(request.user, now))
        else:
            fifo[request.id] = request
        self._where[request.id] = request

    def remove(self, request_id: str, now: float = 0.0) -> R:
        """Take a request out of the queue (granted, cancelled, timed out, withdrawn)."""
        request = self._where.pop(request_id)
        group = self._groups[request.needs]
        level = group.levels[request.priority]
        fifo = level.fifos[request.user]
        was_head = next(iter(fifo)) == request_id
        del fifo[request_id]
        if not fifo:
            level.drop_user(request.user)
            if not level.fifos:
                del group.levels[request.priority]
                if not group.levels:
                    del self._groups[request.needs]
        elif was_head:
            # The user's heap entry now names a stale head; give it a fresh one so the
            # user keeps their turn (the stale one is dropped when it surfaces).
            level.push_user(request.user, self.standing(request.user, now))
        return request

    def granted(self, user: str, sequence: int) -> None:
        """Note that C{user} was just granted a device of this key (grant C{sequence})."""
        self.recency[user] = sequence

    def rekey(self, now: float, user: str | None = None) -> None:
        """Standings fell (a reset, new shares) or changed scale (a rebase): key the heaps
        of C{user}, or of everyone, afresh. O(waiting users of the key)."""
        def standing(u: str) -> float:
            return self.standing(u, now)

        for group in self._groups.values():
            for level in group.levels.values():
                if user is None:
                    level.rebuild(standing)
                elif user in level.fifos:
                    level.push_user(user, standing(user))

    def best_for(
        self, can_serve: Callable[[tuple[str, frozenset[str]]], bool], now: float = 0.0
    ) -> R | None:
        """The request to serve first at C{now} among those whose needs C{can_serve}
        accepts."""
        best: R | None = None
        best_key: tuple[int, float, int] | None = None

        def standing(user: str) -> float:
            return self.standing(user, now)

        for needs, group in self._groups.items():
            if not can_serve(needs):
                continue
            level = group.top()
            if level is None:
                continue
            head = level.best(standing)
            if head is None:
                continue
            key = (-head.priority, standing(head.user), head.arrival)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    def order(self, now: float = 0.0) -> list[R]:
        """Every waiting request in the order they would be served if every device could
        serve every request and users took turns in the order of their standings at
        C{now}: the basis of queue positions."""
        by_priority: dict[int, dict[str, list[R]]] = {}
        for request in self._where.values():
            by_priority.setdefault(request.priority, {}).setdefault(request.user, []).append(
                request
            )
        result: list[R] = []
        for priority in sorted(by_priority, reverse=True):
            users = by_priority[priority]
            for fifo in users.values():
                fifo.sort(key=_arrival)
            turn = sorted(users, key=lambda u: (self.standing(u, now), users[u][0].arrival))
            result.extend(_round_robin([users[u] for u in turn]))
        return result

    def position_of(self, request_id: str, now: float = 0.0) -> int:
        """One request's position by the rules of L{order}, without ordering the rest:
        O(users + levels) plus the length of its user's list."""
        request = self._where[request_id]
        ahead = 0
        counts: dict[str, int] = {}
        heads: dict[str, int] = {}
        mine = 0
        for group in self._groups.values():
            for priority, level in group.levels.items():
                if priority > request.priority:
                    ahead += sum(len(fifo) for fifo in level.fifos.values())
                elif priority == request.priority:
                    for user, fifo in level.fifos.items():
                        counts[user] = counts.get(user, 0) + len(fifo)
                        first = next(iter(fifo.values())).arrival
                        heads[user] = min(heads.get(user, first), first)
                        if user == request.user:
                            mine += sum(1 for r in fifo.values() if r.arrival < request.arrival)

        def turn(user: str) -> tuple[float, int]:
            return (self.standing(user, now), heads[user])

        me = turn(request.user)
        for user, count in counts.items():
            # Every round before mine takes one from each user who still has one left;
            # in my round, the users whose turn comes before mine take one more.
            ahead += min(count, mine)
            if user != request.user and count > mine and turn(user) < me:
                ahead += 1
        return ahead

    def positions(self, now: float = 0.0) -> dict[str, int]:
        """Each waiting request's position (0 is next) by the rules of L{order}."""
        return {request.id: index for index, request in enumerate(self.order(now))}


def _arrival(request: Any) -> int:
    return int(request.arrival)


def _round_robin(fifos: list[list[R]]) -> Iterable[R]:
    """Take one from each list in turn until all are empty."""
    depth = 0
    while fifos:
        still = []
        for fifo in fifos:
            yield fifo[depth]
            if len(fifo) > depth + 1:
                still.append(fifo)
        fifos = still
        depth += 1
