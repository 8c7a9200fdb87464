"""The proxy's per-address limit on session opens (each costs the tracker a ticket check):
a token bucket per source, in a table that never holds more than its cap. Time is passed
in: a L{Clock}'s C{seconds()} or plain numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from compassd.ratelimit import OpenLimit, TokenBucket, source_key


def test_a_burst_is_allowed_then_opens_come_at_the_rate() -> None:
    clock = Clock()
    limit = OpenLimit(rate=2.0, burst=3)
    assert [limit.take("10.0.0.1", clock.seconds()).allowed for _ in range(4)] == [
        True, True, True, False]
    refused = limit.take("10.0.0.1", clock.seconds())
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    clock.advance(0.49)
    assert not limit.take("10.0.0.1", clock.seconds()).allowed
    clock.advance(0.01)
    assert limit.take("10.0.0.1", clock.seconds()).allowed
    assert not limit.take("10.0.0.1", clock.seconds()).allowed
    clock.advance(10)  # a quiet spell refills the burst, never more
    assert [limit.take("10.0.0.1", clock.seconds()).allowed for _ in range(4)] == [
        True, True, True, False]
    assert limit.refused == 5


def test_one_address_refused_leaves_the_others_served() -> None:
    limit = OpenLimit(rate=1.0, burst=2)
    for _ in range(2):
        assert limit.take("127.0.0.2", 0.0).allowed
    assert not limit.take("127.0.0.2", 0.0).allowed
    assert limit.take("127.0.0.1", 0.0).allowed
    assert limit.take("127.0.0.3", 0.0).allowed


def test_only_the_first_refusal_of_a_run_is_marked_for_the_log() -> None:
    limit = OpenLimit(rate=1.0, burst=1)
    assert limit.take("a", 0.0).allowed
    marks = [limit.take("a", 0.0).first_refusal for _ in range(5)]
    assert marks == [True, False, False, False, False]
    assert limit.take("a", 1.0).allowed
    assert limit.take("a", 1.0).first_refusal  # a new run of refusals


def test_ipv6_counts_by_its_64_network_and_mapped_ipv4_as_ipv4() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("/run/compass.sock") == "/run/compass.sock"
    limit = OpenLimit(rate=1.0, burst=1)
    assert limit.take("2001:db8::1", 0.0).allowed
    assert not limit.take("2001:db8::2", 0.0).allowed  # same /64: same bucket


def test_the_table_is_bounded_and_forgets_the_least_recently_heard() -> None:
    limit = OpenLimit(rate=1.0, burst=1, max_addresses=3)
    for host in ("a", "b", "c"):
        assert limit.take(host, 0.0).allowed
    assert not limit.take("a", 0.0).allowed  # a is now the most recent
    assert limit.take("d", 0.0).allowed  # b (least recent) is forgotten
    assert len(limit) == 3 and limit.evicted == 1
    assert not limit.take("a", 0.0).allowed  # a kept its empty bucket
    assert limit.take("b", 0.0).allowed  # b starts again


def test_a_clock_that_goes_back_gives_nothing_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, tokens=0.0, updated=100.0)
    assert bucket.take(50.0) > 0
    assert bucket.tokens == 0.0 and bucket.updated == 100.0


@pytest.mark.parametrize("kw", [{"rate": 0}, {"rate": -1}, {"burst": 0},
                                {"max_addresses": 0}])
def test_nonsense_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OpenLimit(**kw)  # type: ignore[arg-type]


EVENTS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]),
                            st.floats(0, 5, allow_nan=False)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, rate=st.floats(0.1, 20), burst=st.integers(1, 10),
       cap=st.integers(1, 6))
def test_no_source_ever_gets_more_than_burst_plus_rate_times_the_time(
        events: list[tuple[str, float]], rate: float, burst: int, cap: int) -> None:
    """Whatever the order and timing of opens, in any span of time a source that stays
    in the table is allowed at most burst + rate x span opens; the table holds at most
    its cap; a refusal's retry_after is positive and allowing it then works."""
    limit = OpenLimit(rate=rate, burst=burst, max_addresses=cap)
    now = 0.0
    allowed: dict[str, list[float]] = {}
    for host, step in events:
        now += step
        verdict = limit.take(host, now)
        assert len(limit) <= cap
        if verdict.allowed:
            allowed.setdefault(host, []).append(now)
            assert verdict.retry_after == 0.0
        else:
            assert verdict.retry_after > 0.0
    if cap >= 5:  # nobody was ever forgotten: the bound holds for every span
        assert limit.evicted == 0
        for times in allowed.values():
            for i, start in enumerate(times):
                for j in range(i, len(times)):
                    span = times[j] - start
                    assert j - i + 1 <= burst + rate * span + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.1, 20), burst=st.integers(1, 10), host=st.sampled_from(["x", "y"]))
def test_waiting_the_retry_after_is_always_enough(rate: float, burst: int, host: str) -> None:
    limit = OpenLimit(rate=rate, burst=burst)
    now = 0.0
    for _ in range(burst):
        assert limit.take(host, now).allowed
    verdict = limit.take(host, now)
    assert not verdict.allowed
    assert limit.take(host, now + verdict.retry_after * (1 + 1e-9)).allowed
