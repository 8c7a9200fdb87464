"""What compass-tracker does for an admin: drain and undrain devices, end leases.

Every command here needs the admin role; each is logged and audited with who did it, and
answered once the store has kept it (a drained device stays drained after a restart).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ..protocol import client_tracker as ct
from ..protocol.limits import check_text
from .connection import TrackerPeer, log


class AdminResponders(TrackerPeer):
    """The commands only an admin may send (L{compassd.protocol.client_tracker})."""

    @ct.Drain.responder
    def drain(self, device: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        return self._set_draining(device, True)

    @ct.Undrain.responder
    def undrain(self, device: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        return self._set_draining(device, False)

    def _set_draining(self, device: str, draining: bool
                      ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        identity = self._require("admin")
        event = "drain" if draining else "undrain"
        log.info("admin {user} {event}s {device}", user=identity.user, event=event,
                 device=device)
        self.tracker.record(event, user=identity.user, device=device)
        self._apply(self._scheduler.set_draining(self._now, device, draining))
        return self._once_kept({})

    @ct.Kick.responder
    def kick(self, lease: str, reason: str | None = None
             ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        identity = self._require("admin")
        self._apply(
            self._scheduler.kick(
                self._now, lease, identity.user, check_text("reason", reason or "")
            )
        )
        return self._once_kept({})
