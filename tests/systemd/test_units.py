"""The systemd units and /etc/compassd files shipped in systemd/ (and packaged by debian/).

`systemd-analyze verify` must print nothing for every unit (it is skipped where
systemd-analyze or Debian's /usr/bin/twistd3, which the units run, is missing); every
daemon option is documented with its default in its configuration file.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

UNITS = ROOT / "systemd"
CONF = UNITS / "etc"
NAMES = ["compass-tracker.service", "compass-tracker.socket", "compass-proxy.service",
         "compass-server@.service"]


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.skipif(not os.access("/usr/bin/twistd3", os.X_OK),
                    reason="the units run /usr/bin/twistd3 (Debian's python3-twisted)")
@pytest.mark.parametrize("name", NAMES)
def test_systemd_analyze_verify_finds_nothing_to_say_about_the_unit(name: str) -> None:
    result = subprocess.run(["systemd-analyze", "verify", name], cwd=UNITS,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"systemd-analyze verify {name}:\n{result.stdout}{result.stderr}")


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith(".service")])
def test_every_daemon_is_a_notify_service_with_watchdog_restart_journal_and_hardening(
        name: str) -> None:
    service = _unit(name)["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    start = service["ExecStart"]
    assert start.startswith("/usr/bin/twistd3 --nodaemon --pidfile= --logfile=- ")
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert service["User"] and service["StateDirectory"]
    assert service["EnvironmentFile"].startswith("-/etc/compassd/")


def test_the_server_template_takes_its_key_from_the_instance_and_only_dev_aipu() -> None:
    service = _unit("compass-server@.service")["Service"]
    assert " --key %i " in service["ExecStart"]
    assert service["StateDirectory"] == "compass-server/%i"
    assert service["DevicePolicy"] == "closed"
    assert service["DeviceAllow"] == "/dev/aipu rw"
    text = (UNITS / "compass-server@.service").read_text()
    assert "EnvironmentFile=-/etc/compassd/server.conf" in text
    assert "EnvironmentFile=-/etc/compassd/server-%i.conf" in text


def test_the_tracker_socket_activates_the_tracker_service() -> None:
    socket_unit = _unit("compass-tracker.socket")
    assert socket_unit["Socket"]["Service"] == "compass-tracker.service"
    assert socket_unit["Socket"]["ListenStream"] == "9190"
    # no --listen in the unit: the tracker takes systemd's sockets when it gets some
    assert "--listen" not in _unit("compass-tracker.service")["Service"]["ExecStart"]


def _documented(conf: Path, options: type) -> list[str]:
    text = conf.read_text()
    names = [entry[0] for entry in getattr(options, "optParameters", [])]
    names += [entry[0] for entry in getattr(options, "optFlags", [])]
    names += [attr[4:].replace("_", "-") for attr in dir(options)
              if attr.startswith("opt_") and attr not in ("opt_help", "opt_version")]
    return [name for name in set(names) if f"--{name}" not in text]


def test_every_tracker_option_is_documented_in_tracker_conf() -> None:
    from compassd.tracker.tap import Options

    assert _documented(CONF / "tracker.conf", Options) == []


def test_every_server_option_is_documented_in_server_conf() -> None:
    from compassd.server.tap import Options

    assert _documented(CONF / "server.conf", Options) == []


def test_the_config_files_define_the_variables_the_units_expand() -> None:
    pairs = {"tracker.conf": ("COMPASS_TRACKER_ARGS", "--tokens /etc/compassd/tokens"),
             "proxy.conf": ("COMPASS_PROXY_ARGS", ""),
             "server.conf": ("COMPASS_SERVER_ARGS", ""),
             "server-KEY.conf.example": ("COMPASS_BOARD_ARGS", "")}
    for conf, (variable, value) in pairs.items():
        lines = [line for line in (CONF / conf).read_text().splitlines()
                 if line.startswith(f"{variable}=")]
        assert lines == [f'{variable}="{value}"'], conf


def test_the_packaged_tracker_runs_with_the_tokens_file_the_install_creates() -> None:
    """The unit's own default is the same as tracker.conf's, so a missing or emptied
    environment file does not start the tracker open; reload rereads the tokens."""
    from compassd.tracker.tap import Options

    service = _unit("compass-tracker.service")["Service"]
    assert service["Environment"] == '"COMPASS_TRACKER_ARGS=--tokens /etc/compassd/tokens"'
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "/etc/compassd/tokens" in (ROOT / "debian" / "compass-tracker.postrm").read_text()
    options = Options()
    with pytest.raises(Exception, match="tokens file /etc/compassd/tokens|Cannot read"):
        options.parseOptions(["--tokens", "/nonexistent/tokens"])


def test_the_board_token_is_a_systemd_credential_never_an_argument() -> None:
    service = _unit("compass-server@.service")["Service"]
    assert service["LoadCredential"] == "board.token:/etc/compassd/board.token"
    for text in (service["ExecStart"], (CONF / "server.conf").read_text(),
                 (CONF / "server-KEY.conf.example").read_text()):
        assert "--token " not in text and "--token=" not in text


def test_the_debian_packages_ship_the_verified_unit_files() -> None:
    debian = ROOT / "debian"
    for name in NAMES:
        package_file = debian / name
        assert package_file.is_symlink(), f"debian/{name} should link to systemd/{name}"
        assert package_file.resolve() == (UNITS / name).resolve()
