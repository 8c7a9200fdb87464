"""The compassd client library.

Blocking, for scripts and notebooks::

    from compassd.client import connect_tracker
    with connect_tracker("127.0.0.1", 9190).request("npu-x2") as lease:
        ...

Asynchronous, for Twisted programs: L{AsyncTracker.connect}.
"""

from ..addresses import DEFAULT_PORT, parse_address
from ..protocol.errors import (
    ChecksumMismatch,
    CompassError,
    ExecutorDied,
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
    UnsupportedVersion,
)
from ..tensors import TensorSpec
from .asynchronous import AsyncLease, AsyncTracker
from .blocking import Lease, Model, Session, Tracker, connect_session, connect_tracker
from .errors import (
    DeviceLost,
    LeaseExpired,
    LeaseLost,
    RequestCancelled,
    RequestFailed,
    RequestWithdrawn,
    TrackerUnreachable,
    WaitTimeout,
)
from .model import AsyncModel
from .session import AsyncSession, BoardUnreachable, RemoteFile

__all__ = [
    "AsyncModel",
    "AsyncSession",
    "BoardUnreachable",
    "ChecksumMismatch",
    "ExecutorDied",
    "Model",
    "ModelRejected",
    "NoSuchFile",
    "PathRefused",
    "RemoteFile",
    "RunFailed",
    "Session",
    "SessionEnded",
    "TensorMismatch",
    "TensorSpec",
    "TicketRejected",
    "connect_session",
    "DEFAULT_PORT",
    "AsyncLease",
    "AsyncTracker",
    "CompassError",
    "DeviceLost",
    "Lease",
    "LeaseExpired",
    "LeaseLost",
    "LimitExceeded",
    "NoSuchDevice",
    "NoSuchKey",
    "NoSuchLease",
    "NoSuchRequest",
    "NotAuthorized",
    "NotYourLease",
    "RequestCancelled",
    "RequestFailed",
    "RequestWithdrawn",
    "Tracker",
    "TrackerUnreachable",
    "UnsupportedVersion",
    "WaitTimeout",
    "connect_tracker",
    "parse_address",
]
