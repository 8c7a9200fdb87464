"""An unexpected error tells the peer its kind and message, never a path on the daemon's
machine (a board's work directory, a home directory): the log keeps those."""

from __future__ import annotations

import pytest
from twisted.protocols import amp
from twisted.python.failure import Failure

from compassd.protocol.peer import CompassPeer, public_reason

WORKDIR = "/var/lib/compass-server/npu-x2/session-5f3a/files/model.onnx"


def failure(error: BaseException) -> Failure:
    try:
        raise error
    except BaseException:
        return Failure()


@pytest.mark.parametrize("error, shown", [
    (PermissionError(13, "Permission denied", WORKDIR), "PermissionError: Permission denied"),
    (OSError(28, "No space left on device"), "OSError: No space left on device"),
    (ValueError(f"cannot map {WORKDIR} at offset 3"), "ValueError: cannot map <path> at offset 3"),
    (RuntimeError(f"'{WORKDIR}' vanished; see ~/notes and ./x/y"),
     "RuntimeError: '<path>' vanished; see ~/notes and ./x/y"),
    (KeyError("m"), "KeyError: 'm'"),
    (ZeroDivisionError(), "ZeroDivisionError"),
])
def test_the_reason_a_peer_sees_has_no_absolute_path(error: BaseException, shown: str) -> None:
    assert public_reason(failure(error)) == shown


def test_an_internal_error_answer_leaves_the_work_directory_out() -> None:
    peer = CompassPeer()
    answer = peer._unexpected(failure(PermissionError(13, "Permission denied", WORKDIR)),
                              "upload")
    error = answer.value
    assert isinstance(error, amp.RemoteAmpError)
    assert "/var/lib" not in error.description
    assert error.description == ("The upload command failed unexpectedly (PermissionError:"
                                 " Permission denied); the daemon's log has the details.")
    answer.trap(amp.RemoteAmpError)
