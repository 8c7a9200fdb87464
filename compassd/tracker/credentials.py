"""The credentials a fresh install creates, so that nothing starts open.

The Debian packages' maintainer scripts run ``python3 -m compassd.tracker.credentials``
as root when they are configured:

- ``--tracker`` (compass-tracker): if ``ETC/tokens`` is missing, make an admin token,
  write it to ``ETC/admin.token`` (mode 0600, root only) and its hash to a new
  ``ETC/tokens`` (mode 0640, owner root, group compass-tracker), which the default
  ``COMPASS_TRACKER_ARGS`` names.
- ``--server`` (compass-server; with ``--tracker-here`` when compass-tracker is
  installed on this host too): make sure ``ETC/board.token`` exists (mode 0600, root
  only; systemd hands it to every ``compass-server@`` instance as the credential
  ``board.token``). Without a tracker on this host it holds only a comment saying what
  to put there.
- both: when this host has the tokens file and ``board.token`` holds no token yet, make a
  board token, write it there and add its hash to the tokens file, so a tracker and a
  board installed on one host work together at once.

Existing files are never changed except to add a board token to a ``board.token`` that
has none and its line to the tokens file. Each step prints what it did, and where the
admin token is, for the postinst output.
"""

from __future__ import annotations

import argparse
import grp
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from .access import hash_token, new_token

TRACKER_GROUP = "compass-tracker"

BOARD_PLACEHOLDER = """\
# compass-server's board token: the first line here that is not a comment.
# systemd passes this file to every compass-server@KEY instance as the credential
# board.token (LoadCredential=); it is never on a command line.
# On the tracker's host, make one and add its line to /etc/compassd/tokens:
#     compass token board-NAME --roles board
#     systemctl reload compass-tracker
# then put the token (not the line) below and: systemctl restart 'compass-server@*'
"""


def token_in(path: Path) -> str | None:
    """The token in a token file: its first line that is neither blank nor a comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split()[0]
    return None


def _write_new(path: Path, text: str, mode: int, group: int | None = None) -> None:
    """Create C{path} with C{text}, readable only as C{mode} says from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if group is not None:
            os.fchown(fd, 0 if os.geteuid() == 0 else -1, group)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def ensure_tokens_file(etc: Path, group: int | None) -> list[str]:
    """Create the tokens file with a new admin token if there is none."""
    tokens, admin = etc / "tokens", etc / "admin.token"
    if tokens.exists():
        return []
    secret = new_token()
    if admin.exists():
        admin.unlink()  # a token whose hash is in no tokens file is worth nothing
    _write_new(admin, secret + "\n", 0o600)
    _write_new(tokens, (
        "# compass-tracker's tokens: sha256:HASH user=NAME roles=client,board,admin"
        " keys=PATTERNS\n"
        "# Add lines printed by `compass token NAME --roles ROLES`, then:"
        " systemctl reload compass-tracker\n"
        f"{hash_token(secret)} user=admin roles=admin keys=*\n"), 0o640, group)
    return [
        f"compass-tracker: created {tokens} with an admin token; the token itself is in"
        f" {admin} (readable by root only).",
        f"  Use it:        COMPASS_TOKEN=$(sudo cat {admin}) compass status",
        "  Client tokens: compass token NAME --roles client   (boards: --roles board);"
        f" add the printed line to {tokens}, then systemctl reload compass-tracker.",
    ]


def ensure_board_token_file(etc: Path, tracker_here: bool) -> list[str]:
    board = etc / "board.token"
    if board.exists():
        return []
    _write_new(board, BOARD_PLACEHOLDER, 0o600)
    if tracker_here or (etc / "tokens").exists():
        return []  # given a token by ensure_local_board_token, now or with the tracker
    return [f"compass-server: put this board's token into {board}; it says how."]


def ensure_local_board_token(etc: Path, hostname: str) -> list[str]:
    """On a host with the tracker's tokens file, give an empty C{board.token} a token."""
    tokens, board = etc / "tokens", etc / "board.token"
    if not tokens.exists() or not board.exists() or token_in(board) is not None:
        return []
    secret = new_token()
    user = f"board-{hostname}"
    with tokens.open("a", encoding="utf-8") as table:
        table.write(f"{hash_token(secret)} user={user} roles=board keys=*\n")
    with board.open("a", encoding="utf-8") as out:
        out.write(secret + "\n")
    return [f"compass-server: made the board token of this host ({user}), in {board};"
            f" its line is in {tokens}."]


def create_credentials(etc: Path, *, tracker: bool, server: bool, hostname: str,
          group: Callable[[], int | None], tracker_here: bool = False) -> list[str]:
    """Do what the packages need; return the lines to print.

    C{tracker} creates the tokens file (only compass-tracker's postinst, once its group
    exists); C{server} the board token file; C{tracker_here} says compass-tracker is
    installed on this host, so its postinst will give the board a token."""
    etc.mkdir(parents=True, exist_ok=True)
    said: list[str] = []
    if tracker:
        said += ensure_tokens_file(etc, group())
    if server:
        said += ensure_board_token_file(etc, tracker_here or tracker)
    return said + ensure_local_board_token(etc, hostname)


def _tracker_group() -> int | None:
    try:
        return grp.getgrnam(TRACKER_GROUP).gr_gid
    except KeyError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m compassd.tracker.credentials",
        description="Create the tokens file, admin token and board token a fresh"
                    " compassd install needs (run by the Debian packages).")
    parser.add_argument("--etc", default="/etc/compassd", type=Path)
    parser.add_argument("--tracker", action="store_true",
                        help="the tracker is installed here")
    parser.add_argument("--server", action="store_true",
                        help="compass-server is installed here")
    parser.add_argument("--tracker-here", action="store_true",
                        help="compass-tracker is installed here but not yet configured")
    args = parser.parse_args(argv)
    said = create_credentials(args.etc, tracker=args.tracker, server=args.server,
                         hostname=socket.gethostname().split(".")[0] or "localhost",
                         group=_tracker_group, tracker_here=args.tracker_here)
    for line in said:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
