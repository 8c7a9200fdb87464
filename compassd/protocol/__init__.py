"""The compassd wire protocol: one versioned AMP vocabulary.

Each conversation has its own module:

- :mod:`compassd.protocol.client_tracker`: clients ask the tracker for devices.
- :mod:`compassd.protocol.board_tracker`: board servers register with the tracker.
- :mod:`compassd.protocol.session`: a client uses a granted board (files, models, runs).
- :mod:`compassd.protocol.executor`: a board server drives its executor process.

Every command derives from :class:`CompassCommand`, which fixes its wire name and
declares every error in :mod:`compassd.protocol.errors`. :class:`Hello` opens every
connection. ``docs/protocol.md`` describes the whole vocabulary.
"""

from ._command import (
    PROTOCOL_VERSION,
    REDIRECT_VERSION,
    ROLES,
    SUPPORTED_VERSIONS,
    CompassCommand,
    Hello,
    choose_version,
)
from .errors import (
    ALL_ERRORS,
    BadRequest,
    BoardBusy,
    ChecksumMismatch,
    CompassError,
    DeviceConflict,
    ExecutorDied,
    HelloRequired,
    InternalError,
    LimitExceeded,
    ModelRejected,
    NoSuchDevice,
    NoSuchFile,
    NoSuchKey,
    NoSuchLease,
    NoSuchRequest,
    NotAuthorized,
    NotYourLease,
    PathRefused,
    RunFailed,
    SessionEnded,
    TensorMismatch,
    TicketRejected,
    Unavailable,
    UnsupportedVersion,
)

__all__ = [
    "PROTOCOL_VERSION",
    "REDIRECT_VERSION",
    "ROLES",
    "SUPPORTED_VERSIONS",
    "CompassCommand",
    "Hello",
    "choose_version",
    "ALL_ERRORS",
    "BadRequest",
    "ChecksumMismatch",
    "CompassError",
    "DeviceConflict",
    "ExecutorDied",
    "ModelRejected",
    "NoSuchFile",
    "PathRefused",
    "RunFailed",
    "SessionEnded",
    "TensorMismatch",
    "HelloRequired",
    "InternalError",
    "LimitExceeded",
    "NoSuchDevice",
    "NoSuchKey",
    "NoSuchLease",
    "NoSuchRequest",
    "NotAuthorized",
    "NotYourLease",
    "TicketRejected",
    "Unavailable",
    "UnsupportedVersion",
    "BoardBusy",
]
