"""The dashboard's resources over real HTTP parsing in memory: who may see and do what,
what the page shows, and the live feed."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from twisted.internet.testing import MemoryReactorClock

from compassd.tracker.access import Access, Identity, hash_token
from compassd.tracker.history import MemoryHistory
from compassd.tracker.records import Effect, Policy
from compassd.tracker.scheduler import Scheduler
from compassd.tracker.service import TrackerService
from compassd.tracker.web import Dashboard
from tests.httpmemory import Exchange, request

ADMIN, CLIENT, BOARD = "t-admin", "t-client", "t-board"


@pytest.fixture
def dash() -> Dashboard:
    access = Access({
        hash_token(ADMIN): Identity("ada", frozenset({"admin"})),
        hash_token(CLIENT): Identity("carl", frozenset({"client"})),
        hash_token(BOARD): Identity("rack", frozenset({"board"})),
    })
    reactor = MemoryReactorClock()
    reactor.advance(1000.0)
    tracker = TrackerService(reactor=reactor, access=access,
                             scheduler=Scheduler(policy=Policy(claim_timeout=None)))
    dashboard = Dashboard(tracker, MemoryHistory())
    board = object()
    apply(dashboard, tracker.scheduler.register(1000.0, board, "npu-1", "x2", "h:1"))
    apply(dashboard, tracker.scheduler.register(1000.0, board, "npu-2", "x2", "h:2"))
    return dashboard


def apply(dash: Dashboard, effects: list[Effect]) -> None:
    """What the tracker does with effects when it has a dashboard: carry them out, then
    let the history and the live pages see them."""
    now = dash.tracker.now()
    dash.tracker.apply(effects)
    assert isinstance(dash.history, MemoryHistory)
    dash.history.observe(effects, now)
    dash.observe(effects, now)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_the_page_asks_for_one_and_the_data_is_refused(dash: Dashboard) -> None:
    status, headers, body = request(dash.site(), "GET", "/")
    assert status == 401 and b'id="token"' in body and b"npu-1" not in body
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    for path in ("/api/state", "/events", "/history"):
        assert request(dash.site(), "GET", path)[0] == 401, path
    assert request(dash.site(), "GET", "/", bearer(BOARD))[0] == 401  # a board is no reader


def test_signing_in_sets_an_httponly_strict_cookie_that_reads_the_page(dash: Dashboard) -> None:
    status, _, body = request(dash.site(), "POST", "/login",
                              {"Content-Type": "application/x-www-form-urlencoded"},
                              b"token=nonsense")
    assert status == 401 and b"Not signed in: The token is not known" in body
    status, headers, _ = request(dash.site(), "POST", "/login",
                                 {"Content-Type": "application/x-www-form-urlencoded"},
                                 f"token={CLIENT}".encode())
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"compass_token={CLIENT}")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, _, body = request(dash.site(), "GET", "/", {"Cookie": f"compass_token={CLIENT}"})
    page = body.decode()
    assert status == 200 and "carl" in page and "npu-1" in page and "npu-2" in page
    assert 'data-action="drain"' not in page  # clients get no admin buttons


def test_the_page_is_whole_without_javascript_and_escapes_what_boards_say(
    dash: Dashboard,
) -> None:
    tracker = dash.tracker
    board = tracker.scheduler.devices["npu-1"].owner
    apply(dash, tracker.scheduler.set_health(1001.0, board, "npu-1", False,
                                               "<script>alert(1)</script> driver gone"))
    alice = object()
    _, effects = tracker.scheduler.request(1001.0, alice, "alice", "x2", priority=5)
    apply(dash, effects)
    _, effects = tracker.scheduler.request(1002.0, alice, "alice", "x2")
    apply(dash, effects)
    status, _, body = request(dash.site(), "GET", "/", bearer(ADMIN))
    page = body.decode()
    assert status == 200
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="state state-quarantined"' in page
    assert "alice" in page and "first in line" in page  # the waiting request, and why
    # Positions count from 1 here as in compass status: the one waiting request is 1st.
    row = page.split('<tr data-request="')[1].split("</tr>")[0]
    assert "<td>1</td>" in row and "<td>0</td>" not in row
    state = json.loads(request(dash.site(), "GET", "/api/state", bearer(ADMIN))[2])
    assert [w["position"] for q in state["queues"] for w in q["shown"]] == [1]
    assert 'data-action="drain" data-device="npu-2"' in page
    assert 'data-action="kick" data-lease="lease-' in page
    # Every chart is well-formed SVG.
    for chunk in page.split("<svg")[1:]:
        ElementTree.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")


def admin_post(dash: Dashboard, path: str, body: dict[str, str], token: str | None,
               cookie: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers.update(bearer(token))
    if cookie:
        headers["Cookie"] = f"compass_token={cookie}"
    status, _, answer = request(dash.site(), "POST", path, headers, json.dumps(body).encode())
    return status, json.loads(answer)


def test_only_an_admin_with_the_token_in_the_header_may_drain_undrain_and_kick(
    dash: Dashboard,
) -> None:
    devices = dash.tracker.scheduler.devices
    status, answer = admin_post(dash, "/api/drain", {"device": "npu-1"}, None, cookie=ADMIN)
    assert status == 403 and "a cookie alone is not enough" in answer["error"]
    status, answer = admin_post(dash, "/api/drain", {"device": "npu-1"}, CLIENT)
    assert status == 403 and answer["error"] == (
        "User carl may not drain: it needs the admin role.")
    status, answer = admin_post(dash, "/api/drain", {"device": "npu-1"}, "wrong")
    assert status == 403 and "not known" in answer["error"]
    assert not devices["npu-1"].draining

    status, answer = admin_post(dash, "/api/drain", {"device": "npu-1"}, ADMIN)
    assert status == 200 and devices["npu-1"].draining
    assert answer["message"].startswith("npu-1 is draining")
    status, answer = admin_post(dash, "/api/drain", {"device": "npu-9"}, ADMIN)
    assert status == 404 and answer["error"] == "No device named npu-9 is registered."
    status, answer = admin_post(dash, "/api/undrain", {"device": "npu-1"}, ADMIN)
    assert status == 200 and not devices["npu-1"].draining
    status, answer = admin_post(dash, "/api/drain", {}, ADMIN)
    assert status == 400 and "Say which device" in answer["error"]

    alice = object()
    _, effects = dash.tracker.scheduler.request(1001.0, alice, "alice", "x2")
    apply(dash, effects)
    lease = next(iter(dash.tracker.scheduler.leases))
    status, answer = admin_post(dash, "/api/kick", {"lease": lease}, ADMIN)
    assert status == 200 and "kicked by ada" in answer["message"]
    assert lease not in dash.tracker.scheduler.leases
    status, answer = admin_post(dash, "/api/kick", {"lease": lease}, ADMIN)
    assert status == 404 and "not active" in answer["error"]


def test_the_event_stream_sends_the_state_then_each_change(dash: Dashboard) -> None:
    reactor = dash.tracker.reactor
    assert isinstance(reactor, MemoryReactorClock)
    stream = Exchange(dash.site())
    stream.send("GET", "/events", bearer(CLIENT))
    first = stream.received()
    assert b"text/event-stream" in first and b"event: state" in first and b"npu-1" in first
    assert dash.feed.listeners == 1
    seen = len(stream.received())
    reactor.advance(1.0)  # nothing changed: nothing sent
    assert len(stream.received()) == seen
    alice = object()
    _, effects = dash.tracker.scheduler.request(reactor.seconds(), alice, "alice", "x2")
    apply(dash, effects)  # the dashboard pokes the feed, which looks 0.1 s later
    assert len(stream.received()) == seen
    reactor.advance(0.1)
    news = stream.received()[seen:]
    assert b"event: state" in news and b"alice" in news
    reactor.advance(20.0)
    assert b": still here" in stream.received()
    stream.close()
    assert dash.feed.listeners == 0


def test_static_files_ship_in_the_package(dash: Dashboard) -> None:
    status, headers, body = request(dash.site(), "GET", "/static/dashboard.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"EventSource" in body
    assert request(dash.site(), "GET", "/static/../site.py")[0] == 404
    assert request(dash.site(), "GET", "/nothing-here")[0] == 404
