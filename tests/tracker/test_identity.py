"""Identity is not a name someone types, and priority is a permission.

The attack the review found: on a tracker with tokens and --allow-anonymous, a caller
without a token says it is "alice" and releases, cancels or renews the real alice's lease
or request by its (guessable) id. Here anonymous callers live in their own namespace
(``anonymous:NAME``), act only on what their own connection made, and get the default
priority only; a token holder's priority is capped by its tokens file line.

The tracker runs in process on a L{Clock}; connections are iosim pumps (the harness of
tests/tracker/test_service.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compassd.protocol import NotAuthorized, NotYourLease
from compassd.protocol import board_tracker as bt
from compassd.protocol import client_tracker as ct
from compassd.tracker.access import (
    Access,
    Identity,
    TokensFileError,
    hash_token,
    load_tokens,
)
from tests.tracker.test_service import Harness

TOKENS = {
    hash_token("alice-token"): Identity("alice", frozenset({"client"})),
    hash_token("vip-token"): Identity("vip", frozenset({"client"}), max_priority=5),
    hash_token("root-token"): Identity("root", frozenset({"admin"})),
    hash_token("board-token"): Identity("rack", frozenset({"board"})),
}


@pytest.fixture
def t() -> Harness:
    harness = Harness(access=Access(TOKENS, allow_anonymous=True))
    harness.viewer_token = "root-token"
    return harness


def _grant(t: Harness, token: str) -> tuple[object, dict[str, object]]:
    client = t.connect(token=token)
    client.ok(ct.Request, key="npu", wait_for_board=True)
    (_, granted), = client.peer.take("granted")
    return client, granted


def test_an_anonymous_alice_is_not_alice(t: Harness) -> None:
    t.board("npu-1", token="board-token")
    fake = t.connect(user="alice")  # no token
    request = fake.ok(ct.Request, key="npu", wait_for_board=True)
    (_, granted), = fake.peer.take("granted")
    holder = t.devices()["npu-1"]["holder"]
    assert holder == "anonymous:alice" and granted["request"] == request["request"]


def test_an_anonymous_alice_cannot_release_the_real_alices_lease(t: Harness) -> None:
    t.board("npu-1", token="board-token")
    _, granted = _grant(t, "alice-token")
    fake = t.connect(user="alice")
    error = fake.refused(NotYourLease, ct.Release, lease=granted["lease"])
    assert granted["lease"] in error and "without a token" in error
    assert t.devices()["npu-1"]["holder"] == "alice"


def test_an_anonymous_alice_cannot_cancel_the_real_alices_request(t: Harness) -> None:
    alice = t.connect(token="alice-token")
    request = alice.ok(ct.Request, key="npu", wait_for_board=True)["request"]  # no board: it waits
    fake = t.connect(user="alice")
    fake.refused(NotYourLease, ct.Cancel, request=request)
    assert alice.peer.take("request-ended") == []
    assert [row["request"] for row in alice.ok(ct.ListWaiting, key="npu")["waiting"]] == [
        request]


def test_anonymous_callers_act_only_on_their_own_connection(t: Harness) -> None:
    """Two anonymous "bob"s are two callers: neither can end the other's lease or
    request, though they share a name."""
    t.board("npu-1", token="board-token")
    first = t.connect(user="bob")
    first.ok(ct.Request, key="npu", wait_for_board=True)
    (_, granted), = first.peer.take("granted")
    waiting = first.ok(ct.Request, key="npu", wait_for_board=True)["request"]
    second = t.connect(user="bob")
    assert "this connection" in second.refused(NotYourLease, ct.Release,
                                               lease=granted["lease"])
    second.refused(NotYourLease, ct.Cancel, request=waiting)
    first.ok(ct.Cancel, request=waiting)  # its own connection may
    first.ok(ct.Release, lease=granted["lease"])


def test_a_token_holder_may_cancel_from_another_connection_and_admins_may_kick(
        t: Harness) -> None:
    alice = t.connect(token="alice-token")
    request = alice.ok(ct.Request, key="npu", wait_for_board=True)["request"]
    again = t.connect(token="alice-token")  # e.g. `compass cancel` in another shell
    again.ok(ct.Cancel, request=request)
    (_, ended), = alice.peer.take("request-ended")
    assert ended["request"] == request
    t.board("npu-1", token="board-token")
    _, granted = _grant(t, "alice-token")
    t.connect(user="root").refused(NotAuthorized, ct.Kick, lease=granted["lease"])
    t.connect(token="root-token").ok(ct.Kick, lease=granted["lease"])


def test_a_tokens_file_may_not_name_a_user_in_the_anonymous_namespace(
        tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('x')} user=anonymous:alice roles=client\n")
    with pytest.raises(TokensFileError, match="line 1.*belong to callers without a token"):
        load_tokens(path)


def test_an_anonymous_name_already_prefixed_is_not_doubled(t: Harness) -> None:
    t.board("npu-1", token="board-token")
    fake = t.connect(user="anonymous:eve")
    fake.ok(ct.Request, key="npu", wait_for_board=True)
    assert t.devices()["npu-1"]["holder"] == "anonymous:eve"


# --- priority is a permission ------------------------------------------------------


def test_a_client_gets_the_default_priority_at_most_unless_its_line_says_more(
        t: Harness) -> None:
    alice = t.connect(token="alice-token")
    error = alice.refused(NotAuthorized, ct.Request, key="npu", priority=2)
    assert "priority 1 at most, not 2" in error and "max-priority=" in error
    alice.ok(ct.Request, key="npu", wait_for_board=True, priority=1)
    alice.ok(ct.Request, key="npu", wait_for_board=True, priority=-5)  # lower is always allowed
    alice.ok(ct.Request, key="npu", wait_for_board=True)
    vip = t.connect(token="vip-token")
    vip.ok(ct.Request, key="npu", wait_for_board=True, priority=5)
    assert "priority 5 at most, not 6" in vip.refused(NotAuthorized, ct.Request, key="npu",
                                                      priority=6)
    t.connect(token="root-token").ok(ct.Request, key="npu", wait_for_board=True, priority=1000)


def test_an_anonymous_caller_gets_the_default_priority_only(t: Harness) -> None:
    fake = t.connect(user="alice")
    error = fake.refused(NotAuthorized, ct.Request, key="npu", priority=2)
    assert "priority 1 at most" in error and "without a token" in error
    fake.ok(ct.Request, key="npu", wait_for_board=True, priority=1)


def test_a_refused_priority_queues_nothing(t: Harness) -> None:
    t.connect(token="alice-token").refused(NotAuthorized, ct.Request, key="npu",
                                           priority=9)
    viewer = t.connect(token="root-token")
    assert viewer.ok(ct.ListQueues)["queues"] == []


def test_the_tokens_file_takes_max_priority(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('a')} user=ann roles=client max-priority=10\n"
                    f"{hash_token('b')} user=bo roles=client\n"
                    f"{hash_token('c')} user=cy roles=admin\n")
    table = load_tokens(path)
    caps = {identity.user: identity.priority_cap for identity in table.values()}
    assert caps == {"ann": 10, "bo": 1, "cy": None}
    path.write_text(f"{hash_token('a')} user=ann max-priority=high\n")
    with pytest.raises(TokensFileError, match="max-priority=high is not a whole number"):
        load_tokens(path)


def test_an_open_tracker_on_loopback_keeps_names_and_priorities_as_given() -> None:
    """Without tokens (loopback only) every caller is trusted: `compass demo` and the
    README tour need no token."""
    harness = Harness()
    client = harness.connect(user="dev")
    client.ok(ct.Request, key="npu", wait_for_board=True, priority=50)
    harness.board("npu-1")
    assert harness.devices()["npu-1"]["holder"] == "dev"
    assert bt.Register  # the board role is open too
