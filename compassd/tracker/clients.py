"""What compass-tracker answers its clients: requests, cancels, releases and listings.

Each responder checks its arguments and the caller's role, asks the scheduler, and hands
the effects to the service; none decides anything itself.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred

from ..protocol import (
    BadRequest,
    NoSuchKey,
    NotAuthorized,
    NotYourLease,
)
from ..protocol import client_tracker as ct
from ..protocol.limits import MAX_PAGE, check_name, check_seconds, check_tags
from . import explain
from .access import DEFAULT_PRIORITY, Identity
from .connection import TrackerPeer, log
from .listing import device_row, queue_row, waiting_row


class ClientResponders(TrackerPeer):
    """The commands a client sends (L{compassd.protocol.client_tracker})."""

    @ct.Request.responder
    def request(
        self,
        key: str,
        priority: int | None = None,
        lease: float | None = None,
        wait: float | None = None,
        tags: list[str] | None = None,
        wait_for_board: bool | None = None,
    ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """Queue a request; the answer goes out once the store has it (so a client told
        it waits still waits after the tracker is killed and started again)."""
        identity = self._require("client")
        check_name("device key", key)
        if not identity.may_request(key):
            raise NotAuthorized(f"User {identity.user} may not request devices of {key}.")
        if priority is not None and not -1_000_000 <= priority <= 1_000_000:
            raise BadRequest(f"Priority {priority} is out of range (-1000000 to 1000000).")
        if priority is not None:
            identity.check_priority(priority)
        # With a store, the client may take the request back after a restart of the
        # tracker: it gets a secret, the store keeps its hash.
        secret = secrets.token_urlsafe(24) if self.tracker.journal is not None else None
        request, effects = self._scheduler.request(
            self._now,
            self,
            identity.user,
            key,
            priority=DEFAULT_PRIORITY if priority is None else priority,
            tags=check_tags("request", tags or ()),
            lease=check_seconds("lease", lease),
            wait=check_seconds("wait", wait),
            secret=_hash(secret) if secret else "",
            wait_for_board=bool(wait_for_board),
        )
        self.tracker.journal_request(request)
        position = 0
        why = explain.NEXT
        if request.id in self._scheduler.requests:
            position = self._scheduler.position(request.id)
            if position:
                why = self._scheduler.reasons(key, self._now).get(request.id, "")
            self.tracker._sent_positions[request.id] = position
            log.info(
                "{request} of {user} for {key} (priority {priority}) waits at position"
                " {place} (1 is next)",
                request=request.id,
                user=identity.user,
                key=key,
                priority=request.priority,
                place=position + 1,
            )
        self._apply(effects)
        answer = {
            "request": request.id,
            "position": position,
            "devices": self._scheduler.online_count(key),
            "why": why,
            "secret": secret,
        }
        if request.id not in self._scheduler.requests:
            return answer  # granted at once: the Granted notice is the news
        return self._once_kept(answer)

    @ct.Reattach.responder
    def reattach(self, id: str, secret: str) -> dict[str, Any]:
        identity = self._require("client")
        check_name("request or lease id", id)
        taken, effects = self._scheduler.reattach(
            self._now, self, id, identity.user, _hash(secret))
        self._apply(effects)
        log.info("{ident} re-attached by {user} after the tracker restarted", ident=id,
                 user=identity.user)
        if id in self._scheduler.requests:
            position = self._scheduler.position(id)
            self.tracker._sent_positions[id] = position
            return {"state": "waiting", "position": position}
        lease = self._scheduler.leases.get(id)
        if lease is None:  # granted while answering: the Granted notice went first
            return {"state": "granted"}
        return {"state": "leased", "expires_in": max(0.0, lease.deadline - self._now)}

    @ct.Cancel.responder
    def cancel(self, request: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        identity = self._require("client")
        self._only_own(identity, "Request", request, self._scheduler.requests)
        self._apply(
            self._scheduler.cancel(self._now, request, identity.user, admin=identity.may("admin"))
        )
        return self._once_kept({})

    @ct.Release.responder
    def release(self, lease: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        identity = self._require("client")
        self._only_own(identity, "Lease", lease, self._scheduler.leases)
        self._apply(self._scheduler.release(self._now, lease, identity.user))
        return self._once_kept({})

    def _only_own(self, identity: Identity, what: str, ident: str,
                  existing: Mapping[str, object]) -> None:
        """A caller without a token is nobody but its connection: it may act only on
        the requests and leases this connection made (a token holder also on those it
        made on other connections, which the scheduler checks by user)."""
        if identity.anonymous and ident in existing \
                and ident not in self._scheduler.owned_by(self):
            raise NotYourLease(
                f"{what} {ident} was not made on this connection; a caller without a token"
                " may act only on its own connection's requests and leases.")

    @ct.ListDevices.responder
    def list_devices(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        limit = _page_limit(limit)
        names = sorted(n for n in self._scheduler.devices if after is None or n > after)
        now = self._now
        page = [device_row(self._scheduler.devices[n], now) for n in names[:limit]]
        return {"devices": page, "more": len(names) > limit}

    @ct.ListQueues.responder
    def list_queues(self, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        limit = _page_limit(limit)
        keys = [k for k in self._scheduler.keys() if after is None or k > after]
        page = [queue_row(self._scheduler, k) for k in keys[:limit]]
        return {"queues": page, "more": len(keys) > limit}

    @ct.ListWaiting.responder
    def list_waiting(
        self, key: str, start: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        limit = _page_limit(limit)
        start = max(0, start or 0)
        if key not in self._scheduler.keys():
            raise NoSuchKey(f"No device or request of key {key} is known to this tracker.")
        now = self._now
        order = self._scheduler.waiting(key, now)
        why = self._scheduler.reasons(key, now, order)
        page = [
            waiting_row(r, start + i, now, why.get(r.id, ""))
            for i, r in enumerate(order[start : start + limit])
        ]
        return {"waiting": page, "more": len(order) > start + limit}


def _page_limit(limit: int | None) -> int:
    if limit is None:
        return MAX_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"A page holds 1 to {MAX_PAGE} entries, not {limit}.")
    return limit


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
