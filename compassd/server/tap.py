"""``twistd compass-server``: its options and how they become a running service."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.python import usage

from ..daemon_options import check_tracker_and_advertise, endpoint_option, positive
from ..listening import Listener, cleartext_host, server_cleartext, warn_cleartext
from ..protocol.limits import (
    HELLO_TIMEOUT,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_UNAUTHENTICATED,
    ConnectionGuard,
)
from ..systemd import SystemdNotifier
from .sessiondir import MAX_ENTRIES

BACKENDS = ("aipu", "onnx")


def _size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale != 1 else text
    value = int(float(number) * scale)
    if value < 1:
        raise ValueError(f"{text} is not a positive size")
    return value


def _size_or_zero(text: str) -> int:
    """Like L{_size}, but 0 is allowed (it turns a check off)."""
    return 0 if text.strip() in ("0", "0K", "0M", "0G") else _size(text)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive count")
    return value


MIN_EXECUTOR_MEMORY = 2 << 30
"""The least default --executor-memory: an executor with its backend loaded needs a
few hundred MiB of address space before any model."""


def default_executor_memory() -> int:
    """Half of this machine's memory (MemTotal), and at least L{MIN_EXECUTOR_MEMORY}."""
    total = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not total:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(MIN_EXECUTOR_MEMORY, total // 2)


class Options(usage.Options):
    synopsis = "--key KEY [options]"
    longdesc = (
        "Run compass-server on a board: it registers the board's device with the tracker"
        " under KEY (and keeps it registered, reconnecting as needed), accepts only"
        " clients holding a ticket the tracker granted for it, and runs each session's"
        " models in a separate executor process that drives the NPU through"
        " libaipudrv.so (--backend aipu) or ONNX Runtime on the CPU (--backend onnx)."
        " It never runs code a client sends. Durations are in seconds."
    )

    optParameters = [
        ["key", "k", None, "The pool to join, e.g. npu-x2 (required)."],
        ["tracker", "t", "127.0.0.1:9190",
         "The tracker: HOST:PORT or a Twisted client endpoint string"
         " (tcp:host=H:port=P, tls:...); for a standby pair both, separated by a comma"
         " (a:9190,b:9190): the board follows the active one."],
        ["proxy", None, None,
         "Reach the tracker and clients through the compass-proxy at this HOST:PORT or"
         " Twisted client endpoint string, for a board that cannot accept connections:"
         " it dials out and keeps that link up; the proxy's address is advertised and"
         " --listen is not needed."],
        ["backend", "b", "aipu", "How models run: aipu (the NPU driver) or onnx (CPU)."],
        ["driver", None, None,
         "Path of libaipudrv.so for --backend aipu (default: $COMPASS_AIPU_DRIVER, then"
         " the library search path)."],
        ["advertise", None, None,
         "HOST:PORT clients should connect to (default: this host's name and the port"
         " of the first --listen)."],
        ["device", None, None, "This device's name at the tracker (default: HOST-KEY)."],
        ["max-lease", None, None, "Longest lease this device accepts.", positive],
        ["workdir", None, None,
         "Where session directories live (default: $STATE_DIRECTORY, else"
         " /var/lib/compass-server/KEY). Leftover session directories there are removed"
         " at start."],
        ["token-file", None, None,
         "File holding this board's token for the tracker (its first line that is not a"
         " # comment). Default: the systemd credential board.token"
         " ($CREDENTIALS_DIRECTORY/board.token, from LoadCredential=) if there is one,"
         " else none. Never pass a token on the command line: ps shows it."],
        ["max-upload", None, "4G",
         "Most bytes a session may store (K, M, G suffixes).", _size],
        ["max-files", None, str(MAX_ENTRIES),
         "Most files and folders a session may hold (uploads, and the folders their"
         " paths make).", _count],
        ["executor-memory", None, None,
         "Most memory (address space, K, M, G suffixes) a session's executor may use"
         " besides its tensor arena; a model that needs more fails with a sentence and"
         " the board keeps serving (0: no limit). Default: half of this machine's"
         " memory, at least 2G.", _size_or_zero],
        ["cache-size", None, None,
         "Most bytes the model cache keeps (K, M, G suffixes; 0: no cache). Default: a"
         " quarter of the work directory's file system. Uploads are kept by SHA-256 and"
         " a client naming one gets it without sending it again.", _size_or_zero],
        ["run-timeout", None, 300.0,
         "Longest a single run or benchmark may take unless the client asks for less;"
         " past it the executor is killed.", positive],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted endpoint, e.g."
         " tcp:9291:interface=127.0.0.1 (off unless given; see docs/monitoring.md)."],
        ["health-interval", None, 30.0,
         "How often to check the backend's health while idle.", positive],
        ["min-free-disk", None, "64M",
         "Below this much free space in --workdir the board reports itself unhealthy"
         " (quarantined, shown in compass status); 0 turns the check off.",
         _size_or_zero],
        ["min-free-shm", None, "16M",
         "Below this much free shared memory (/dev/shm, where tensor arenas live) the"
         " board reports itself unhealthy; 0 turns the check off.", _size_or_zero],
        ["max-connections-per-address", None, str(MAX_CONNECTIONS_PER_ADDRESS),
         "Client connections one IP address may have open at once before they say hello"
         " ('0' for no limit)."],
        ["max-unauthenticated", None, str(MAX_UNAUTHENTICATED),
         "Client connections from all addresses together that may wait for hello at once;"
         " past it the oldest from the busiest address is closed ('0' for no limit)."],
        ["hello-timeout", None, str(HELLO_TIMEOUT),
         "A client connection that has not said hello within this time is closed ('0'"
         " for never)."],
    ]
    compData = usage.Completions(
        optActions={
            "backend": usage.CompleteList(list(BACKENDS)),
            "driver": usage.CompleteFiles(),
            "workdir": usage.CompleteDirs(),
            "token-file": usage.CompleteFiles(),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tags"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen for clients on this Twisted endpoint (repeatable; default tcp:9191),
        e.g. tcp:9191:interface=10.0.0.5, systemd:domain=INET:index=0."""
        self["listen"].append(endpoint)

    def opt_tag(self, tag: str) -> None:
        """A tag requests can ask for, e.g. dram-4g (repeatable)."""
        self["tags"].append(tag)

    def postOptions(self) -> None:
        if not self["key"]:
            raise usage.UsageError("--key is required: the pool this board joins.")
        if self["backend"] not in BACKENDS:
            raise usage.UsageError(
                f"--backend must be one of {', '.join(BACKENDS)}, not {self['backend']!r}.")
        try:
            count = int(self["max-connections-per-address"])
            waiting = int(self["max-unauthenticated"])
            hello = float(self["hello-timeout"])
            if count < 0 or hello < 0 or waiting < 0:
                raise ValueError("it is negative")
        except ValueError as e:
            raise usage.UsageError(
                "--max-connections-per-address, --max-unauthenticated and --hello-timeout"
                f" take a number: {e}."
            ) from e
        self["max-connections-per-address"] = count or None
        self["max-unauthenticated"] = waiting or None
        self["hello-timeout"] = hello or None
        if isinstance(self["max-upload"], str):  # a default is not coerced by usage
            self["max-upload"] = _size(self["max-upload"])
        if isinstance(self["max-files"], str):
            self["max-files"] = _count(self["max-files"])
        if self["executor-memory"] is None:
            self["executor-memory"] = default_executor_memory()
        elif self["executor-memory"] == 0:
            self["executor-memory"] = None
        for name in ("min-free-disk", "min-free-shm"):
            if isinstance(self[name], str):
                self[name] = _size_or_zero(self[name])
        if self["proxy"]:
            self["proxy"] = endpoint_option(self, "proxy")
        if not self["listen"] and not self["proxy"]:
            self["listen"] = ["tcp:9191"]
        check_tracker_and_advertise(self, several=True)
        if self["device"] is None:
            self["device"] = f"{socket.gethostname()}-{self['key']}"
        if self["workdir"] is None:
            state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
            self["workdir"] = state or f"/var/lib/compass-server/{self['key']}"
        self["token"] = None
        credential = Path(os.environ.get("CREDENTIALS_DIRECTORY") or "/nonexistent",
                          "board.token")
        explicit = bool(self["token-file"])
        if not explicit and credential.is_file():
            self["token-file"] = str(credential)
        if self["token-file"]:
            try:
                text = Path(self["token-file"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                why = getattr(e, "strerror", None) or str(e)
                raise usage.UsageError(
                    f"Cannot read --token-file {self['token-file']}: {why}.") from e
            words = [line.split()[0] for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
            if words:
                self["token"] = words[0]
            elif explicit:
                raise usage.UsageError(
                    f"--token-file {self['token-file']} holds no token (only blank lines"
                    " and comments): put this board's token there (on the tracker's host:"
                    " compass token NAME --roles board), or leave --token-file out for a"
                    " tracker without tokens.")


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from .board import BoardService

    top = service.MultiService()
    board = BoardService.from_options(options, reactor)
    board.setServiceParent(top)
    listeners = []
    guarded = ConnectionGuard(board.factory(), reactor, what="board",
                              per_address=options["max-connections-per-address"],
                              hello_timeout=options["hello-timeout"],
                              unauthenticated=options["max-unauthenticated"])
    for endpoint in options["listen"]:
        listener = Listener(reactor, "compass-server", endpoint, guarded)
        listener.ready.addCallback(board.listening)
        listener.setServiceParent(top)
        listeners.append(listener)
    if options["metrics"]:
        from ..metrics import metrics_listener
        from .metrics import ServerMetrics

        board.metrics = ServerMetrics(
            devices=lambda: {board.device: (board.link.board.healthy, board.backend)},
            sessions=lambda: 0 if board.session is None else 1)
        metrics_listener(reactor, "compass-server", options["metrics"],
                         board.metrics.registry).setServiceParent(top)
    warn_server_cleartext(options)
    SystemdNotifier(
        reactor,
        is_ready=lambda: board.link.registered
        and all(listener.port is not None for listener in listeners),
        status=lambda: server_status(board),
    ).setServiceParent(top)
    return top


def warn_server_cleartext(options: Options) -> None:
    """One warning for each kind of secret this board would move without TLS beyond
    this host: its own token to the tracker (or proxy), clients' tickets to it."""
    upstreams = [options["proxy"]] if options["proxy"] \
        else options["tracker-endpoint"].split(",")
    host = next((h for h in map(cleartext_host, upstreams) if h is not None), None)
    if options["token"] and host is not None:
        warn_cleartext("This board's token", f"to {host}",
                       "give --tracker (or --proxy) as tls:host=HOST:port=PORT:ca=CA.pem")
    for endpoint in options["listen"]:
        if server_cleartext(endpoint):
            warn_cleartext("Clients' tickets", f"to this board on {endpoint}",
                           "listen with --listen ssl:9191:privateKey=KEY.pem:certKey=CERT.pem")


def server_status(board: Any) -> str:
    """The board server's one-line state for systemd, e.g. C{registered with tracker,
    idle}."""
    link = board.link
    if not link.registered:
        text = f"not registered: connecting to the tracker at {link.endpoint}"
    elif board.session is not None:
        text = f"registered with tracker, serving a session of {board.session.user}"
    else:
        text = "registered with tracker, idle"
    if not link.board.healthy and link.board.health_detail:
        text += f"; unhealthy: {link.board.health_detail}"
    return text
