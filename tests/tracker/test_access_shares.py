"""Shares and accounts in the tokens file: parsed, checked, and given to fair share."""

from __future__ import annotations

from pathlib import Path

import pytest

from compassd.tracker.access import Access, TokensFileError, load_tokens, shares_of
from tests.tracker.test_access_reload import write
from tests.tracker.test_service import Harness


def test_shares_and_accounts_are_read_and_split_among_members(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path,
          ("a", "user=ann share=1 account=physics account-share=4"),
          ("b", "user=ben share=3 account=physics"),
          ("b2", "user=ben share=3 account=physics"),
          ("c", "user=cat share=2"),
          ("d", "user=dan roles=client"))
    tokens = load_tokens(path)
    assert shares_of(tokens) == {"ann": 1.0, "ben": 3.0, "cat": 2.0, "dan": 1.0}
    assert shares_of(None) == {}


@pytest.mark.parametrize(("lines", "error"), [
    ([("a", "user=ann share=0")], "line 1: share=0 is not a positive number"),
    ([("a", "user=ann share=lots")], "line 1: share=lots is not a positive number"),
    ([("a", "user=ann account-share=2")], "line 1: account-share= needs an account="),
    ([("a", "user=ann share=1"), ("b", "user=ann share=2")],
     "line 2: user ann has share=1 account=None on another line"),
    ([("a", "user=ann account=p account-share=1"), ("b", "user=ben account=p account-share=2")],
     "line 2: account p has account-share=1 on another line"),
    ([("a", "user=ann weight=2")], "line 1: 'weight=2' is not one of user=, roles="),
])
def test_a_mistake_in_shares_names_the_line(tmp_path: Path, lines: list[tuple[str, str]],
                                           error: str) -> None:
    path = tmp_path / "tokens"
    write(path, *lines)
    with pytest.raises(TokensFileError, match=error):
        load_tokens(path)


def test_a_reload_gives_the_scheduler_the_new_shares(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, ("a", "user=ann"), ("b", "user=ben"))
    h = Harness(access=Access(load_tokens(path)), tokens_path=str(path))
    assert h.tracker.scheduler.share("ann") == 1.0
    write(path, ("a", "user=ann share=3"), ("b", "user=ben"))
    assert h.tracker.reload_access()
    assert h.tracker.scheduler.share("ann") == 3.0
    assert h.tracker.scheduler.share("ben") == 1.0
