"""Several trackers (a standby pair) as people write them, and which one is dialled next
(compassd.addresses: split_trackers, same_tracker, TrackerRing)."""

from __future__ import annotations

import pytest

from compassd.addresses import TrackerRing, same_tracker, split_trackers


def test_a_comma_list_of_trackers_is_split_and_an_empty_item_is_a_sentence() -> None:
    assert split_trackers("a:9190") == ["a:9190"]
    assert split_trackers(" a:9190 , [fd00::1]:9300,b") == ["a:9190", "[fd00::1]:9300", "b"]
    for bad in ("", " ", "a:9190,", ",b:9190", "a:9190,,b:9190"):
        with pytest.raises(ValueError, match="is not a tracker address or a comma-separated"):
            split_trackers(bad)


def test_an_active_trackers_address_matches_the_endpoint_that_dials_it() -> None:
    assert same_tracker("a.lab:9190", "a.lab:9190")
    assert same_tracker("a.lab:9190", "tcp:host=a.lab:port=9190")
    assert same_tracker("a.lab:9190", "tls:host=a.lab:port=9190:ca=ca.pem")
    assert same_tracker("[fd00::1]:9190", "tcp:host=fd00\\:\\:1:port=9190")
    assert not same_tracker("a.lab:9190", "a.lab:9191")
    assert not same_tracker("a.lab:9190", "tls:host=b.lab:port=9190")
    assert not same_tracker("not an address", "a.lab:9190")
    assert not same_tracker("a.lab:9190", "unix:/run/compass.sock")


def test_the_ring_goes_round_and_after_a_loss_tries_the_others_first() -> None:
    ring = TrackerRing(["a:1", "b:1", "c:1"])
    assert [ring.next() for _ in range(4)] == ["a:1", "b:1", "c:1", "a:1"]
    ring.answered("b:1")
    assert [ring.next() for _ in range(3)] == ["c:1", "a:1", "b:1"]
    one = TrackerRing(["a:1"])
    one.answered("a:1")
    assert [one.next(), one.next()] == ["a:1", "a:1"]
    with pytest.raises(ValueError):
        TrackerRing([])


def test_a_redirect_is_dialled_next_then_the_ring_goes_on_where_it_was() -> None:
    ring = TrackerRing(["tcp:host=a:port=1", "tcp:host=b:port=1"])
    assert ring.next() == "tcp:host=a:port=1"
    assert ring.redirected("a:1") == "tcp:host=a:port=1"
    assert ring.next() == "tcp:host=a:port=1"
    assert ring.next() == "tcp:host=b:port=1"


def test_a_redirect_outside_the_list_is_followed_only_when_the_ring_can_follow_it() -> None:
    closed = TrackerRing(["b:1"])
    assert closed.redirected("a:1") is None
    assert closed.redirected("") is None
    assert closed.next() == "b:1"
    following = TrackerRing(["b:1"], follow=lambda active: f"tcp:{active}")
    assert following.redirected("a:1") == "tcp:a:1"
    assert following.next() == "tcp:a:1"
    assert following.next() == "b:1"
    assert following.redirected("") is None  # a standby that does not know yet
    assert following.next() == "b:1"
