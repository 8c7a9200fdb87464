"""The compassd AMP vocabulary: wire names, error codes and version negotiation."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

import compassd.protocol
from compassd.protocol import (
    ALL_ERRORS,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    CompassCommand,
    CompassError,
    Hello,
    choose_version,
)
from compassd.protocol.peer import CompassPeer


def _protocol_modules() -> list[Any]:
    modules = [compassd.protocol]
    for info in pkgutil.iter_modules(compassd.protocol.__path__, "compassd.protocol."):
        modules.append(importlib.import_module(info.name))
    return modules


def _commands() -> list[type[amp.Command]]:
    """Every AMP command class defined in the protocol package (each listed once)."""
    found: dict[str, type[amp.Command]] = {}
    for module in _protocol_modules():
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, amp.Command)
                and value.__module__.startswith("compassd.protocol")
                and value is not CompassCommand
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(found.values(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


COMMANDS = _commands()


def test_the_package_defines_the_commands_of_every_conversation() -> None:
    modules = {command.__module__ for command in COMMANDS}
    assert {
        "compassd.protocol._command",
        "compassd.protocol.board_tracker",
        "compassd.protocol.client_tracker",
        "compassd.protocol.session",
        "compassd.protocol.executor",
    } <= modules
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.__qualname__)
def test_every_command_is_a_compass_command_with_its_own_explicit_name(
    command: type[amp.Command],
) -> None:
    assert issubclass(command, CompassCommand)
    # Set in the class itself, not inherited and not AMP's default (the class name).
    assert "commandName" in vars(command)
    assert isinstance(command.commandName, bytes)
    assert command.commandName != command.__name__.encode("ascii")
    assert command.commandName == command.commandName.lower()


def test_no_two_commands_share_a_wire_name() -> None:
    names = [command.commandName for command in COMMANDS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.__qualname__)
def test_every_command_declares_every_error(command: type[amp.Command]) -> None:
    for error in ALL_ERRORS:
        assert command.errors.get(error) == error.code
        assert command.reverseErrors[error.code] is error


def test_every_error_class_is_listed_once_with_a_distinct_code() -> None:
    exported = {
        value
        for value in vars(compassd.protocol.errors).values()
        if isinstance(value, type) and issubclass(value, CompassError) and value is not CompassError
    }
    assert set(ALL_ERRORS) == exported
    assert len(ALL_ERRORS) == len(set(ALL_ERRORS))
    codes = [error.code for error in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert CompassError.code not in codes
    for error in ALL_ERRORS:
        assert isinstance(error.code, bytes) and error.code
        assert error.code == error.code.upper()
        # AMP's own codes must not be shadowed.
        assert error.code not in (amp.UNKNOWN_ERROR_CODE, amp.UNHANDLED_ERROR_CODE)


def test_every_error_is_exported_from_the_package() -> None:
    for error in ALL_ERRORS:
        assert getattr(compassd.protocol, error.__name__) is error
        assert error.__name__ in compassd.protocol.__all__


# --- round trips ----------------------------------------------------------------------


class _Raise(CompassCommand):
    commandName = b"test-raise"
    arguments = [(b"error", amp.Unicode()), (b"message", amp.Unicode())]
    response: list[tuple[bytes, amp.Argument]] = []


class _Server(CompassPeer):
    greeted = True

    @_Raise.responder
    def raise_(self, error: str, message: str) -> dict[str, Any]:
        raise getattr(compassd.protocol.errors, error)(message)


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_an_error_raised_in_a_responder_arrives_as_the_same_class_with_its_message(
    error: type[CompassError],
) -> None:
    client, server, pump = iosim.connectedServerAndClient(_Server, CompassPeer)
    message = f"Device npu-3 refused it ({error.__name__}); try another — ü."
    results: list[Any] = []
    client.callRemote(_Raise, error=error.__name__, message=message).addBoth(results.append)
    pump.flush()
    assert len(results) == 1
    failure = results[0]
    assert isinstance(failure, Failure)
    assert failure.type is error
    assert str(failure.value) == message
    # A declared error never costs the connection: the same call works again.
    again: list[Any] = []
    client.callRemote(_Raise, error=error.__name__, message="again").addBoth(again.append)
    pump.flush()
    assert again[0].type is error and str(again[0].value) == "again"
    assert client.alive and server.alive


def test_a_compass_error_shows_a_bytes_message_as_text() -> None:
    assert str(CompassError(b"caf\xc3\xa9 closed")) == "café closed"
    assert str(CompassError("plain")) == "plain"


# --- version negotiation --------------------------------------------------------------


def test_our_newest_version_is_one_we_support() -> None:
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS
    assert PROTOCOL_VERSION == max(SUPPORTED_VERSIONS)


@pytest.mark.parametrize(
    "offered, chosen",
    [
        ([PROTOCOL_VERSION], PROTOCOL_VERSION),
        ([PROTOCOL_VERSION, PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 7], PROTOCOL_VERSION),
        ([PROTOCOL_VERSION + 1, PROTOCOL_VERSION], PROTOCOL_VERSION),
        ([0, PROTOCOL_VERSION, PROTOCOL_VERSION], PROTOCOL_VERSION),
        ([], None),
        ([0], None),
        ([-1, 0], None),
        ([PROTOCOL_VERSION + 1], None),
    ],
)
def test_choose_version_picks_the_highest_shared_version_or_none(
    offered: list[int], chosen: int | None
) -> None:
    assert choose_version(offered) == chosen


def test_choose_version_picks_the_highest_of_several_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compassd.protocol._command, "SUPPORTED_VERSIONS", (1, 2, 3))
    assert choose_version([1, 2, 5]) == 2
    assert choose_version([3, 1]) == 3
    assert choose_version([4, 5]) is None


def test_hello_lets_old_peers_leave_out_everything_but_versions_and_role() -> None:
    required = [name for name, argument in Hello.arguments if not argument.optional]
    assert required == [b"versions", b"role"]
    assert Hello.commandName == b"hello"
