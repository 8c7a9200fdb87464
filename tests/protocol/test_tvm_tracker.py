"""TVM's tracker wire format: frames, the magic, and the messages real TVM peers send."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compassd.protocol import tvm_tracker as wire
from compassd.protocol.tvm_tracker import (
    MAX_FRAME,
    TRACKER_MAGIC,
    FrameDecoder,
    PendingMatchKeys,
    Ping,
    Put,
    RequestSlot,
    Stop,
    Summary,
    TvmProtocolError,
    UpdateInfo,
    encode,
    parse_message,
    rpc_key_of,
)


def frame(text: str | bytes) -> bytes:
    body = text.encode() if isinstance(text, str) else text
    return struct.pack("<i", len(body)) + body


# --- constants ---------------------------------------------------------------------------


def test_magic_is_tvms_rpc_tracker_magic_on_the_wire() -> None:
    assert TRACKER_MAGIC == bytes([0x71, 0xF2, 0x02, 0x00])


def test_codes_are_tvms_tracker_codes() -> None:
    assert (
        wire.FAIL, wire.SUCCESS, wire.PING, wire.STOP, wire.PUT, wire.REQUEST,
        wire.UPDATE_INFO, wire.SUMMARY, wire.GET_PENDING_MATCHKEYS,
    ) == (-1, 0, 1, 2, 3, 4, 5, 6, 7)


# --- encode ------------------------------------------------------------------------------


def test_success_is_encoded_as_exactly_the_text_0() -> None:
    # Java parses it with Integer.parseInt and C++ with std::stoi: no whitespace allowed.
    assert encode(wire.SUCCESS) == b"\x01\x00\x00\x000"
    assert encode(wire.FAIL) == b"\x02\x00\x00\x00-1"


def test_encode_length_counts_bytes_and_body_is_ascii() -> None:
    data = encode([0, ["h\u00e9te", 9090, "k\u2603:0.5"]])
    (size,) = struct.unpack_from("<i", data)
    assert size == len(data) - 4
    body = data[4:]
    body.decode("ascii")
    assert json.loads(body) == [0, ["h\u00e9te", 9090, "k\u2603:0.5"]]


def test_encode_of_a_grant_matches_the_probed_tvm_reply() -> None:
    assert encode([0, ["127.0.0.1", 9091, "npu:0.111"]])[4:] == (
        b'[0, ["127.0.0.1", 9091, "npu:0.111"]]'
    )


# --- frame decoding ----------------------------------------------------------------------


def test_frame_split_at_every_byte_boundary_decodes_once() -> None:
    stream = frame('[3, "npu", [9090, "npu:0.25"], null]')
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(stream[:cut])
        second = decoder.feed(stream[cut:])
        assert first + second == [stream[4:]], cut
        assert (first == []) == (cut < len(stream))


def test_frame_fed_one_byte_at_a_time_decodes_once() -> None:
    stream = frame("[6]") + frame("[1]")
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == [b"[6]", b"[1]"]


def test_coalesced_frames_all_come_out_in_order() -> None:
    bodies = [b"[1]", b'[4, "k", "", 1]', b"[7]", b"[6]"]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(frame(b) for b in bodies)) == bodies


def test_coalesced_frames_with_a_partial_tail_keep_the_tail() -> None:
    tail = frame("[7]")
    decoder = FrameDecoder()
    assert decoder.feed(frame("[1]") + tail[:5]) == [b"[1]"]
    assert decoder.feed(tail[5:]) == [b"[7]"]


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    body = b"[1" + b" " * (MAX_FRAME - 3) + b"]"
    assert len(body) == MAX_FRAME
    assert FrameDecoder().feed(frame(body)) == [body]


def test_oversized_length_is_refused_as_soon_as_the_header_arrives() -> None:
    decoder = FrameDecoder()
    with pytest.raises(TvmProtocolError, match="not allowed"):
        decoder.feed(struct.pack("<i", MAX_FRAME + 1))


def test_tvm_oversize_probe_length_0x7fffffff_is_refused() -> None:
    with pytest.raises(TvmProtocolError):
        FrameDecoder().feed(struct.pack("<i", 0x7FFFFFFF))


@pytest.mark.parametrize("size", [0, -1, -(2**31)])
def test_zero_or_negative_length_is_refused(size: int) -> None:
    with pytest.raises(TvmProtocolError):
        FrameDecoder().feed(struct.pack("<i", size) + b"[1]")


def test_a_second_magic_read_as_a_length_is_refused() -> None:
    # A peer that repeats the handshake sends 0x2F271 as a frame length: too large.
    with pytest.raises(TvmProtocolError):
        FrameDecoder().feed(TRACKER_MAGIC)


def test_oversized_frame_after_a_good_one_is_refused() -> None:
    decoder = FrameDecoder()
    with pytest.raises(TvmProtocolError):
        decoder.feed(frame("[1]") + struct.pack("<i", MAX_FRAME + 1))


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[1", b"not json", b"\xff\xfe[1]", b"", b"[1]]", b"{\"a\": 1"],
)
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(TvmProtocolError, match="not JSON"):
        parse_message(body)


@pytest.mark.parametrize(
    "body",
    [b"1", b'"x"', b"{}", b"[]", b'["1"]', b"[true]", b"[1.0]", b"null"],
)
def test_non_array_or_codeless_message_is_refused(body: bytes) -> None:
    with pytest.raises(TvmProtocolError, match="JSON array starting with a code"):
        parse_message(body)


def test_unknown_code_is_refused() -> None:
    with pytest.raises(TvmProtocolError, match="Unknown tracker code 8"):
        parse_message(b"[8]")


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    with pytest.raises(TvmProtocolError):
        parse_message(b"[" * 60000 + b"]" * 60000)


@pytest.mark.parametrize("port", ["Infinity", "-Infinity", "NaN", "1e400", '"x"', "null",
                                  "65536", "-1", '"-1"'])
def test_put_with_a_port_that_is_not_a_port_is_refused(port: str) -> None:
    with pytest.raises(TvmProtocolError):
        parse_message(f'[3, "k", [{port}, "k:1"]]'.encode())


def test_ping_summary_and_pending() -> None:
    assert parse_message(b"[1]") == Ping()
    assert parse_message(b"[6]") == Summary()
    assert parse_message(b"[7]") == PendingMatchKeys()


def test_stop_with_and_without_a_key() -> None:
    assert parse_message(b'[2, "tracker:0.5"]') == Stop("tracker:0.5")
    assert parse_message(b"[2]") == Stop("")


def test_put_as_python_sends_it_with_four_elements() -> None:
    assert parse_message(b'[3, "npu", [9090, "npu:0.84"], null]') == Put(
        "npu", 9090, "npu:0.84", None
    )


def test_put_with_three_elements_has_no_custom_address() -> None:
    assert parse_message(b'[3, "npu", [9090, "npu:0.84"]]') == Put("npu", 9090, "npu:0.84", None)


def test_put_with_a_string_port_and_custom_address() -> None:
    assert parse_message(b'[3,"npu",["9091","npu:0.5"],"10.0.0.7"]') == Put(
        "npu", 9091, "npu:0.5", "10.0.0.7"
    )


@pytest.mark.parametrize(
    "body",
    [b'[3, "npu"]', b'[3, "npu", 9090]', b'[3, "npu", [9090]]', b'[3, 5, [9090, "m"]]',
     b'[3, "npu", [9090, "m"], 7]', b'[3, "npu", [9090, "m"], null, 1]'],
)
def test_misshapen_put_is_refused(body: bytes) -> None:
    with pytest.raises(TvmProtocolError):
        parse_message(body)


def test_request_as_python_sends_it() -> None:
    assert parse_message(b'[4, "npu", "", 5]') == RequestSlot("npu", "", 5)


def test_request_defaults_user_and_priority() -> None:
    assert parse_message(b'[4, "npu"]') == RequestSlot("npu", "", 1)
    assert parse_message(b'[4, "npu", null, 0]') == RequestSlot("npu", "", 0)


@pytest.mark.parametrize("body", [b"[4]", b'[4, "npu", "", "5"]', b'[4, "npu", "", true]',
                                  b'[4, "npu", "", 1.5]', b'[4, 1, "", 1]'])
def test_misshapen_request_is_refused(body: bytes) -> None:
    with pytest.raises(TvmProtocolError):
        parse_message(body)


def test_update_info_from_python_server() -> None:
    message = parse_message(b'[5, {"key": "server:npu", "addr": [null, 9090]}]')
    assert message == UpdateInfo({"key": "server:npu", "addr": [None, 9090]}, "server:npu",
                                 None, 9090)


def test_update_info_from_java_with_odd_whitespace_and_a_string_port() -> None:
    body = b'[ 5 ,\n\t{"key" : "server:android", "addr": [null, "5001"]} ]'
    message = parse_message(body)
    assert isinstance(message, UpdateInfo)
    assert (message.key, message.addr_host, message.addr_port) == ("server:android", None, 5001)


def test_update_info_without_addr_or_key_is_accepted() -> None:
    assert parse_message(b'[5, {}]') == UpdateInfo({}, None, None, None)


@pytest.mark.parametrize(
    "body",
    [b"[5]", b"[5, []]", b'[5, {"addr": [null]}]', b'[5, {"addr": "x"}]',
     b'[5, {"key": 3}]', b'[5, {}, {}]'],
)
def test_misshapen_update_info_is_refused(body: bytes) -> None:
    with pytest.raises(TvmProtocolError):
        parse_message(body)


def test_huge_update_info_is_refused() -> None:
    body = json.dumps([5, {"key": "server:k", "x": "y" * 5000}]).encode()
    with pytest.raises(TvmProtocolError, match="too large"):
        parse_message(body)


def test_overlong_key_is_refused() -> None:
    with pytest.raises(TvmProtocolError, match="at most 256"):
        parse_message(json.dumps([4, "k" * 257, "", 1]).encode())


@pytest.mark.parametrize(
    ("match_key", "key"),
    [("npu:0.5", "npu"), ("127.0.0.1:5555:0.25", "127.0.0.1:5555"), ("plain", "plain")],
)
def test_rpc_key_of_splits_at_the_last_colon(match_key: str, key: str) -> None:
    assert rpc_key_of(match_key) == key


# --- round trips and properties ----------------------------------------------------------

ROUND_TRIPS: list[tuple[Any, wire.Message]] = [
    ([1], Ping()),
    ([2, "s"], Stop("s")),
    ([3, "npu", [9090, "npu:0.1"], None], Put("npu", 9090, "npu:0.1", None)),
    ([3, "npu", ["9090", "npu:0.1"], "h"], Put("npu", 9090, "npu:0.1", "h")),
    ([4, "npu", "bob", -3], RequestSlot("npu", "bob", -3)),
    ([5, {"key": "server:npu", "addr": ["1.2.3.4", "9"]}],
     UpdateInfo({"key": "server:npu", "addr": ["1.2.3.4", "9"]}, "server:npu", "1.2.3.4", 9)),
    ([6], Summary()),
    ([7], PendingMatchKeys()),
]


@pytest.mark.parametrize(("payload", "message"), ROUND_TRIPS)
def test_encode_then_decode_then_parse_gives_the_message(payload: Any, message: Any) -> None:
    (body,) = FrameDecoder().feed(encode(payload))
    assert parse_message(body) == message


texts = st.text(max_size=20)
keys = st.text(min_size=1, max_size=30)
ports = st.integers(0, 65535)
messages = st.one_of(
    st.just([1]),
    st.just([6]),
    st.just([7]),
    st.builds(lambda k: [2, k], texts),
    st.builds(lambda k, p, m, a, s: [3, k, [str(p) if s else p, m]] + a,
              keys, ports, keys, st.sampled_from([[], [None], ["10.0.0.1"]]), st.booleans()),
    st.builds(lambda k, u, p: [4, k, u, p], keys, texts, st.integers(-(10**6), 10**6)),
    st.builds(lambda k, p: [5, {"key": k, "addr": [None, p]}], keys, ports),
)


@given(st.lists(messages, max_size=8), st.data())
def test_any_chunking_of_a_stream_yields_the_same_messages(
    payloads: list[Any], data: Any
) -> None:
    stream = b"".join(encode(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    frames: list[bytes] = []
    start = 0
    for cut in cuts + [len(stream)]:
        frames += decoder.feed(stream[start:cut])
        start = cut
    expected = [parse_message(encode(p)[4:]) for p in payloads]
    assert [parse_message(f) for f in frames] == expected
    assert [json.loads(f) for f in frames] == payloads


@given(st.lists(st.binary(max_size=40), max_size=6), st.data())
def test_any_chunking_of_raw_frames_yields_the_same_frames(
    bodies: list[bytes], data: Any
) -> None:
    bodies = [b or b"x" for b in bodies]
    stream = b"".join(frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    frames: list[bytes] = []
    start = 0
    for cut in cuts + [len(stream)]:
        frames += decoder.feed(stream[start:cut])
        start = cut
    assert frames == bodies


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=5),
    max_leaves=20,
)


@given(st.integers(-2, 9), st.lists(json_values, max_size=5))
def test_parse_message_either_parses_or_raises_tvm_protocol_error(
    code: int, args: list[Any]
) -> None:
    body = json.dumps([code, *args]).encode()
    try:
        message = parse_message(body)
    except TvmProtocolError:
        return
    assert isinstance(message, (Ping, Stop, Put, RequestSlot, UpdateInfo, Summary,
                                PendingMatchKeys))


@given(st.binary(max_size=64))
def test_parse_message_of_arbitrary_bytes_never_raises_anything_else(body: bytes) -> None:
    try:
        parse_message(body)
    except TvmProtocolError:
        pass
