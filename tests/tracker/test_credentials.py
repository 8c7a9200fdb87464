"""What the packages' postinsts create (compassd.tracker.credentials), on a scratch /etc.

The first test runs the module as a real child process, as the maintainer scripts do;
the others call its C{main} in-process. The files it makes are read back with the
tracker's own tokens parser and the server's own option parser.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from compassd.server import tap as server_tap
from compassd.tracker.access import Access, load_tokens
from compassd.tracker.credentials import create_credentials, main, token_in

ROOT = Path(__file__).resolve().parents[2]


def run(etc: Path, *flags: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--etc", str(etc), *flags]) == 0
    return out.getvalue()


def run_child(etc: Path, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "compassd.tracker.credentials", "--etc", str(etc), *flags],
        cwd=str(ROOT), capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_tracker_install_creates_the_tokens_file_and_an_admin_token(tmp_path: Path
                                                                      ) -> None:
    etc = tmp_path / "compassd"
    said = run_child(etc, "--tracker")
    tokens, admin = etc / "tokens", etc / "admin.token"
    assert mode(tokens) == 0o640 and mode(admin) == 0o600
    secret = token_in(admin)
    assert secret
    access = Access(load_tokens(tokens))
    identity = access.identify(secret, None, "admin")
    assert identity.user == "admin" and identity.may("admin")
    # the postinst output says where the admin token is and how to make more
    assert str(admin) in said and "compass token" in said
    assert "systemctl reload compass-tracker" in said
    assert secret not in said


def test_an_existing_tokens_file_is_never_replaced(tmp_path: Path) -> None:
    etc = tmp_path / "compassd"
    run(etc, "--tracker")
    before = (etc / "tokens").read_bytes(), (etc / "admin.token").read_bytes()
    assert run(etc, "--tracker") == ""
    assert ((etc / "tokens").read_bytes(), (etc / "admin.token").read_bytes()) == before


@pytest.mark.parametrize("order", [("--tracker", "--server"), ("--server", "--tracker")])
def test_a_board_on_the_trackers_host_gets_a_registered_token_in_either_order(
        tmp_path: Path, order: tuple[str, str]) -> None:
    """apt configures compass-tracker and compass-server in either order."""
    etc = tmp_path / "compassd"
    for package in order:
        if package == "--tracker":
            run(etc, "--tracker", "--server")
        else:
            run(etc, "--server", "--tracker-here")
    board = etc / "board.token"
    assert mode(board) == 0o600
    secret = token_in(board)
    assert secret
    identity = Access(load_tokens(etc / "tokens")).identify(secret, None, "board")
    assert identity.user.startswith("board-") and not identity.may("admin")
    # and the server reads it from the systemd credential directory
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "board.token").write_bytes(board.read_bytes())
    options = _server_options({"CREDENTIALS_DIRECTORY": str(credentials)})
    assert options["token"] == secret
    # a second configure changes nothing
    again = board.read_bytes(), (etc / "tokens").read_bytes()
    run(etc, "--tracker", "--server")
    run(etc, "--server", "--tracker-here")
    assert (board.read_bytes(), (etc / "tokens").read_bytes()) == again


def test_a_board_without_a_local_tracker_gets_a_file_saying_what_to_put_there(
        tmp_path: Path) -> None:
    etc = tmp_path / "compassd"
    said = run(etc, "--server")
    board = etc / "board.token"
    assert token_in(board) is None and "compass token" in board.read_text()
    assert str(board) in said
    assert not (etc / "tokens").exists()


def _server_options(environ: dict[str, str], *argv: str) -> server_tap.Options:
    saved = os.environ.get("CREDENTIALS_DIRECTORY")
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    os.environ.update(environ)
    try:
        options = server_tap.Options()
        options.parseOptions(["--key", "npu", "--listen", "tcp:0:interface=127.0.0.1",
                              "--workdir", "/nonexistent", *argv])
        return options
    finally:
        os.environ.pop("CREDENTIALS_DIRECTORY", None)
        if saved is not None:
            os.environ["CREDENTIALS_DIRECTORY"] = saved


def test_the_server_reads_the_first_token_line_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "board.token"
    path.write_text("# a comment\n\n  tok-123  trailing words\nsecond\n")
    assert _server_options({}, "--token-file", str(path))["token"] == "tok-123"


def test_an_explicit_token_file_without_a_token_is_refused_with_a_sentence(
        tmp_path: Path) -> None:
    path = tmp_path / "board.token"
    path.write_text("# only a comment\n")
    with pytest.raises(usage.UsageError, match="holds no token.*compass token"):
        _server_options({}, "--token-file", str(path))
    with pytest.raises(usage.UsageError, match="Cannot read --token-file"):
        _server_options({}, "--token-file", str(tmp_path / "missing"))


def test_an_empty_credential_means_no_token_and_no_credential_means_none(
        tmp_path: Path) -> None:
    (tmp_path / "board.token").write_text("# only a comment\n")
    options = _server_options({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert options["token"] is None
    assert _server_options({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")})["token"] \
        is None


def test_setup_gives_the_tokens_file_to_the_trackers_group(tmp_path: Path) -> None:
    gid = os.getgid()
    said = create_credentials(tmp_path, tracker=True, server=False, hostname="h",
                              group=lambda: gid)
    assert (tmp_path / "tokens").stat().st_gid == gid and said
