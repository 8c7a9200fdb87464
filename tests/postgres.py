"""A real PostgreSQL server for tests, from the distribution's binaries (Debian's
``postgresql`` package puts them in /usr/lib/postgresql/VERSION/bin).

The server runs in a temporary directory with its Unix socket there and no TCP at all.
``initdb`` refuses to run as root, so as root the cluster belongs to ``nobody`` and the
binaries are run as that user (``subprocess``'s ``user=``, so the PID we hold is the
postmaster's own); the server is stopped by that PID.

Tests that need it skip with the reason when the binaries or psycopg are missing, unless
``COMPASS_REQUIRE_POSTGRES=1`` (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REQUIRED = os.environ.get("COMPASS_REQUIRE_POSTGRES") == "1"


def unavailable(reason: str) -> None:
    """Skip the test (or fail it, where PostgreSQL is required) with C{reason}."""
    if REQUIRED:
        pytest.fail(f"COMPASS_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def find_bindir() -> str | None:
    """The directory with initdb and postgres: $COMPASS_PG_BINDIR, the newest
    /usr/lib/postgresql/*/bin, or where initdb is on $PATH."""
    candidates = [os.environ.get("COMPASS_PG_BINDIR", "")]
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                  else 0, reverse=True)
    candidates += versions
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(os.path.realpath(initdb)).parent))
    for candidate in candidates:
        if candidate and all(os.access(os.path.join(candidate, b), os.X_OK)
                             for b in ("initdb", "postgres")):
            return candidate
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; L{start} and L{stop} may be
    called again (the data stays), so a test can make the database go away and come
    back."""

    USER = "compass"

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="compass-pg-")  # short: socket paths are short
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.user: int | None = None
        self.group: int | None = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.user, self.group = nobody.pw_uid, nobody.pw_gid
            os.chown(self.dir, self.user, self.group)
        self._run([os.path.join(bindir, "initdb"), "-D", self.data, "-U", self.USER,
                   "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv, cwd=self.dir, user=self.user, group=self.group, capture_output=True,
            timeout=120, env=self._env())
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": self.dir}

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.USER}@/{dbname}?host={self.dir}"

    def start(self, deadline: float = 60.0) -> None:
        assert self.process is None
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data, "-k", self.dir,
             "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=30"],
            cwd=self.dir, user=self.user, group=self.group, stdout=log,
            stderr=subprocess.STDOUT, env=self._env())
        log.close()
        import psycopg

        end = time.monotonic() + deadline
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"postgres exited ({code}): {self.read_log()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(
                        f"postgres did not accept connections in {deadline} s:"
                        f" {self.read_log()}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def read_log(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_server() -> PostgresServer:
    """A started server, or skip (fail, where required) saying what is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg 3 is not installed (pip install 'psycopg[binary]' or apt"
                    " install python3-psycopg)")
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL's initdb and postgres were not found (apt install"
                    " postgresql, or set COMPASS_PG_BINDIR)")
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    return server
