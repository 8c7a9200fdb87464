"""The hello exchange as a daemon answers it: one responder for the tracker, the board
server and the proxy.

Every compassd connection opens with L{Hello}. Each daemon makes the same checks, in the
same order, with the same sentences: a second hello is refused, the highest protocol
version both sides speak is chosen (or the hello fails with L{UnsupportedVersion}), a
role the daemon does not serve is refused, and the caller's software name is bounded.
What differs is left to the daemon as parameters: which roles it serves, what it says
to a role it does not serve, and who the caller is (L{HelloResponder.welcome}: the
tracker checks the token and starts the connection's idle timer, a board takes any
client, the proxy says a board's hello again to the tracker).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from twisted.internet.defer import Deferred

from .. import __version__
from ..errors import BadRequest, CompassError, UnsupportedVersion
from ._command import PROTOCOL_VERSION, SUPPORTED_VERSIONS, Hello, choose_version
from .limits import check_text
from .peer import CompassPeer


def software_name(daemon: str) -> str:
    """What a daemon calls itself in its answer to a hello."""
    return f"compassd {__version__} {daemon} (protocol {PROTOCOL_VERSION})"


@attrs.frozen
class Greeting:
    """A hello that passed the checks every daemon makes; the daemon decides the rest."""

    version: int
    """The protocol version chosen: the highest both sides speak."""
    versions: tuple[int, ...]
    role: str
    token: str | None
    user: str | None
    software: str | None
    """The caller's software, as it said it (None if it did not)."""

    @property
    def software_text(self) -> str:
        """The caller's software, for log lines."""
        return self.software or "unknown software"

    def arguments(self) -> dict[str, Any]:
        """The hello as the caller sent it, to say again to another daemon."""
        return {"versions": list(self.versions), "role": self.role, "token": self.token,
                "user": self.user, "software": self.software}


class HelloResponder(CompassPeer):
    """A daemon's end of a connection: it answers L{Hello} with the checks every daemon
    makes, then calls L{welcome}, which each daemon writes.

    Subclasses set C{daemon} (how refusals name it), C{software} (see L{software_name})
    and C{roles}, and may override L{said_hello} and L{wrong_role}.
    """

    daemon: ClassVar[str] = "daemon"
    """What this daemon is, in refusals: "This tracker speaks protocol versions ..."."""

    software: ClassVar[str] = software_name("daemon")
    """The C{software} of the answer."""

    roles: ClassVar[frozenset[str] | None] = None
    """The roles this daemon serves; None leaves the role to L{welcome}."""

    features: ClassVar[tuple[str, ...]] = ()
    """What this daemon answers beyond the first protocol (the answer's C{features})."""

    def said_hello(self) -> bool:
        """Whether this connection already said hello (a second one is refused)."""
        return self.greeted

    def wrong_role(self, role: str) -> CompassError:
        """The refusal of a hello in a role this daemon does not serve."""
        return BadRequest(f"This {self.daemon} serves {' and '.join(sorted(self.roles or ()))}"
                          f" connections; a {role!r} has nothing to do here.")

    @Hello.responder
    def hello(self, versions: list[int], role: str, token: str | None = None,
              user: str | None = None, software: str | None = None
              ) -> dict[str, Any] | Deferred[dict[str, Any]]:
        if self.said_hello():
            raise BadRequest("This connection already said hello.")
        if software is not None:
            check_text("software", software)
        version = choose_version(versions)
        if version is None:
            raise UnsupportedVersion(
                f"This {self.daemon} speaks protocol versions {list(SUPPORTED_VERSIONS)};"
                f" you offered {versions}. Upgrade the older side.")
        if self.roles is not None and role not in self.roles:
            raise self.wrong_role(role)
        return self.welcome(Greeting(version, tuple(versions), role, token, user, software))

    def welcome(self, greeting: Greeting) -> dict[str, Any] | Deferred[dict[str, Any]]:
        """Decide who the caller is and answer the hello (usually with L{welcomed}), or
        raise a declared error saying why not."""
        raise NotImplementedError

    def welcomed(self, greeting: Greeting, user: str, roles: frozenset[str] | list[str]
                 ) -> dict[str, Any]:
        """Mark the hello exchange complete; the answer that says so."""
        self.greeted = True
        answer: dict[str, Any] = {"version": greeting.version, "user": user,
                                  "roles": sorted(roles), "software": self.software}
        if self.features:
            answer["features"] = list(self.features)
        return answer
