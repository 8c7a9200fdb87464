"""Reloading the tokens file: new hellos use the new table, greeted connections keep
their identity and stay up; a broken file leaves the old table; ``user`` is a role."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from compassd.protocol import client_tracker as ct
from compassd.protocol._command import Hello
from compassd.protocol.errors import NotAuthorized
from compassd.tracker.access import Access, TokensFileError, hash_token, load_tokens
from compassd.tracker.tap import ReloadOnHangup
from tests.tracker.test_service import Harness


def write(path: Path, *entries: tuple[str, str]) -> None:
    path.write_text("".join(f"{hash_token(token)} {fields}\n" for token, fields in entries))


def test_user_is_accepted_as_the_name_of_the_client_role(tmp_path: Path):
    path = tmp_path / "tokens"
    write(path, ("t", "user=ann roles=user"))
    identity = load_tokens(path)[hash_token("t")]
    assert identity.roles == frozenset({"client"})
    assert Access(load_tokens(path)).identify("t", None, "user").user == "ann"


def test_an_unknown_role_is_still_refused_naming_the_line(tmp_path: Path):
    path = tmp_path / "tokens"
    write(path, ("t", "user=ann roles=superuser"))
    with pytest.raises(TokensFileError, match="line 1: unknown roles superuser"):
        load_tokens(path)


def reloading(tmp_path: Path) -> tuple[Harness, Path]:
    path = tmp_path / "tokens"
    write(path, ("ann-token", "user=ann roles=client"))
    h = Harness(access=Access(load_tokens(path)), tokens_path=str(path))
    h.viewer_token = "ann-token"
    return h, path


def test_a_reload_takes_new_tokens_without_dropping_greeted_connections(tmp_path: Path):
    h, path = reloading(tmp_path)
    ann = h.connect(token="ann-token")
    write(path, ("bob-token", "user=bob roles=client,admin"))
    assert h.tracker.reload_access()
    assert ann.open
    ann.ok(ct.ListDevices)  # still served, still as ann
    assert ann.server.identity is not None and ann.server.identity.user == "ann"
    bob = h.connect(token="bob-token")
    assert bob.server.identity is not None and bob.server.identity.user == "bob"
    late = h.connect(role=None)
    assert "not known" in late.refused(NotAuthorized, Hello, versions=[1], role="client",
                                       token="ann-token")


def test_a_broken_tokens_file_keeps_the_old_table(tmp_path: Path):
    h, path = reloading(tmp_path)
    path.write_text("this is not a token line\n")
    assert not h.tracker.reload_access()
    h.connect(token="ann-token")


def test_sighup_reloads_the_tokens_file(tmp_path: Path):
    h, path = reloading(tmp_path)
    write(path, ("bob-token", "user=bob"))

    class Reactor:
        def callFromThread(self, f: Any, *a: Any) -> None:
            f(*a)

    hangup = ReloadOnHangup(Reactor(), h.tracker)
    before = signal.getsignal(signal.SIGHUP)
    hangup.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        h.connect(token="bob-token")
    finally:
        hangup.stopService()
    assert signal.getsignal(signal.SIGHUP) is before
