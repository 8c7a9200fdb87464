"""The conversation between a board server and its executor process.

The executor is a child process that owns the backend (the NPU driver through
C{compassd._aipu}, or ONNX Runtime). It speaks AMP over its file descriptors 3 (it reads
commands) and 4 (it writes answers), never over stdout: drivers print there. Tensors do
not cross this channel: they live in a shared-memory arena (a file both processes map),
and the commands carry only their place in it (C{offset}, C{nbytes}).

The executor says L{Ready} once its backend is loaded, so a warm spare executor can wait
for the next session with its start-up already paid.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand
from .session import SIGNATURE

SLOT = [
    (b"name", amp.Unicode()),
    (b"dtype", amp.Unicode()),
    (b"shape", amp.ListOf(amp.Integer())),
    (b"offset", amp.Integer()),
    (b"nbytes", amp.Integer()),
]
"""A tensor in the shared arena."""


class Ready(CompassCommand):
    """Executor → server, once: the backend is loaded; C{info} describes it."""

    commandName = b"exec-ready"
    arguments = [
        (b"backend", amp.Unicode()),
        (b"info", amp.ListOf(amp.Unicode())),
        (b"pid", amp.Integer()),
    ]
    requiresAnswer = False


class Attach(CompassCommand):
    """Server → executor: work in C{workdir} (the session directory) and map the arena."""

    commandName = b"exec-attach"
    arguments = [
        (b"workdir", amp.Unicode()),
        (b"arena", amp.Unicode()),
        (b"arena_size", amp.Integer()),
        (b"session", amp.Unicode()),
    ]
    response = []


class CheckHealth(CompassCommand):
    """Is the backend usable (driver context and device status, or a tiny model run)?"""

    commandName = b"exec-health"
    arguments = []
    response = [(b"healthy", amp.Boolean()), (b"detail", amp.Unicode())]


class Load(CompassCommand):
    commandName = b"exec-load"
    arguments = [(b"path", amp.Unicode()), (b"manifest", amp.Unicode(optional=True))]
    response = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(SIGNATURE)),
        (b"outputs", amp.AmpList(SIGNATURE)),
    ]


class Execute(CompassCommand):
    """Run C{model} on the input slots; write outputs into the arena from C{out_offset}
    (at most C{out_capacity} bytes) and answer their slots."""

    commandName = b"exec-run"
    arguments = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(SLOT)),
        (b"out_offset", amp.Integer()),
        (b"out_capacity", amp.Integer()),
    ]
    response = [(b"outputs", amp.AmpList(SLOT)), (b"seconds", amp.Float())]


class Measure(CompassCommand):
    """Benchmark C{model} on the input slots (see L{compassd.protocol.session.Benchmark})."""

    commandName = b"exec-benchmark"
    arguments = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(SLOT)),
        (b"number", amp.Integer()),
        (b"repeat", amp.Integer()),
        (b"warmup", amp.Integer()),
    ]
    response = [(b"times", amp.ListOf(amp.Float()))]
