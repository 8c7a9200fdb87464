"""Where the tracker's state lives: the C{--store} option and its default."""

from __future__ import annotations

import os

from .records import IStore

STORE_FILE = "tracker.sqlite"

NO_STORE = ("none", "memory")


def default_sqlite_path(environ: dict[str, str] | None = None) -> str:
    """The default store file, C{tracker.sqlite} in: systemd's C{StateDirectory=}
    (C{$STATE_DIRECTORY}: /var/lib/compass-tracker for the packaged unit); otherwise
    /var/lib/compass-tracker for root, and C{$XDG_STATE_HOME/compassd}
    (~/.local/state/compassd) for anyone else."""
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return os.path.join(state, STORE_FILE)
    if os.geteuid() == 0:
        return os.path.join("/var/lib/compass-tracker", STORE_FILE)
    home = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return os.path.join(home, "compassd", STORE_FILE)


def store_for(spec: str | None, environ: dict[str, str] | None = None) -> IStore | None:
    """The store C{spec} names: C{postgresql://...} (or C{postgres://}), C{sqlite:PATH}
    or a file path; C{none} (or C{memory}) for no store; None for the default file."""
    if spec is not None and spec.strip().lower() in NO_STORE:
        return None
    if spec is not None and spec.startswith(("postgresql://", "postgres://")):
        from .postgresql import PostgresStore

        return PostgresStore(spec)
    from .sqlite import SqliteStore

    if spec is None or not spec.strip():
        return SqliteStore(default_sqlite_path(environ))
    path = spec[len("sqlite:"):] if spec.startswith("sqlite:") else spec
    return SqliteStore(os.path.abspath(os.path.expanduser(path)))
