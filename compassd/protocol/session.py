"""The conversation between a client and a board server (``compass-server``): a session.

After L{Hello} (role C{client}), the client opens the session with the ticket the tracker
granted (L{OpenSession}); nothing else is served before that. Large values travel as raw
byte runs (L{compassd.protocol.peer.CompassPeer.expect_raw}) right after the box that
announces them:

- L{Upload}: the client writes the command box and then exactly C{size} bytes; the
  answer comes once they have all arrived and their SHA-256 matched.
- L{UploadDigestAfter} (when the board lists L{FEATURE_DIGEST_AFTER}): as L{Upload},
  but the SHA-256 follows the bytes, so a client hashes the file while it sends it and
  the board while it arrives, instead of the client reading the whole file first.
- L{UseCached} (when the board lists L{FEATURE_CACHE}): no byte run; the board links
  content it already holds under that SHA-256, or answers that it has none.
- L{Download}: the answer carries C{size} and C{sha256}; exactly C{size} bytes follow it.
- L{Run} and L{Benchmark}: the input tensors' bytes follow the command box, in the
  order of C{inputs}; for L{Run}, the output tensors' bytes follow the answer, in the
  order of its C{outputs}.

A byte run is always sent whole, even when the command is refused, so the connection
stays in step and the session stays usable after a refusal. A board reads the bytes of a
refused command only when they are within what the session may send (its upload quota,
half its arena); past that, with no session open, or when the command's arguments cannot
be read, it answers the refusal and closes the connection without reading them.
"""

from __future__ import annotations

from twisted.protocols import amp

from ._command import CompassCommand

TENSOR = [
    (b"name", amp.Unicode()),
    (b"dtype", amp.Unicode()),
    (b"shape", amp.ListOf(amp.Integer())),
    (b"nbytes", amp.Integer()),
]
"""A tensor as it travels: numpy dtype string (e.g. C{float32}, C{int8}), shape, size."""

SIGNATURE = [
    (b"name", amp.Unicode()),
    (b"dtype", amp.Unicode()),
    (b"shape", amp.ListOf(amp.Integer())),
]
"""What a model expects or gives: a negative dimension means any size."""

FILE = [
    (b"name", amp.Unicode()),
    (b"size", amp.Integer()),
    (b"kind", amp.Unicode()),
]


class OpenSession(CompassCommand):
    """Open the session of a granted lease. The board checks C{ticket} with the tracker.

    C{device} is the granted device's name: a board ignores it, a compass-proxy needs it
    to pick the board the session is for."""

    commandName = b"open-session"
    arguments = [(b"ticket", amp.Unicode()), (b"device", amp.Unicode(optional=True))]
    response = [
        (b"session", amp.Unicode()),
        (b"lease", amp.Unicode()),
        (b"expires_in", amp.Float()),
        (b"backend", amp.Unicode()),
        (b"info", amp.ListOf(amp.Unicode())),
        (b"max_upload", amp.Integer()),
        (b"features", amp.ListOf(amp.Unicode(), optional=True)),
    ]


class Upload(CompassCommand):
    """Store C{size} bytes (sent raw after this box) as C{path} in the session directory."""

    commandName = b"upload"
    announces_run = True
    arguments = [
        (b"path", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"sha256", amp.Unicode()),
    ]
    response = []


FEATURE_DIGEST_AFTER = "upload-digest-after-1"
"""In L{OpenSession}'s C{features}: the board answers L{UploadDigestAfter}. A client sends
it only to a board that says so; a client that never sends it (an older one) uploads
with L{Upload} as before."""

DIGEST_SIZE = 32
"""Bytes of the SHA-256 digest that ends an L{UploadDigestAfter} byte run."""


class UploadDigestAfter(CompassCommand):
    """Store C{size} bytes as C{path}, their SHA-256 following them: the raw run after
    this box is the C{size} bytes, then the L{DIGEST_SIZE} bytes of their SHA-256 digest
    (binary, not hex). The answer comes once all have arrived and the digest matched
    what arrived; otherwise nothing is stored (L{ChecksumMismatch}). A client that finds
    its file changed while it was sent ends the run with a digest that cannot match, so
    the board stores nothing. Only boards whose L{OpenSession} answer lists
    L{FEATURE_DIGEST_AFTER} in C{features} know this command."""

    commandName = b"upload-digest-after"
    announces_run = True
    arguments = [
        (b"path", amp.Unicode()),
        (b"size", amp.Integer()),
    ]
    response = []


FEATURE_CACHE = "model-cache-1"
"""In L{OpenSession}'s C{features}: the board answers L{UseCached}. A board that does not
say it (an older one) is never sent L{UseCached}; a client that never sends it (an older
one) uploads as before."""


class UseCached(CompassCommand):
    """Store as C{path} the content of C{size} bytes with SHA-256 C{sha256}, if the board
    already holds it (its model cache); nothing follows this box. C{stored} says whether
    it did: when not, upload the file as usual. Only boards whose L{OpenSession} answer
    lists L{FEATURE_CACHE} in C{features} know this command."""

    commandName = b"use-cached"
    arguments = [
        (b"path", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"sha256", amp.Unicode()),
    ]
    response = [(b"stored", amp.Boolean())]


class Download(CompassCommand):
    """Send back the file C{path}; its bytes follow the answer."""

    commandName = b"download"
    arguments = [(b"path", amp.Unicode())]
    response = [(b"size", amp.Integer()), (b"sha256", amp.Unicode())]


class ListFiles(CompassCommand):
    """The files of the session directory (or of a folder in it)."""

    commandName = b"list-files"
    arguments = [(b"path", amp.Unicode(optional=True))]
    response = [(b"files", amp.AmpList(FILE))]


class RemoveFile(CompassCommand):
    commandName = b"remove-file"
    arguments = [(b"path", amp.Unicode())]
    response = []


class LoadModel(CompassCommand):
    """Load an uploaded model file into the executor; the answer names its tensors."""

    commandName = b"load-model"
    arguments = [(b"path", amp.Unicode()), (b"manifest", amp.Unicode(optional=True))]
    response = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(SIGNATURE)),
        (b"outputs", amp.AmpList(SIGNATURE)),
    ]


class Run(CompassCommand):
    """Run C{model} once on the inputs (raw bytes follow this box); outputs follow the
    answer. C{seconds} is the time the backend took on the board."""

    commandName = b"run"
    announces_run = True
    arguments = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(TENSOR)),
        (b"timeout", amp.Float(optional=True)),
    ]
    response = [(b"outputs", amp.AmpList(TENSOR)), (b"seconds", amp.Float())]


class Benchmark(CompassCommand):
    """Run C{model} C{warmup} times, then C{repeat} rounds of C{number} runs; the answer
    gives each round's mean seconds per run, measured on the board."""

    commandName = b"benchmark"
    announces_run = True
    arguments = [
        (b"model", amp.Unicode()),
        (b"inputs", amp.AmpList(TENSOR)),
        (b"number", amp.Integer()),
        (b"repeat", amp.Integer()),
        (b"warmup", amp.Integer(optional=True)),
    ]
    response = [(b"times", amp.ListOf(amp.Float()))]


class CloseSession(CompassCommand):
    """End the session: the executor stops, the directory is removed, the board is free."""

    commandName = b"close-session"
    arguments = []
    response = []


class SessionClosing(CompassCommand):
    """Notice from the board: the session is ending now (lease expired, revoked, ...)."""

    commandName = b"session-closing"
    arguments = [(b"reason", amp.Unicode()), (b"message", amp.Unicode())]
    requiresAnswer = False
