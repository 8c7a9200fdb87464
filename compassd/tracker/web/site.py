"""compass-tracker's web dashboard: the twisted.web resources behind C{--http}.

Who may see what is the tracker's own rule (L{compassd.tracker.access}): the same tokens
as the CLI. A token entered once on the sign-in page comes back as an HttpOnly,
SameSite=Strict cookie for reading (the page, its events, the charts); a token in an
C{Authorization: Bearer} header works as well. Admin actions (drain, undrain, kick) are
POSTs that must carry the token in that header: a cookie alone is refused, so another
site cannot make a signed-in browser drain a board (a cross-site request cannot set the
header without a CORS preflight, which this server never grants). Clients may read;
only admins may act.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ...metrics import NotFound
from ...protocol.errors import BadRequest, NoSuchDevice, NoSuchLease, NotAuthorized
from ...protocol.limits import check_text
from ..access import Identity
from ..history import DAY, WEEK, HistorySource, summarise
from ..records import Effect
from ..service import TrackerService
from . import page
from .feed import LiveFeed
from .state import last_errors, snapshot

log = Logger(namespace="compass.dashboard")

COOKIE = b"compass_token"
HISTORY_CACHE = 30.0
"""Seconds the history charts are reused before they are drawn again."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; connect-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_STATIC = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}


def _secure(request: Request) -> None:
    for name, value in _SECURITY_HEADERS.items():
        request.setHeader(name, value)


def bearer(request: Request) -> str | None:
    """The token of an C{Authorization: Bearer TOKEN} header, if any."""
    header = request.getHeader("authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@attrs.define(eq=False)
class Dashboard:
    """The dashboard of one tracker: its pages, its live feed and its history."""

    tracker: TrackerService
    history: HistorySource
    history_note: str = ("History since the tracker started (kept in memory, the last"
                         " 7 days at most).")
    name: str = "compass-tracker"
    feed: LiveFeed = attrs.field(init=False)
    _charts: tuple[float, str] | None = None
    _errors: dict[str, tuple[float, str]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        self.feed = LiveFeed(self.tracker.reactor, self.state)

    def state(self) -> dict[str, Any]:
        return snapshot(self.tracker.scheduler, self.tracker.now(), self._errors)

    def observe(self, effects: list[Effect], now: float) -> None:
        """The tracker applied C{effects}: note boards going unhealthy, and tell the
        live pages."""
        last_errors(self._errors, effects, now)
        self.changed()

    def changed(self) -> None:
        """Live pages look at the tracker's state now."""
        self.feed.poke()

    def viewer(self, request: Request) -> Identity | None:
        """Who is reading: by the bearer header, else the cookie; None if nobody the
        tracker knows (or only a board)."""
        token = bearer(request)
        if token is None:
            cookie = request.getCookie(COOKIE)
            token = cookie.decode("utf-8", "replace") if cookie else None
        try:
            return self.tracker.access.identify(token, None, "client")
        except NotAuthorized:
            return None

    def charts(self) -> str:
        now = self.tracker.now()
        if self._charts is not None and now - self._charts[0] < HISTORY_CACHE:
            return self._charts[1]
        devices = {d.name: d.key for d in self.tracker.scheduler.devices.values()}
        day = summarise(self.history, now - DAY, now, 24, devices)
        week = summarise(self.history, now - WEEK, now, 28, devices)
        html = page.history(day, week, self.history_note)
        self._charts = (now, html)
        return html

    def site(self) -> Site:
        root = _Page(self)
        root.putChild(b"login", _Login(self))
        root.putChild(b"logout", _Logout())
        root.putChild(b"events", _Events(self))
        root.putChild(b"history", _History(self))
        root.putChild(b"static", _Static())
        api = _Folder()
        api.putChild(b"state", _State(self))
        for action in (b"drain", b"undrain", b"kick"):
            api.putChild(action, _Action(self, action.decode()))
        root.putChild(b"api", api)
        site = Site(root, reactor=self.tracker.reactor)
        site.displayTracebacks = False
        site.noisy = False
        return site

    def stop(self) -> None:
        self.feed.stop()


class _Folder(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()


class _Page(Resource):
    """C{/}: the dashboard, or the sign-in page for a caller without a token."""

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else NotFound()

    def render_GET(self, request: Request) -> bytes:
        _secure(request)
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        dash = self.dashboard
        identity = dash.viewer(request)
        if identity is None:
            request.setResponseCode(401)
            return page.login(dash.name).encode("utf-8")
        admin = identity.may("admin")
        return page.dashboard(
            dash.state(), identity.user, sorted(identity.roles), admin, dash.charts(),
            dash.name, signed_in=request.getCookie(COOKIE) is not None,
        ).encode("utf-8")


class _Login(Resource):
    """C{POST /login} with a C{token} form field: check it, set the cookie, go to C{/}."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_POST(self, request: Request) -> bytes:
        _secure(request)
        assert request.content is not None
        form = parse_qs(request.content.read(8192).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        try:
            identity = self.dashboard.tracker.access.identify(token or None, None, "client")
        except NotAuthorized as e:
            request.setResponseCode(401)
            request.setHeader("Content-Type", "text/html; charset=utf-8")
            return page.login(self.dashboard.name, f"Not signed in: {e}").encode("utf-8")
        log.info("{user} signed in to the dashboard from {peer}", user=identity.user,
                 peer=request.getClientAddress())
        request.addCookie(COOKIE, token.encode("utf-8"), path=b"/", httpOnly=True,
                          secure=request.isSecure(), sameSite="strict")
        request.redirect(b"/")
        request.setResponseCode(303)
        return b""


class _Logout(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        _secure(request)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, max_age="0",
                          sameSite="strict")
        request.redirect(b"/")
        request.setResponseCode(303)
        return b""


def _json(request: Request, code: int, body: dict[str, Any]) -> bytes:
    _secure(request)
    request.setResponseCode(code)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    return json.dumps(body).encode("utf-8")


_NEED_TOKEN = ("Sign in with a token the tracker knows (the same as for the compass"
               " command).")


class _State(Resource):
    """C{GET /api/state}: the boards and queues as JSON."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request: Request) -> bytes:
        if self.dashboard.viewer(request) is None:
            return _json(request, 401, {"error": _NEED_TOKEN})
        return _json(request, 200, self.dashboard.state())


class _Events(Resource):
    """C{GET /events}: the live fragments as server-sent events."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request: Request) -> bytes | int:
        identity = self.dashboard.viewer(request)
        if identity is None:
            return _json(request, 401, {"error": _NEED_TOKEN})
        _secure(request)
        if not self.dashboard.feed.add(request, identity.may("admin")):
            return _json(request, 503, {"error": "Too many dashboards are open on this"
                                        " tracker; close one and reload."})
        return NOT_DONE_YET


class _History(Resource):
    """C{GET /history}: the history section alone, for the page to refresh."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render_GET(self, request: Request) -> bytes:
        _secure(request)
        if self.dashboard.viewer(request) is None:
            request.setResponseCode(401)
            return b""
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        return self.dashboard.charts().encode("utf-8")


class _Static(Resource):
    """C{/static/NAME}: the page's script and style sheet, shipped in the package."""

    def __init__(self) -> None:
        super().__init__()
        folder = resources.files(__package__ or "compassd.tracker.web") / "static"
        self.files = {name: (folder / name).read_bytes() for name in _STATIC}

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _File(self.files, path.decode("utf-8", "replace"))


class _File(Resource):
    isLeaf = True

    def __init__(self, files: dict[str, bytes], name: str) -> None:
        super().__init__()
        self.files, self.name = files, name

    def render_GET(self, request: Request) -> bytes:
        _secure(request)
        body = self.files.get(self.name)
        if body is None:
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader("Content-Type", _STATIC[self.name])
        request.setHeader("Cache-Control", "no-cache")
        return body


class _Action(Resource):
    """C{POST /api/drain|undrain|kick}: an admin action, token in the header only."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard, action: str) -> None:
        super().__init__()
        self.dashboard = dashboard
        self.action = action

    def render_POST(self, request: Request) -> bytes:
        token = bearer(request)
        if token is None:
            return _json(request, 403, {"error": (
                f"{self.action.capitalize()} needs your token in an Authorization: Bearer"
                " header (the dashboard sends it); a cookie alone is not enough.")})
        tracker = self.dashboard.tracker
        try:
            identity = tracker.access.identify(token, None, "client")
        except NotAuthorized as e:
            return _json(request, 403, {"error": str(e)})
        if not identity.may("admin"):
            tracker.record("refused", user=identity.user, command=f"dashboard {self.action}",
                           reason="needs the admin role", peer=str(request.getClientAddress()))
            return _json(request, 403, {"error": (
                f"User {identity.user} may not {self.action}: it needs the admin role.")})
        assert request.content is not None
        try:
            body = json.loads(request.content.read(8192) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return _json(request, 400, {"error": "The request body must be a JSON object."})
        try:
            message = self._act(identity, body)
        except (NoSuchDevice, NoSuchLease) as e:
            return _json(request, 404, {"error": str(e)})
        except (BadRequest, ValueError, TypeError) as e:
            return _json(request, 400, {"error": str(e)})
        self.dashboard.changed()
        return _json(request, 200, {"ok": True, "message": message})

    def _act(self, identity: Identity, body: dict[str, Any]) -> str:
        tracker = self.dashboard.tracker
        now = tracker.now()
        user = identity.user
        if self.action in ("drain", "undrain"):
            device = body.get("device")
            if not isinstance(device, str) or not device:
                raise ValueError(f"Say which device to {self.action}: {{\"device\": NAME}}.")
            draining = self.action == "drain"
            effects = tracker.scheduler.set_draining(now, device, draining)
            log.info("admin {user} {action}s {device} from the dashboard", user=user,
                     action=self.action, device=device)
            tracker.record(self.action, user=user, device=device, via="dashboard")
            tracker.apply(effects)
            if draining:
                return (f"{device} is draining: it takes no new leases; a lease it holds"
                        " runs to its end.")
            return f"{device} is back in service."
        lease = body.get("lease")
        if not isinstance(lease, str) or not lease:
            raise ValueError('Say which lease to kick: {"lease": ID}.')
        reason = check_text("reason", str(body.get("reason") or "kicked from the dashboard"))
        held = tracker.scheduler.leases.get(lease)
        effects = tracker.scheduler.kick(now, lease, user, reason)
        log.info("admin {user} kicks {lease} from the dashboard", user=user, lease=lease)
        tracker.apply(effects)
        where = f" on {held.device.name}" if held is not None else ""
        return f"Lease {lease}{where} ended: kicked by {user}."
