"""Apache TVM's tracker wire protocol, parsed and written without I/O.

TVM's RPC servers, clients and tools talk to a tracker with: 4 magic bytes each way, then
frames of a signed little-endian int32 length and that many bytes of JSON, each request a
JSON array whose first element is a code. compass-tracker speaks it (when enabled) so an
unmodified TVM installation can use compassd's queues. Every reply shape here is the one
TVM's Python, C++ and Java peers expect (see ``docs/tvm.md``).

L{FrameDecoder} is incremental and bounded; L{parse_message} turns a frame into one of
the typed messages below, tolerating what real TVM peers send (ports as strings, 3- or
4-element PUT, any JSON whitespace) and refusing anything else with L{TvmProtocolError}.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Union

import attrs

TRACKER_MAGIC = struct.pack("<i", 0x2F271)
"""What a TVM peer sends first, and what the tracker echoes."""

MAX_FRAME = 64 * 1024
"""TVM allows 1 MiB; no legitimate tracker message is anywhere near 64 KiB."""

FAIL, SUCCESS, PING, STOP, PUT, REQUEST, UPDATE_INFO, SUMMARY, GET_PENDING_MATCHKEYS = (
    -1, 0, 1, 2, 3, 4, 5, 6, 7,
)


class TvmProtocolError(Exception):
    """The peer sent something that is not TVM's tracker protocol; the connection closes."""


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Stop:
    key: str


@attrs.frozen
class Put:
    key: str
    port: int
    match_key: str
    custom_addr: str | None


@attrs.frozen
class RequestSlot:
    key: str
    user: str
    priority: int


@attrs.frozen
class UpdateInfo:
    info: dict[str, Any]
    key: str | None
    addr_host: str | None
    addr_port: int | None


@attrs.frozen
class Summary:
    pass


@attrs.frozen
class PendingMatchKeys:
    pass


Message = Union[Ping, Stop, Put, RequestSlot, UpdateInfo, Summary, PendingMatchKeys]


def encode(payload: Any) -> bytes:
    """One frame: ASCII JSON (so the length in bytes is the length in characters)."""
    body = json.dumps(payload, ensure_ascii=True).encode("ascii")
    return struct.pack("<i", len(body)) + body


@attrs.define
class FrameDecoder:
    """Split a byte stream into frames; refuse a length that is not in 1..L{MAX_FRAME}."""

    _buffer: bytearray = attrs.Factory(bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (size,) = struct.unpack_from("<i", self._buffer)
            if not 0 < size <= MAX_FRAME:
                raise TvmProtocolError(
                    f"A frame of {size} bytes is not allowed (1 to {MAX_FRAME})."
                )
            if len(self._buffer) < 4 + size:
                break
            frames.append(bytes(self._buffer[4 : 4 + size]))
            del self._buffer[: 4 + size]
        return frames


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError, OverflowError):
        raise TvmProtocolError(f"{value!r} is not a port number.") from None
    if not 0 <= port < 65536:
        raise TvmProtocolError(f"{port} is not a port number.")
    return port


def _text(value: Any, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TvmProtocolError(f"The {what} must be a string of at most {limit} characters.")
    return value


def parse_message(frame: bytes) -> Message:
    """Decode one frame into a message, or raise L{TvmProtocolError} saying why not."""
    try:
        data = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TvmProtocolError(f"The frame is not JSON: {e}.") from None
    except RecursionError:
        raise TvmProtocolError("The frame's JSON is nested too deeply.") from None
    if not isinstance(data, list) or not data or type(data[0]) is not int:
        raise TvmProtocolError("A tracker message is a JSON array starting with a code.")
    code, args = data[0], data[1:]
    if code == PING:
        return Ping()
    if code == STOP:
        return Stop(_text(args[0], "stop key") if args else "")
    if code == PUT:
        if len(args) not in (2, 3) or not isinstance(args[1], list) or len(args[1]) != 2:
            raise TvmProtocolError("PUT is [3, key, [port, match_key], custom_addr?].")
        custom = args[2] if len(args) == 3 else None
        if custom is not None:
            custom = _text(custom, "custom address")
        return Put(
            _text(args[0], "key"), _port(args[1][0]), _text(args[1][1], "match key"), custom
        )
    if code == REQUEST:
        if len(args) < 1:
            raise TvmProtocolError("REQUEST is [4, key, user, priority].")
        user = args[1] if len(args) > 1 and args[1] is not None else ""
        priority = args[2] if len(args) > 2 else 1
        if type(priority) is not int:
            raise TvmProtocolError("The REQUEST priority must be an integer.")
        return RequestSlot(_text(args[0], "key"), _text(user, "user"), priority)
    if code == UPDATE_INFO:
        if len(args) != 1 or not isinstance(args[0], dict):
            raise TvmProtocolError("UPDATE_INFO is [5, {...}].")
        info = args[0]
        if len(json.dumps(info)) > 4096:
            raise TvmProtocolError("The UPDATE_INFO dictionary is too large.")
        key = info.get("key")
        host = port = None
        addr = info.get("addr")
        if addr is not None:
            if not isinstance(addr, list) or len(addr) != 2:
                raise TvmProtocolError("UPDATE_INFO's addr is [host or null, port].")
            host = None if addr[0] is None else _text(addr[0], "address")
            port = _port(addr[1])
        return UpdateInfo(info, None if key is None else _text(key, "key"), host, port)
    if code == SUMMARY:
        return Summary()
    if code == GET_PENDING_MATCHKEYS:
        return PendingMatchKeys()
    raise TvmProtocolError(f"Unknown tracker code {code}.")


def rpc_key_of(match_key: str) -> str:
    """The RPC key inside a match key (C{key:random}): split at the last colon."""
    return match_key.rpartition(":")[0] or match_key
