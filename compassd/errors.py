"""Every error a compassd peer can see on the wire: the vocabulary the whole package speaks.

Each error is an exception class with a fixed wire code. The scheduling core raises them
(so this module imports nothing but the standard library), and the protocol package
declares them on every command (see :mod:`compassd.protocol._command`), so a responder
that raises one answers with that code and the caller gets the same class back with the
same message, while the connection stays open. Messages are sentences: what happened, to
what, and what to do next. :mod:`compassd.protocol` and :mod:`compassd.protocol.errors`
re-export them.
"""

from __future__ import annotations


class CompassError(Exception):
    """A failure a compassd peer reports to another; the message is meant for people."""

    code: bytes = b"COMPASS_ERROR"

    def __str__(self) -> str:
        # Errors that cross the wire arrive with their text as bytes on old Twisted.
        text = super().__str__()
        if self.args and isinstance(self.args[0], bytes):
            text = self.args[0].decode("utf-8", "replace")
        return text


class BadRequest(CompassError):
    """An argument was well formed for AMP but not acceptable (too long, out of range)."""

    code = b"BAD_REQUEST"


class HelloRequired(CompassError):
    """A command came before the hello exchange that names the protocol version."""

    code = b"HELLO_REQUIRED"


class UnsupportedVersion(CompassError):
    """The peers share no protocol version."""

    code = b"UNSUPPORTED_VERSION"


class NotAuthorized(CompassError):
    """The token is unknown, or the user may not do this."""

    code = b"NOT_AUTHORIZED"


class InternalError(CompassError):
    """The peer failed in a way it did not expect; its log has the details."""

    code = b"INTERNAL_ERROR"


class LimitExceeded(CompassError):
    """A configured limit (queued requests per user, connections, sizes) was reached."""

    code = b"LIMIT_EXCEEDED"


class NoSuchKey(CompassError):
    """No device key of that name is known."""

    code = b"NO_SUCH_KEY"


class NoSuchDevice(CompassError):
    """No device of that name is registered."""

    code = b"NO_SUCH_DEVICE"


class NoSuchRequest(CompassError):
    """The request is not waiting: it was never made, or it already ended."""

    code = b"NO_SUCH_REQUEST"


class NoSuchLease(CompassError):
    """The lease is not active: it was never granted, or it already ended."""

    code = b"NO_SUCH_LEASE"


class NotYourLease(CompassError):
    """The lease or request belongs to another user or connection."""

    code = b"NOT_YOURS"


class TicketRejected(CompassError):
    """A ticket was unknown, already used, for another device, or its lease ended."""

    code = b"TICKET_REJECTED"


class DeviceConflict(CompassError):
    """A device name is registered by another live connection."""

    code = b"DEVICE_CONFLICT"


class PathRefused(CompassError):
    """A session file path is absolute, climbs out with '..', or leaves through a symlink."""

    code = b"PATH_REFUSED"


class NoSuchFile(CompassError):
    """No file of that name is in the session directory."""

    code = b"NO_SUCH_FILE"


class ChecksumMismatch(CompassError):
    """Transferred bytes did not match the SHA-256 announced for them."""

    code = b"CHECKSUM_MISMATCH"


class ModelRejected(CompassError):
    """The backend could not load the model; the message has the backend's reason."""

    code = b"MODEL_REJECTED"


class TensorMismatch(CompassError):
    """An input's name, dtype or shape is not what the model expects; the message says
    which tensor and what was expected."""

    code = b"TENSOR_MISMATCH"


class RunFailed(CompassError):
    """The model ran but the backend or driver reported an error."""

    code = b"RUN_FAILED"


class ExecutorDied(CompassError):
    """The executor process died (a crash, a signal, or killed after a hang)."""

    code = b"EXECUTOR_DIED"


class SessionEnded(CompassError):
    """The session is over (lease expired, revoked, or closed) and takes no commands."""

    code = b"SESSION_ENDED"


class Unavailable(CompassError):
    """Something the command needs is out of reach right now (a board's tracker); retry."""

    code = b"UNAVAILABLE"


class BoardBusy(CompassError):
    """The board already serves a session; a ticket for another lease cannot open one."""

    code = b"BOARD_BUSY"


ALL_ERRORS: tuple[type[CompassError], ...] = (
    BadRequest,
    HelloRequired,
    UnsupportedVersion,
    NotAuthorized,
    InternalError,
    LimitExceeded,
    NoSuchKey,
    NoSuchDevice,
    NoSuchRequest,
    NoSuchLease,
    NotYourLease,
    TicketRejected,
    DeviceConflict,
    PathRefused,
    NoSuchFile,
    ChecksumMismatch,
    ModelRejected,
    TensorMismatch,
    RunFailed,
    ExecutorDied,
    SessionEnded,
    Unavailable,
    BoardBusy,
)
"""Every error class, in one place; each code is unique (a test checks it)."""
