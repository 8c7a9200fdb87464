"""What compass-tracker answers board servers: devices register, beat, report health,
redeem tickets and say when a session ended.

A board's name for a device is checked against the connection that registered it, so a
board can only speak for its own devices.
"""

from __future__ import annotations

from typing import Any

from ..protocol import (
    BadRequest,
    DeviceConflict,
    NotAuthorized,
)
from ..protocol import board_tracker as bt
from ..protocol.limits import check_name, check_seconds, check_tags, check_text
from .connection import TrackerPeer, log
from .reconcile import SessionReport

MAX_SESSIONS = 256
"""Sessions one heartbeat may list (one per device of the board)."""


def _report(lease: str | None, holder: str | None, expires_in: float | None
            ) -> SessionReport | None:
    """A board's report of a session, checked; None for no session."""
    if lease is None:
        return None
    check_name("lease id", lease)
    check_text("lease holder", holder or "")
    if expires_in is None or not 0 <= expires_in < 1e9:
        raise BadRequest(f"The seconds left of lease {lease} must be a number from 0, not"
                         f" {expires_in!r}.")
    return SessionReport(lease, holder or "", float(expires_in))


def _info_list(info: list[str] | None) -> list[str]:
    info = info or []
    if len(info) > 16:
        raise BadRequest(f"The device info has {len(info)} fields; the limit is 16.")
    for field in info:
        check_text("device info field", field)
        if "=" not in field:
            raise BadRequest(f"The device info field {field!r} is not name=value.")
    return info


class BoardResponders(TrackerPeer):
    """The commands a board server sends (L{compassd.protocol.board_tracker})."""

    @bt.Register.responder
    def register(
        self,
        device: str,
        key: str,
        address: str,
        tags: list[str] | None = None,
        info: list[str] | None = None,
        max_lease: float | None = None,
        healthy: bool | None = None,
        flavor: str | None = None,
        reports: bool | None = None,
        lease: str | None = None,
        holder: str | None = None,
        lease_expires_in: float | None = None,
    ) -> dict[str, Any]:
        identity = self._require("board")
        serving = _report(lease, holder, lease_expires_in)
        check_name("device name", device)
        check_name("device key", key)
        check_text("address", address)
        if flavor not in (None, "compassd", "tvm"):
            raise BadRequest(f"Unknown device flavor {flavor!r}; say compassd or tvm.")
        if not identity.may_request(key):
            raise NotAuthorized(
                f"{identity.user} may register devices only in the pools"
                f" {', '.join(identity.keys)} (its token's keys=), not {device} in {key!r};"
                " use that board's own token, or ask the administrator to widen keys=.")
        owner = self.tracker.device_owners.get(device)
        if owner is not None and owner != identity.user:
            raise DeviceConflict(
                f"The device name {device} belongs to {owner}, who registered it first;"
                f" {identity.user} may not take it over. Give this board another --device"
                " name, or use the token that registered it.")
        existing = self._scheduler.devices.get(device)
        takeover = (
            existing is not None
            and isinstance(existing.owner, TrackerPeer)
            and existing.owner.identity is not None
            and existing.owner.identity.user == identity.user
        )
        effects = self._scheduler.register(
            self._now,
            self,
            device,
            key,
            address,
            tags=check_tags("device", tags or ()),
            info=_info_list(info),
            max_lease=check_seconds("max_lease", max_lease),
            healthy=True if healthy is None else healthy,
            flavor=flavor or "compassd",
            takeover=takeover,
            reports=bool(reports),
            serving=serving,
        )
        if takeover and existing is not None and existing.owner is not self:
            log.info("{device} re-registered by a new connection of {user}; the old one is"
                     " dropped", device=device, user=identity.user)
            old = existing.owner
            assert isinstance(old, TrackerPeer)
            old.drop()
        self._apply(effects)
        self.tracker.device_owners.setdefault(device, identity.user)
        log.info(
            "{user} registered {device} in {key} at {address}", user=identity.user,
            device=device, key=key, address=address,
        )
        self.tracker.record("register", user=identity.user, device=device, key=key,
                            address=address, peer=self.describe())
        return {"heartbeat": self.tracker.heartbeat_interval}

    @bt.Unregister.responder
    def unregister(self, device: str) -> dict[str, Any]:
        self._require("board")
        self._apply(self._scheduler.unregister(self._now, self, device))
        return {}

    @bt.Heartbeat.responder
    def heartbeat(self, sessions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if sessions is None or self.role != "board":
            return {}
        if len(sessions) > MAX_SESSIONS:
            raise BadRequest(f"A heartbeat lists {len(sessions)} sessions; the limit is"
                             f" {MAX_SESSIONS}.")
        served = {row["device"]: _report(row["lease"], row["holder"], row["expires_in"])
                  for row in sessions}
        effects = []
        for name in self._scheduler.devices_of(self):
            effects += self._scheduler.reconcile(self._now, self, name, served.get(name))
        self._apply(effects)
        return {}

    @bt.Health.responder
    def health(self, device: str, healthy: bool, detail: str | None = None) -> dict[str, Any]:
        self._require("board")
        self._apply(
            self._scheduler.set_health(
                self._now, self, device, healthy, check_text("detail", detail or "")
            )
        )
        return {}

    @bt.Redeem.responder
    def redeem(self, device: str, ticket: str) -> dict[str, Any]:
        self._require("board")
        try:
            lease = self._scheduler.redeem(self._now, self, device, ticket)
        except Exception as e:
            log.warn("{device} refused a ticket: {why}", device=device, why=str(e))
            raise
        self.tracker.journal_lease(lease)
        log.info("{lease} on {device} claimed by {user}", lease=lease.id, device=device,
                 user=lease.user)
        self.tracker.record("claim", user=lease.user, device=device, lease=lease.id,
                            request=lease.request.id)
        return {
            "lease": lease.id,
            "user": lease.user,
            "expires_in": lease.deadline - self._now,
        }

    @bt.CheckTicket.responder
    def check_ticket(self, device: str, ticket: str) -> dict[str, Any]:
        self._require("board")
        try:
            lease = self._scheduler.check_ticket(self, device, ticket)
        except Exception as e:
            log.warn("a proxy asked about a ticket for {device}; refused: {why}",
                     device=device, why=str(e))
            raise
        return {
            "lease": lease.id,
            "user": lease.user,
            "expires_in": lease.deadline - self._now,
        }

    @bt.SessionEnded.responder
    def session_ended(self, device: str, lease: str, detail: str | None = None) -> dict[str, Any]:
        self._require("board")
        self._apply(
            self._scheduler.session_ended(
                self._now, self, device, lease, check_text("detail", detail or "")
            )
        )
        return {}
