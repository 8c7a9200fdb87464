"""Hostile boxes on the executor's channel: the executor's protocol class driven in-process
through a StringTransport, with a real arena file and an in-memory backend.

The server is the executor's only peer, so "a legitimate peer is still served" means: after
every well-formed hostile box, a run on the same channel is answered with the right output;
after every mutated byte stream (after which the channel may be out of step: the server
never sends a cut box), a fresh channel to the same backend serves. Nothing escapes C{dataReceived},
nothing is answered with an undeclared error, and the executor never asks to stop. Run with
``pytest -s`` to see how many inputs were tried.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure

from compassd.executor.__main__ import ExecutorServer
from compassd.executor.arena import Arena
from compassd.protocol.errors import ALL_ERRORS, InternalError
from compassd.protocol.executor import Attach, CheckHealth, Execute, Load, Measure
from tests.fuzz._inprocess import ENDLESS, IdentityBackend, answers, box, mutate

ARENA = 1 << 16
DECLARED = {error.code for error in ALL_ERRORS} - {InternalError.code} | {amp.UNHANDLED_ERROR_CODE}
X = np.array([1, -2, 3, -4], dtype=np.int8)
LEGIT = dict(model="m", inputs=[{"name": "x", "dtype": "int8", "shape": [4], "offset": 0,
                                 "nbytes": 4}], out_offset=64, out_capacity=1024)


class Channel:
    """One executor channel on a StringTransport, attached to C{workdir} and its arena."""

    def __init__(self, backend: IdentityBackend, workdir: Path, arena: Arena) -> None:
        self.stopped: list[int] = []
        self.server = ExecutorServer(backend, self.stopped.append)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.arena = arena
        self.server.attach(workdir=str(workdir), arena=arena.path, arena_size=ARENA,
                           session="fuzz")
        self.transport.clear()
        self.ask = 10_000

    def send(self, data: bytes) -> dict[bytes, amp.AmpBox]:
        self.transport.clear()
        self.server.dataReceived(data)
        return answers(self.transport.value())

    def serves(self) -> None:
        """A well-formed run is answered with the input given back."""
        self.arena.write("x", X, 0)
        self.arena.write("junk", np.zeros(8, np.int8), 64)
        self.ask += 1
        tag = str(self.ask).encode()
        reply = self.send(box(Execute, self.ask, **LEGIT))[tag]
        assert amp.ERROR not in reply, reply
        (row,) = Execute.parseResponse(reply, self.server)["outputs"]
        assert (row["name"], row["offset"], row["nbytes"]) == ("y", 64, 4)
        assert bytes(self.arena.read_bytes(64, 4)) == X.tobytes()
        assert not self.transport.disconnecting and not self.stopped


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[IdentityBackend, Path, Arena]:
    monkeypatch.setattr(os, "chdir", lambda path: None)  # attach must not move pytest
    workdir = tmp_path / "session"
    workdir.mkdir()
    (workdir / "m").write_bytes(b"model")
    (tmp_path / "outside").write_bytes(b"secret")
    backend = IdentityBackend()
    backend.load(str(workdir / "m"), name="m")
    arena = Arena.create(tmp_path / "arena", ARENA)
    return backend, workdir, arena


BIG = st.integers(-(2**70), 2**70)
DTYPES = st.sampled_from(["int8", "float32", "bool", "object", "U8", "S3", "V8", "i4,i4",
                          "(2,)i4", "datetime64", "complex64", "float1000", "", " ",
                          ">i4", "O", "nonsense"]) | st.text(max_size=12)
SLOT = st.fixed_dictionaries({
    "name": st.sampled_from(["x", "y", ""]) | st.text(max_size=8),
    "dtype": DTYPES,
    "shape": st.lists(st.integers(-3, 70_000) | BIG, max_size=4),
    "offset": st.sampled_from([0, 64, ARENA - 4, ARENA, -1]) | BIG,
    "nbytes": st.sampled_from([0, 4, -4, ARENA, ARENA + 1]) | BIG,
})
PATHS = (st.sampled_from(["m", "../outside", "/etc/passwd", "a/../../outside", "missing",
                          "", ".", "..", "m/..", "\x00", "m\x00x"])
         | st.text(max_size=20))
SMALL = st.integers(-3, 3)


@st.composite
def hostile_box(draw: Any) -> bytes:
    """One well-formed box with bogus values."""
    command = draw(st.sampled_from(["execute", "measure", "load", "attach", "health"]))
    ask = draw(st.integers(1, 9_999))
    model = draw(st.sampled_from(["m", "nope", ""]) | st.text(max_size=8))
    if command == "execute":
        return box(Execute, ask, model=model, inputs=draw(st.lists(SLOT, max_size=3)),
                   out_offset=draw(st.sampled_from([0, 64, ARENA - 1, -64]) | BIG),
                   out_capacity=draw(st.sampled_from([0, 4, 1024, -1]) | BIG))
    if command == "measure":
        return box(Measure, ask, model=model, inputs=draw(st.lists(SLOT, max_size=3)),
                   number=draw(SMALL), repeat=draw(SMALL), warmup=draw(SMALL))
    if command == "load":
        manifest = draw(st.none() | st.sampled_from(["{", "{}", '{"inputs": 5}', "m",
                                                     "../outside"]) | st.text(max_size=20))
        kw = {} if manifest is None else {"manifest": manifest}
        return box(Load, ask, path=draw(PATHS), **kw)
    if command == "attach":  # each fails: a failed attach must keep the session's arena
        return box(Attach, ask, workdir=draw(st.sampled_from(["/nonexistent", "", "/", "/\0",
                                                              "/tmp\0x"])),
                   arena=draw(st.sampled_from(["missing", "", "a\0b"])),
                   arena_size=draw(st.sampled_from([0, -1, ARENA]) | BIG), session="s")
    return box(CheckHealth, ask)


def test_bogus_slots_paths_and_sizes_are_refused_with_a_reason_and_the_channel_serves_on(
    setup: tuple[IdentityBackend, Path, Arena]
) -> None:
    channel = Channel(*setup)
    tried = [0]

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=hostile_box())
    def one(data: bytes) -> None:
        tried[0] += 1
        for reply in channel.send(data).values():
            if amp.ERROR in reply:
                assert reply[amp.ERROR_CODE] in DECLARED, reply
        channel.serves()

    one()
    print(f"\nfuzzed the executor's channel with {tried[0]} hostile boxes")
    assert tried[0] >= 50


VALID = [
    box(Execute, 1, **LEGIT),
    box(Measure, 2, model="m", inputs=LEGIT["inputs"], number=1, repeat=1, warmup=0),
    box(Load, 3, path="m"),
    box(CheckHealth, 4),
    box(Execute, None, **LEGIT),
]


@st.composite
def hostile_stream(draw: Any) -> bytes:
    stream = b"".join(draw(st.lists(st.sampled_from(VALID) | hostile_box(), min_size=1,
                                    max_size=4)))
    return mutate(draw, st, stream)


def test_mutated_bytes_on_the_channel_never_crash_the_executor(
    setup: tuple[IdentityBackend, Path, Arena]
) -> None:
    tried = [0]

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=hostile_stream(), chunk=st.integers(1, 4096))
    def one(data: bytes, chunk: int) -> None:
        tried[0] += 1
        channel = Channel(*setup)
        for i in range(0, max(len(data), 1), chunk):
            channel.server.dataReceived(data[i:i + chunk])  # nothing may escape
            if channel.transport.disconnecting:
                break
        if ENDLESS in data:  # the box limits hang up on a box that never ends
            assert channel.transport.disconnecting
        for reply in answers(channel.transport.value()).values():
            if amp.ERROR in reply:
                assert reply[amp.ERROR_CODE] in DECLARED, reply
        assert not channel.stopped
        channel.server.connectionLost(Failure(ConnectionError("the fuzz test hung up")))
        Channel(*setup).serves()

    one()
    print(f"\nfuzzed the executor's channel with {tried[0]} mutated byte streams")
    assert tried[0] >= 50


@pytest.mark.parametrize("workdir, arena", [("/tmp\0x", "arena"), ("/", "a\0b")])
def test_an_attach_naming_a_nul_path_is_refused_as_a_bad_request(
    setup: tuple[IdentityBackend, Path, Arena], workdir: str, arena: str
) -> None:
    channel = Channel(*setup)
    reply = channel.send(box(Attach, 7, workdir=workdir, arena=arena, arena_size=ARENA,
                             session="s"))[b"7"]
    assert reply[amp.ERROR_CODE] == b"BAD_REQUEST", reply
    assert b"NUL character" in reply[amp.ERROR_DESCRIPTION]
    channel.serves()
