"""A client given several trackers (a standby pair): which it dials, how it follows a
standby's redirect, and what it says when no tracker is active
(compassd.client.asynchronous: tracker_addresses, dial_active)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from compassd.addresses import TrackerRing
from compassd.client import NotAuthorized, TrackerUnreachable
from compassd.client.asynchronous import dial_active, tracker_addresses


class FakePeer:
    def __init__(self) -> None:
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True


class Trackers:
    """What each address answers: "active", "standby:ACTIVE", "down" or an error."""

    def __init__(self, **answers: str | Exception) -> None:
        self.answers = {k.replace("_", ":"): v for k, v in answers.items()}
        self.dialled: list[str] = []
        self.peers: list[FakePeer] = []

    def dial(self, address: str) -> Deferred[tuple[Any, str, dict[str, Any]]]:
        self.dialled.append(address)
        answer = self.answers.get(address, "down")
        if isinstance(answer, Exception):
            return fail(answer)
        if answer == "down":
            return fail(TrackerUnreachable(f"Cannot reach the tracker at {address}:"
                                           " Connection refused."))
        peer = FakePeer()
        self.peers.append(peer)
        hello: dict[str, Any] = {"user": "ann", "roles": ["client"]}
        if answer.startswith("standby"):
            hello["active"] = answer.partition(":")[2].replace("_", ":")
        return succeed((peer, address, hello))


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not done yet"
    return results[0]


def test_addresses_are_one_host_a_host_port_a_comma_list_or_a_list() -> None:
    assert tracker_addresses("t.lab") == ["t.lab:9190"]
    assert tracker_addresses("t.lab", 9300) == ["t.lab:9300"]
    assert tracker_addresses("t.lab:9301") == ["t.lab:9301"]
    assert tracker_addresses("::1") == ["[::1]:9190"]
    assert tracker_addresses("a:1,b") == ["a:1", "b:9190"]
    assert tracker_addresses(["a", "[fd00::1]:2"], 9300) == ["a:9300", "[fd00::1]:2"]
    with pytest.raises(ValueError):
        tracker_addresses([])
    with pytest.raises(ValueError):
        tracker_addresses("a:1,,b")


def test_a_standby_first_in_the_list_redirects_to_the_active_one() -> None:
    trackers = Trackers(b_1="standby:a_1", a_1="active")
    ring = TrackerRing(["b:1", "a:1"])
    peer, where, _ = outcome(dial_active(Clock(), ring, trackers.dial, 10))
    assert where == "a:1" and trackers.dialled == ["b:1", "a:1"]
    assert trackers.peers[0].dropped and not peer.dropped
    assert ring.next() == "b:1"  # after losing a:1, the other first


def test_a_redirect_to_a_tracker_not_in_the_list_is_followed() -> None:
    trackers = Trackers(b_1="standby:a_1", a_1="active")
    ring = TrackerRing(["b:1"], follow=lambda active: active)
    _, where, _ = outcome(dial_active(Clock(), ring, trackers.dial, 10))
    assert where == "a:1"


def test_while_the_standby_takes_over_the_client_tries_again_within_its_budget() -> None:
    clock = Clock()
    trackers = Trackers(b_1="standby:a_1")  # a:1 died; b:1 has not taken over yet
    d = dial_active(clock, TrackerRing(["a:1", "b:1"]), trackers.dial, 10)
    assert trackers.dialled == ["a:1", "b:1", "a:1"]  # b's redirect is followed once
    clock.advance(0.25)
    trackers.answers["b:1"] = "active"
    clock.advance(0.5)
    _, where, _ = outcome(d)
    assert where == "b:1"


def test_when_no_tracker_is_active_within_the_budget_the_error_says_what_each_said() -> None:
    clock = Clock()
    trackers = Trackers(b_1="standby:")
    d = dial_active(clock, TrackerRing(["a:1", "b:1"]), trackers.dial, 3)
    for _ in range(20):
        clock.advance(0.25)
    failure = outcome(d)
    assert isinstance(failure, Failure) and failure.check(TrackerUnreachable)
    text = str(failure.value)
    assert text.startswith("No tracker answered as the active one (a:1, b:1):")
    assert "Cannot reach the tracker at a:1: Connection refused" in text
    assert "the tracker at b:1 is a standby; the active one is not known yet" in text
    rounds = trackers.dialled.count("a:1")
    assert 2 <= rounds <= 5  # backoff 0.25, 0.5, 1, 2 within 3 s


def test_one_tracker_that_cannot_be_reached_fails_at_once_with_its_own_sentence() -> None:
    trackers = Trackers()
    failure = outcome(dial_active(Clock(), TrackerRing(["a:1"]), trackers.dial, 10))
    assert str(failure.value) == "Cannot reach the tracker at a:1: Connection refused."
    assert trackers.dialled == ["a:1"]


def test_a_refusal_that_is_not_about_reaching_the_tracker_is_not_retried() -> None:
    trackers = Trackers(a_1=NotAuthorized("Unknown token."), b_1="active")
    failure = outcome(dial_active(Clock(), TrackerRing(["a:1", "b:1"]), trackers.dial, 10))
    assert failure.check(NotAuthorized) and trackers.dialled == ["a:1"]
