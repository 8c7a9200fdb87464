"""README.md's "Start here" and "A short tour" work exactly as written.

The shell lines are taken from README.md itself. The install line runs unchanged in a
copy of the repository (a fresh clone: its own ``.venv``, made by the README's command,
which also runs ``compass demo``); the tour then runs in a directory outside it, with that
environment active. Only the ports (free ones instead of 9190 and 9191; the commands
without a port get the tracker from COMPASS_TRACKER, whose default is 127.0.0.1:9190)
and the board's work directory are substituted. pip's own cache makes the install
quick after the suite's first one. Every process is stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("onnxruntime") is None or sys.prefix == sys.base_prefix,
        reason="the README's install uses pip and onnxruntime: run from a virtual environment"
               " made as the README says (the Debian-python stage has neither)"),
]

README = (ROOT / "README.md").read_text()
INSTALL_DEADLINE = 900.0
STEP_DEADLINE = 180.0


def section(title: str) -> str:
    """The text under the ``## TITLE`` heading, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def shell_blocks(text: str) -> list[list[str]]:
    """The indented code blocks of C{text}, each as its command lines (a line ending with
    a backslash joined to the next, as the shell does)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("    "):
            if current is None:
                current = []
                blocks.append(current)
            current.append(line[4:])
        elif line.strip() or current is None:
            current = None
    commands = []
    for block in blocks:
        joined = "\n".join(block).replace("\\\n", " ")
        commands.append([re.sub(r" +", " ", c).strip() for c in joined.splitlines() if c.strip()])
    return commands


def copy_of_repository(dest: Path) -> Path:
    """The repository's files (what a clone has) copied to C{dest}."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            timeout=60) if (ROOT / ".git").exists() else None
    if listed is not None and listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name, follow_symlinks=False)
    else:
        skip = shutil.ignore_patterns(
            ".git", ".venv", ".tvm-venv", "__pycache__", "*.so", "build", "*.egg-info",
            ".hypothesis", ".*_cache", "_build", "dropin.cache")
        shutil.copytree(ROOT, dest, symlinks=True, dirs_exist_ok=True, ignore=skip)
    return dest


def user_environment(**extra: str) -> dict[str, str]:
    """This environment without what would point at this checkout or another tracker, with
    this interpreter's folder first on PATH (so ``python3`` is a Python the suite runs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSAFEPATH")
           and not k.startswith("COMPASS_") or k == "COMPASS_BUILD_AIPU"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def board_is_free(status: str) -> bool:
    """Whether C{compass status --json} printed a free device with key cpu."""
    try:
        devices = json.loads(status)["devices"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(d.get("key") == "cpu" and d.get("state") == "free" for d in devices)


def run(command: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one README line with bash in C{cwd}; its output, or a failure that shows it."""
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=STEP_DEADLINE)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"`{command}` exited with {done.returncode}:\n{output}"
    return done.stdout


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory of this test's own, not under pytest's base directory: pytest removes
    all but the newest three of those, which other pytest runs on the same machine
    create while this long test runs."""
    with tempfile.TemporaryDirectory(prefix="compass-readme-") as path:
        yield Path(path)


@pytest.fixture
def daemons() -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    yield started
    for process, log in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        print(f"--- {shlex.join(process.args)}\n{log.read_text()}")  # type: ignore[arg-type]


def test_the_readme_install_and_tour_work_as_written_from_another_directory(
    tmp_path: Path, daemons: list[tuple[subprocess.Popen[bytes], Path]]
) -> None:
    (install,) = shell_blocks(section("Start here"))[0][:1]
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    start, use = shell_blocks(section("A short tour"))
    assert [line.split()[:4] for line in start] == [
        ["twistd", "-n", "--pidfile=", "compass-tracker"],
        ["twistd", "-n", "--pidfile=", "compass-server"]]

    clone = copy_of_repository(tmp_path / "compassd")
    done = subprocess.run(["bash", "-c", install], cwd=clone, env=user_environment(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=INSTALL_DEADLINE)
    assert done.returncode == 0, f"the README's install failed:\n{done.stdout}{done.stderr}"
    assert "accuracy" in done.stdout.lower(), done.stdout

    venv = clone / ".venv"
    tracker_port, board_port = free_port(), free_port()
    board_dir = tmp_path / "board"
    activated = user_environment(VIRTUAL_ENV=str(venv),
                                 COMPASS_TRACKER=f"127.0.0.1:{tracker_port}")
    activated["PATH"] = os.pathsep.join([str(venv / "bin"), activated["PATH"]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def substitute(line: str) -> str:
        return (line.replace("9190", str(tracker_port)).replace("9191", str(board_port))
                .replace("/tmp/compass-board", str(board_dir)))

    for n, line in enumerate(start):
        log = tmp_path / f"daemon-{n}.log"
        with log.open("wb") as out:
            daemons.append((subprocess.Popen(
                shlex.split(substitute(line)), cwd=elsewhere, env=activated,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT), log))

    # Wait for the board's own row (the tables' "free/total" header is there at once).
    status = ""
    end = time.monotonic() + STEP_DEADLINE
    while not board_is_free(status):
        for process, log in daemons:
            assert process.poll() is None, f"{process.args} exited:\n{log.read_text()}"
        assert time.monotonic() < end, f"the board never showed as free:\n{status}"
        time.sleep(0.2)
        status = subprocess.run(
            [str(venv / "bin" / "compass"), "status", "--json"], cwd=elsewhere,
            env=activated, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60).stdout

    outputs = [run(substitute(line), elsewhere, activated) for line in use]
    assert "cpu" in outputs[0]
    assert (elsewhere / "digits.onnx").is_file() and (elsewhere / "x.npy").is_file()
    assert (elsewhere / "out.npz").is_file()
    assert "PASS" in outputs[3] and "FAIL" not in outputs[3]
    assert json.loads(outputs[4])
    assert not (elsewhere / "twistd.pid").exists()
    for process, log in daemons:
        assert process.poll() is None, f"{process.args} exited:\n{log.read_text()}"
