"""`compass status` with a standby pair: one line says which tracker is active and what
the others are (compassd.cli.status.trackers_line)."""

from __future__ import annotations

from compassd.cli.status import trackers_line


def test_the_trackers_line_names_the_active_one_and_what_the_others_are() -> None:
    assert trackers_line([
        {"address": "a:9190", "state": "active"},
        {"address": "b:9190", "state": "standby", "active": "a:9190"},
        {"address": "c:9190", "state": "unreachable",
         "detail": "Cannot reach the tracker at c:9190: Connection refused."},
    ]) == ("Trackers: a:9190 active; b:9190 standby (redirects to a:9190); c:9190"
           " unreachable (Cannot reach the tracker at c:9190: Connection refused)")
    assert trackers_line([
        {"address": "a:9190", "state": "active"},
        {"address": "b:9190", "state": "standby", "active": ""},
        {"address": "d:9190", "state": "active"},
    ]) == ("Trackers: a:9190 active; b:9190 standby (redirects to nobody yet); d:9190"
           " active too: it does not share the first one's database")
