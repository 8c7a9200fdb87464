"""docs/security.md's "set up TLS for a lab" recipe, followed: its openssl lines make the
CA and the tracker's certificate (run by bash, as written, with the tracker named
localhost / 127.0.0.1), its COMPASS_TRACKER_ARGS line starts a real tracker (on
loopback, in a scratch directory instead of /etc/compassd) with a tokens file as the
packages make it, and a client that trusts the recipe's ca.crt is served while one that
trusts another CA is refused.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from compassd.client import connect_tracker
from compassd.tracker.credentials import create_credentials, token_in
from tests.helpers import daemon_log, free_port, start_twistd, stop, wait_logged

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tls-lab-recipe"


def recipe() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    block = after[after.index("```sh\n") + 6:]
    return block[:block.index("```")].splitlines()


def test_the_recipe_is_ten_lines_and_names_the_tracker_first() -> None:
    lines = recipe()
    assert len(lines) <= 10
    assert re.match(r"TRACKER_NAME=\S+ TRACKER_IP=\S+\s", lines[0])


def run_openssl_lines(directory: Path, name: str, ip: str) -> None:
    commands = [line for line in recipe() if line.startswith("openssl ")]
    assert len(commands) == 3  # the CA, the tracker's request, its certificate
    script = f"set -e\nTRACKER_NAME={name} TRACKER_IP={ip}\n" + "\n".join(commands)
    subprocess.run(["bash", "-c", script], cwd=str(directory), check=True,
                   capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_tracker_set_up_by_the_recipe_serves_clients_that_trust_its_ca(
        tmp_path: Path) -> None:
    etc, other = tmp_path / "etc", tmp_path / "other"
    etc.mkdir()
    other.mkdir()
    run_openssl_lines(etc, "localhost", "127.0.0.1")
    run_openssl_lines(other, "localhost", "127.0.0.1")  # a CA the client must not trust
    create_credentials(etc, tracker=True, server=False, hostname="h",
                       group=lambda: None)
    admin = token_in(etc / "admin.token")
    (conf,) = [line for line in recipe() if line.startswith("COMPASS_TRACKER_ARGS=")]
    port = free_port()
    value = shlex.split(conf.partition("=")[2])[0]
    args = value.replace("/etc/compassd/", f"{etc}/").replace(
        "ssl:9190:", f"ssl:{port}:interface=127.0.0.1:").split()
    assert args[:2] == ["--tokens", f"{etc}/tokens"]
    proc, _ = start_twistd("compass-tracker", *args)
    try:
        wait_logged(proc, f"listening on tcp 127.0.0.1:{port}")
        client = connect_tracker("127.0.0.1", port, admin, tls=True,
                                 ca=str(etc / "ca.crt"), timeout=20.0)
        try:
            assert client.devices() == []
        finally:
            client.close()
        with pytest.raises(Exception, match="not signed by|wrong CA") as refused:
            connect_tracker("127.0.0.1", port, admin, tls=True,
                            ca=str(other / "ca.crt"), timeout=20.0)
        assert "Traceback" not in str(refused.value)
    finally:
        stop(proc)
        print(daemon_log(proc))
