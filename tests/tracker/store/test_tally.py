"""Waits in buckets, and the histograms the store keeps (compassd.tracker.store.tally)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compassd.tracker.store.tally import (
    Tally,
    bucket,
    bucket_value,
    counts,
    encode,
    summed,
)


def histogram(values: Iterable[float]) -> dict[int, int]:
    """The buckets of C{values}: bucket -> how many."""
    found: dict[int, int] = {}
    for w in values:
        found[bucket(w)] = found.get(bucket(w), 0) + 1
    return found


waits = st.floats(min_value=0.0, max_value=3e7, allow_nan=False)


@given(a=waits, b=waits)
def test_buckets_keep_the_order_of_waits(a: float, b: float) -> None:
    if a <= b:
        assert bucket(a) <= bucket(b)


@given(w=st.floats(min_value=0.001, max_value=3e7))
def test_a_bucket_value_is_within_4_5_percent_of_every_wait_in_it(w: float) -> None:
    assert bucket_value(bucket(w)) == pytest.approx(w, rel=0.045)


def test_waits_under_a_millisecond_count_as_none() -> None:
    assert bucket(0.0) == bucket(0.0009) == 0 and bucket_value(0) == 0.0
    assert bucket(0.001) == 1


@given(parts=st.lists(st.lists(waits, max_size=20), max_size=5))
def test_joined_histograms_add_up(parts: list[list[float]]) -> None:
    joined = "".join(encode(histogram(p)) for p in parts)
    assert summed(joined) == histogram(w for p in parts for w in p)
    # a prune appends negative counts: what is taken away is gone
    if parts:
        less = joined + encode({b: -n for b, n in histogram(parts[0]).items()})
        assert summed(less) == histogram(w for p in parts[1:] for w in p)


def test_a_broken_histogram_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="not whole"):
        summed("010000")


@given(values=st.lists(waits, min_size=1, max_size=40), q=st.sampled_from([1, 50, 95, 100]))
def test_a_bucketed_percentile_is_the_bucket_of_the_exact_one(values: list[float],
                                                               q: int) -> None:
    exact = Tally(waits=list(values))
    ranked = sorted(values)
    assert exact.wait_percentile(q) == ranked[max(1, (q * len(values) + 99) // 100) - 1]
    bucketed = Tally(waits=list(values))
    bucketed.bucket_all()
    assert bucketed.granted() == len(values)
    assert bucketed.wait_percentile(q) == bucket_value(bucket(exact.wait_percentile(q) or 0))


def test_what_a_row_adds_to_a_window() -> None:
    # a lease from 5 to 20, granted at 8, seen through [10, 30): 10 s, its wait not
    assert counts(5.0, 8.0, 20.0, 10.0, 30.0) == counts(5.0, 8.0, 20.0, 10.0, 30.0)
    found = counts(5.0, 8.0, 20.0, 10.0, 30.0)
    assert found is not None and (found.leases, found.seconds, found.wait) == (1, 10.0, None)
    assert counts(5.0, 8.0, 9.0, 10.0, 30.0) is None  # ended before the window
    unserved = counts(5.0, None, 12.0, 10.0, 30.0)
    assert unserved is not None and unserved.unserved == 1
    assert counts(5.0, None, 31.0, 10.0, 30.0) is None  # still waiting at the window's end
