"""The client side of a board session (compassd.client.session, .model and ._transfer)
against a small board.

The board here is a CompassPeer that speaks the session vocabulary with the same raw
byte-run framing a real board uses. Most tests connect through iosim pumps, so every byte
is delivered when the test says; the last one runs the blocking API over real loopback
sockets on the client's private reactor, under a deadline.
"""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

import numpy as np
import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from compassd.client import (
    AsyncLease,
    AsyncModel,
    AsyncSession,
    BoardUnreachable,
    ChecksumMismatch,
    Lease,
    ModelRejected,
    NoSuchFile,
    RemoteFile,
    SessionEnded,
    TensorMismatch,
    TensorSpec,
    TicketRejected,
    _reactor,
    _transfer,
    connect_session,
)
from compassd.client.session import DEADLINE_GRACE
from compassd.protocol import Hello
from compassd.protocol import client_tracker as ct
from compassd.protocol import session as sp
from compassd.protocol.peer import CompassPeer

TICKET = "good-ticket"

ADD_INPUTS = [
    {"name": "x", "dtype": "float32", "shape": [-1, 3]},
    {"name": "mask", "dtype": "int8", "shape": [4]},
]
ADD_OUTPUTS = [
    {"name": "x_plus_one", "dtype": "float32", "shape": [-1, 3]},
    {"name": "mask_out", "dtype": "int8", "shape": [4]},
]


def result(d: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def fired(d: Deferred[Any]) -> bool:
    """Whether C{d} has its result (one chained to another Deferred has none yet)."""
    seen: list[bool] = []
    d.addBoth(lambda outcome: seen.append(True) or outcome)
    return bool(seen)


def failure(d: Deferred[Any]) -> Failure:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    assert isinstance(outcome[0], Failure), f"expected a failure, got {outcome[0]!r}"
    return outcome[0]


class FakeBoard(CompassPeer):
    """A board that keeps files in memory; its one model adds 1 to float32 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.seen: list[str] = []
        self.timeouts: list[float | None] = []
        self.pieces: list[int] = []
        self.lie_about_sha = False
        self.cut_download_after: int | None = None
        self.benchmarked: dict[str, Any] = {}
        self.loaded: dict[str, Any] = {}
        self._outputs: bytes | None = None
        self.hello_user: str | None = None
        self.stopped = False
        """Like a SIGSTOPped board: the connection stays, nothing is read or answered."""
        self.stop_after_hello = False

    def dataReceived(self, data: bytes) -> None:
        if not self.stopped:
            super().dataReceived(data)

    @Hello.responder
    def hello(self, versions: list[int], role: str, token: str | None = None,
              user: str | None = None, software: str | None = None) -> dict[str, Any]:
        self.greeted = True
        self.hello_user = user
        self.stopped = self.stop_after_hello
        return {"version": 1, "user": user or "anonymous", "roles": [role],
                "software": "fake board"}

    @sp.OpenSession.responder
    def open_session(self, ticket: str, device: str | None = None) -> dict[str, Any]:
        self.seen.append("open-session")
        if ticket != TICKET:
            raise TicketRejected(f"Ticket {ticket!r} is not one the tracker granted.")
        return {"session": "s-1", "lease": "l-1", "expires_in": 60.0, "backend": "onnx",
                "info": ["cpu=test", "cores=2"], "max_upload": 64 << 20}

    @sp.Upload.responder
    def upload(self, path: str, size: int, sha256: str) -> Deferred[dict[str, Any]]:
        self.seen.append("upload")
        buf = io.BytesIO()
        pieces = [0]

        def sink(data: bytes) -> None:
            pieces[0] += 1
            buf.write(data)

        def check(_: object) -> dict[str, Any]:
            self.pieces.append(pieces[0])
            data = buf.getvalue()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ChecksumMismatch(f"The bytes of {path!r} do not match their SHA-256.")
            self.files[path] = data
            return {}

        return self.expect_raw(size, sink).addCallback(check)

    @sp.Download.responder
    def download(self, path: str) -> dict[str, Any]:
        self.seen.append("download")
        if path not in self.files:
            raise NoSuchFile(f"No file {path!r} in the session directory.")
        data = self.files[path]
        sha = "0" * 64 if self.lie_about_sha else hashlib.sha256(data).hexdigest()

        def send() -> None:
            if self.cut_download_after is None:
                self.transport.write(data)
            else:
                self.transport.write(data[: self.cut_download_after])
                self.transport.loseConnection()

        self.after_dispatch(send)
        return {"size": len(data), "sha256": sha}

    @sp.ListFiles.responder
    def list_files(self, path: str | None = None) -> dict[str, Any]:
        self.seen.append("list-files")
        return {"files": [{"name": n, "size": len(d), "kind": "file"}
                          for n, d in sorted(self.files.items())]}

    @sp.RemoveFile.responder
    def remove_file(self, path: str) -> dict[str, Any]:
        self.seen.append("remove-file")
        if self.files.pop(path, None) is None:
            raise NoSuchFile(f"No file {path!r} in the session directory.")
        return {}

    @sp.LoadModel.responder
    def load_model(self, path: str, manifest: str | None = None) -> dict[str, Any]:
        self.seen.append("load-model")
        if path not in self.files:
            raise NoSuchFile(f"No file {path!r} in the session directory.")
        if self.files[path] == b"not a model":
            raise ModelRejected(f"{path!r} is not an ONNX model.")
        self.loaded = {"path": path, "manifest": manifest}
        if path.startswith("single"):
            return {"model": "m-single", "inputs": ADD_INPUTS[:1], "outputs": ADD_OUTPUTS[:1]}
        return {"model": "m-add", "inputs": ADD_INPUTS, "outputs": ADD_OUTPUTS}

    def _take_inputs(self, rows: list[dict[str, Any]]) -> Deferred[list[np.ndarray]]:
        buf = io.BytesIO()
        total = sum(row["nbytes"] for row in rows)

        def decode(_: object) -> list[np.ndarray]:
            data, offset, arrays = buf.getvalue(), 0, []
            for row in rows:
                raw = data[offset : offset + row["nbytes"]]
                offset += row["nbytes"]
                arrays.append(np.frombuffer(raw, row["dtype"]).reshape(row["shape"]))
            return arrays

        return self.expect_raw(total, buf.write).addCallback(decode)

    @sp.Run.responder
    def run(self, model: str, inputs: list[dict[str, Any]],
            timeout: float | None = None) -> Deferred[dict[str, Any]]:
        self.seen.append("run")
        self.timeouts.append(timeout)

        def compute(arrays: list[np.ndarray]) -> dict[str, Any]:
            outputs = [a + np.float32(1) if a.dtype == np.float32 else a for a in arrays]
            names = [row["name"] for row in ADD_OUTPUTS]
            rows = [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape),
                     "nbytes": a.nbytes} for n, a in zip(names, outputs, strict=False)]
            # Outputs go in reverse order: the client must put them in model order.
            self._outputs = b"".join(a.tobytes() for a in reversed(outputs))
            return {"outputs": list(reversed(rows)), "seconds": 0.25}

        answered = self._take_inputs(inputs).addCallback(compute)

        def send_outputs(_: object) -> None:
            data, self._outputs = self._outputs, None
            if data is not None:
                self.transport.write(data)

        self.after_dispatch(lambda: answered.addCallback(send_outputs))
        return answered

    @sp.Benchmark.responder
    def benchmark(self, model: str, inputs: list[dict[str, Any]], number: int, repeat: int,
                  warmup: int | None = None) -> Deferred[dict[str, Any]]:
        self.seen.append("benchmark")

        def measure(arrays: list[np.ndarray]) -> dict[str, Any]:
            self.benchmarked = {"number": number, "repeat": repeat, "warmup": warmup,
                                "x": arrays[0]}
            return {"times": [0.001 * (i + 1) for i in range(repeat)]}

        return self._take_inputs(inputs).addCallback(measure)

    @sp.CloseSession.responder
    def close_session(self) -> dict[str, Any]:
        self.seen.append("close-session")
        return {}


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """Connects to a FakeBoard through an iosim pump."""

    def __init__(self) -> None:
        self.board = FakeBoard()
        self.pump: iosim.IOPump | None = None
        self.connects = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.connects += 1
        client = factory.buildProtocol(iosim.FakeAddress())
        _, _, self.pump = iosim.connectedServerAndClient(lambda: self.board, lambda: client)
        return succeed(client)

    def flush(self) -> None:
        assert self.pump is not None
        self.pump.flush()


def open_session(ep: PumpEndpoint | None = None, ticket: str = TICKET) -> tuple[
        AsyncSession, PumpEndpoint]:
    ep = ep or PumpEndpoint()
    d = AsyncSession.open(None, "board:9091", ticket, user="alice", endpoint=ep)
    ep.flush()
    return result(d), ep


def call(ep: PumpEndpoint, d: Deferred[Any]) -> Any:
    ep.flush()
    return result(d)


def load(session: AsyncSession, ep: PumpEndpoint, name: str = "add.onnx") -> AsyncModel:
    call(ep, session.upload(b"onnx bytes", name))
    return call(ep, session.load_model(name))


X = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
MASK = np.array([1, -2, 3, -4], dtype=np.int8)


# --- opening ---------------------------------------------------------------------------


def test_open_says_hello_as_client_then_opens_with_the_ticket_and_keeps_the_answer() -> None:
    session, ep = open_session()
    assert ep.board.hello_user == "alice"
    assert ep.board.seen == ["open-session"]
    assert (session.session, session.lease, session.backend) == ("s-1", "l-1", "onnx")
    assert session.expires_in == 60.0
    assert session.info == {"cpu": "test", "cores": "2"}
    assert session.max_upload == 64 << 20
    assert session.active


# --- deadlines: a board that stops answering is a sentence, never a hang ---------------


def test_a_board_that_never_answers_the_hello_is_unreachable_at_the_open_timeout() -> None:
    clock, ep = Clock(), PumpEndpoint()
    ep.board.stopped = True
    d = AsyncSession.open(clock, "board:9091", TICKET, endpoint=ep, timeout=5)
    ep.flush()
    clock.advance(4.9)
    ep.flush()
    assert not fired(d), "gave up before the timeout"
    clock.advance(0.1)
    ep.flush()
    caught = failure(d)
    assert caught.check(BoardUnreachable), caught
    said = str(caught.value)
    assert "board at board:9091" in said and "did not answer within 5 s" in said, said
    assert not clock.getDelayedCalls()


def test_opening_a_session_is_bounded_by_the_lease_time_left_and_its_grace() -> None:
    clock, ep = Clock(), PumpEndpoint()
    ep.board.stop_after_hello = True
    d = AsyncSession.open(clock, "board:9091", TICKET, endpoint=ep, timeout=5,
                          expires_in=20)
    ep.flush()
    assert ep.board.seen == [], "the board read the opening although it is stopped"
    clock.advance(20 + DEADLINE_GRACE - 0.1)
    ep.flush()
    assert not fired(d), "gave up before the lease's time was up"
    clock.advance(0.1)
    ep.flush()
    caught = failure(d)
    assert caught.check(BoardUnreachable), caught
    said = str(caught.value)
    assert "did not answer the opening of the session" in said and "20 s" in said, said


def test_a_session_opened_in_time_keeps_no_opening_timer() -> None:
    clock, ep = Clock(), PumpEndpoint()
    d = AsyncSession.open(clock, "board:9091", TICKET, endpoint=ep, expires_in=20)
    ep.flush()
    session = result(d)
    # only the session itself (no call is running, so no call deadline either)
    assert not clock.getDelayedCalls()
    clock.advance(30)
    assert session.active


@pytest.mark.parametrize(("timeout", "gives_up", "why"), [
    (None, 60.0, "the deadline of lease l-1"),
    (5.0, 5.0, "its own timeout of 5 s"),
])
def test_a_run_on_a_board_that_stops_ends_the_session_at_its_deadline(
    timeout: float | None, gives_up: float, why: str
) -> None:
    clock, ep = Clock(), PumpEndpoint()
    d = AsyncSession.open(clock, "board:9091", TICKET, endpoint=ep, timeout=5)
    ep.flush()
    session = result(d)  # the board says 60 s are left on lease l-1
    model = load(session, ep)
    ep.board.stopped = True
    running = model.run({"x": X, "mask": MASK}, timeout=timeout)
    ep.flush()
    clock.advance(gives_up + DEADLINE_GRACE - 0.1)
    ep.flush()
    assert not fired(running), "gave up before the deadline"
    clock.advance(0.1)
    ep.flush()
    caught = failure(running)
    assert caught.check(SessionEnded), caught
    said = str(caught.value)
    assert "did not answer" in said and why in said and "lease l-1" in said, said
    later = failure(session.listdir())
    assert later.check(SessionEnded) and why in str(later.value)


def test_a_run_answered_in_time_disarms_its_deadline() -> None:
    clock, ep = Clock(), PumpEndpoint()
    d = AsyncSession.open(clock, "board:9091", TICKET, endpoint=ep)
    ep.flush()
    session = result(d)
    model = load(session, ep)
    (y, _) = call(ep, model.run({"x": X, "mask": MASK}, timeout=5))
    np.testing.assert_array_equal(y, X + 1)
    assert not clock.getDelayedCalls()
    clock.advance(120)
    assert session.active


def test_a_rejected_ticket_fails_the_open_with_ticket_rejected_and_drops_the_connection(
) -> None:
    ep = PumpEndpoint()
    d = AsyncSession.open(None, "board:9091", "stolen", endpoint=ep)
    ep.flush()
    error = failure(d).value
    assert isinstance(error, TicketRejected)
    assert "stolen" in str(error)
    assert not ep.board.alive


# --- files -----------------------------------------------------------------------------


def test_upload_streams_a_file_in_chunks_with_progress_and_the_board_checks_sha256(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "CHUNK", 1000)
    data = bytes(range(256)) * 40  # 10,240 bytes: 11 chunks
    local = tmp_path / "weights.bin"
    local.write_bytes(data)
    session, ep = open_session()
    seen: list[tuple[int, int]] = []
    d = session.upload(str(local), progress=lambda done, total: seen.append((done, total)))
    # Flow control: only the first chunk is written before the transport asks for more.
    assert seen == [(1000, len(data))]
    assert call(ep, d) == "weights.bin"
    assert ep.board.files["weights.bin"] == data
    assert ep.board.pieces[-1] >= 11
    assert [done for done, _ in seen] == [*range(1000, 10001, 1000), len(data)]


def test_a_call_made_during_an_upload_waits_so_its_box_never_splits_the_byte_run(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "CHUNK", 100)
    session, ep = open_session()
    up = session.upload(b"a" * 1000, "a.bin")
    listed = session.listdir()
    ep.flush()
    assert result(up) == "a.bin"
    assert result(listed) == [RemoteFile("a.bin", 1000, "file")]
    assert ep.board.seen == ["open-session", "upload", "list-files"]


def test_upload_with_a_wrong_sha256_is_refused_by_the_board_and_the_session_goes_on(
) -> None:
    session, ep = open_session()
    d = session.upload(b"payload", "p.bin", size=7, sha256="0" * 64)
    ep.flush()
    assert isinstance(failure(d).value, ChecksumMismatch)
    assert "p.bin" not in ep.board.files
    assert call(ep, session.upload(b"payload", "p.bin")) == "p.bin"
    assert ep.board.files["p.bin"] == b"payload"


def test_download_returns_the_bytes_after_the_answer_or_writes_them_to_a_file(
    tmp_path: Any
) -> None:
    session, ep = open_session()
    data = np.random.default_rng(1).bytes(200_000)
    ep.board.files["out.bin"] = data
    assert call(ep, session.download("out.bin")) == data
    path = call(ep, session.download("out.bin", tmp_path))
    assert path == str(tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert call(ep, session.listdir()) == [RemoteFile("out.bin", 200_000, "file")]


def test_download_whose_bytes_do_not_match_the_announced_sha256_is_checksum_mismatch(
    tmp_path: Any
) -> None:
    session, ep = open_session()
    ep.board.files["out.bin"] = b"x" * 5000
    ep.board.lie_about_sha = True
    d = session.download("out.bin", tmp_path / "copy.bin")
    ep.flush()
    error = failure(d).value
    assert isinstance(error, ChecksumMismatch)
    assert "'out.bin'" in str(error) and "download it again" in str(error)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
    ep.board.lie_about_sha = False
    assert call(ep, session.download("out.bin")) == b"x" * 5000  # still in step


def test_remove_and_a_missing_file_is_no_such_file() -> None:
    session, ep = open_session()
    ep.board.files["a"] = b"1"
    assert call(ep, session.remove("a")) is None
    d = session.remove("a")
    ep.flush()
    assert isinstance(failure(d).value, NoSuchFile)
    assert call(ep, session.listdir()) == []


def test_connection_lost_mid_download_fails_with_session_ended_saying_how_far_it_got(
    tmp_path: Any
) -> None:
    session, ep = open_session()
    ep.board.files["big.bin"] = b"z" * 10_000
    ep.board.cut_download_after = 4_000
    d = session.download("big.bin", tmp_path / "big.bin")
    ep.flush()
    error = failure(d).value
    assert isinstance(error, SessionEnded)
    text = str(error)
    assert "connection to the board at board:9091 was lost" in text
    assert "4000 of 10000 bytes arrived" in text
    assert list(tmp_path.iterdir()) == []
    later = session.listdir()
    assert isinstance(failure(later).value, SessionEnded)
    assert not session.active


# --- models ----------------------------------------------------------------------------


def test_load_model_uploads_a_local_file_and_its_manifest_then_loads_it(tmp_path: Any) -> None:
    model_file = tmp_path / "add.onnx"
    model_file.write_bytes(b"onnx bytes")
    manifest = tmp_path / "add.json"
    manifest.write_text('{"inputs": []}')
    session, ep = open_session()
    model = call(ep, session.load_model(str(model_file), manifest=str(manifest)))
    assert ep.board.files == {"add.onnx": b"onnx bytes", "add.json": b'{"inputs": []}'}
    assert ep.board.loaded == {"path": "add.onnx", "manifest": "add.json"}
    assert model.name == "m-add"
    assert model.inputs == [TensorSpec("x", (-1, 3), "float32"), TensorSpec("mask", (4,), "int8")]
    assert [o.name for o in model.outputs] == ["x_plus_one", "mask_out"]


def test_a_model_the_backend_rejects_is_model_rejected_and_the_session_goes_on() -> None:
    session, ep = open_session()
    call(ep, session.upload(b"not a model", "bad.onnx"))
    d = session.load_model("bad.onnx")
    ep.flush()
    assert isinstance(failure(d).value, ModelRejected)
    assert load(session, ep).name == "m-add"


def test_run_by_list_sends_raw_tensors_and_returns_exact_outputs_in_model_order() -> None:
    session, ep = open_session()
    model = load(session, ep)
    outputs = call(ep, model.run([X, MASK]))
    assert [o.dtype for o in outputs] == [np.float32, np.int8]
    np.testing.assert_array_equal(outputs[0], X + np.float32(1))
    np.testing.assert_array_equal(outputs[1], MASK)
    assert model.last_seconds == 0.25


def test_run_with_a_timeout_in_whole_seconds_sends_it_and_returns_the_outputs() -> None:
    # bench/chaos.py found it: model.run(x, timeout=10) failed with "Bad float value 10"
    session, ep = open_session()
    model = load(session, ep)
    outputs = call(ep, model.run([X, MASK], timeout=10))
    np.testing.assert_array_equal(outputs[0], X + np.float32(1))
    assert ep.board.timeouts == [10.0]


def test_run_by_dict_matches_run_by_list_and_any_size_dimensions_accept_any_length() -> None:
    session, ep = open_session()
    model = load(session, ep)
    x = np.ones((5, 3), np.float32)
    outputs = call(ep, model.run({"mask": MASK, "x": x}))
    np.testing.assert_array_equal(outputs[0], x + 1)
    assert outputs[0].shape == (5, 3)
    np.testing.assert_array_equal(outputs[1], MASK)


def test_run_sends_strided_and_big_endian_arrays_as_their_values() -> None:
    session, ep = open_session()
    model = load(session, ep)
    strided = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]
    big_endian = MASK.astype(">i1")
    outputs = call(ep, model.run([strided, big_endian]))
    np.testing.assert_array_equal(outputs[0], strided + 1)
    swapped = np.arange(6, dtype=">f4").reshape(2, 3)
    outputs = call(ep, model.run([swapped, MASK]))
    np.testing.assert_array_equal(outputs[0], np.arange(6, dtype=np.float32).reshape(2, 3) + 1)


def test_large_inputs_are_streamed_in_chunks_and_the_answer_waits_for_the_last_one(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "CHUNK", 7)
    session, ep = open_session()
    model = load(session, ep)
    x = np.linspace(0, 1, 300, dtype=np.float32).reshape(100, 3)
    running = model.run([x, MASK])
    listed = session.listdir()  # queued behind the run's byte runs
    ep.flush()
    outputs = result(running)
    np.testing.assert_array_equal(outputs[0], x + 1)
    np.testing.assert_array_equal(outputs[1], MASK)
    assert [f.name for f in result(listed)] == ["add.onnx"]


def test_cancelling_a_call_drops_the_connection_and_ends_the_session() -> None:
    session, ep = open_session()
    ep.board.files["a.bin"] = b"a" * 100
    d = session.download("a.bin")
    d.cancel()
    ep.flush()
    assert failure(d).check(CancelledError)
    assert not ep.board.alive
    assert isinstance(failure(session.listdir()).value, SessionEnded)


def test_a_single_array_runs_a_one_input_model() -> None:
    session, ep = open_session()
    model = load(session, ep, "single.onnx")
    (output,) = call(ep, model.run(X))
    np.testing.assert_array_equal(output, X + 1)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"x": X, "mask": MASK, "bias": X}, ["no input named 'bias'", "x: float32 (?, 3)"]),
        ({"x": X}, ["Input 'mask'", "is missing", "int8 (4,)"]),
        ([X.astype(np.float64), MASK], ["Input 'x'", "float64", "expects float32",
                                         ".astype('float32')"]),
        ([X.reshape(3, 2), MASK], ["Input 'x'", "shape (3, 2)", "expects (?, 3)"]),
        ([X[0], MASK], ["Input 'x'", "shape (3,)", "expects (?, 3)"]),
        ([X], ["takes 2 input(s)", "1 were given"]),
    ],
)
def test_inputs_that_do_not_fit_are_tensor_mismatch_naming_the_tensor_and_nothing_is_sent(
    inputs: Any, words: list[str]
) -> None:
    session, ep = open_session()
    model = load(session, ep)
    before = list(ep.board.seen)
    d = model.run(inputs)
    ep.flush()
    error = failure(d).value
    assert isinstance(error, TensorMismatch)
    for word in words:
        assert word in str(error)
    assert ep.board.seen == before
    assert len(call(ep, model.run([X, MASK]))) == 2  # the session is still usable


def test_benchmark_sends_the_inputs_and_returns_seconds_per_round() -> None:
    session, ep = open_session()
    model = load(session, ep)
    times = call(ep, model.benchmark([X, MASK], number=10, repeat=3, warmup=2))
    assert times == [0.001, 0.002, 0.003]
    assert {k: ep.board.benchmarked[k] for k in ("number", "repeat", "warmup")} == {
        "number": 10, "repeat": 3, "warmup": 2}
    np.testing.assert_array_equal(ep.board.benchmarked["x"], X)


# --- ending ----------------------------------------------------------------------------


def test_session_closing_notice_makes_later_calls_fail_with_its_message() -> None:
    session, ep = open_session()
    model = load(session, ep)
    ep.board.callRemote(sp.SessionClosing, reason="expired",
                        message="Lease l-1 expired; the board is back in the pool.")
    ep.flush()
    assert not session.active
    assert session.end_reason == "expired"
    for d in (session.listdir(), model.run([X, MASK]), session.upload(b"1", "one")):
        error = failure(d).value
        assert isinstance(error, SessionEnded)
        assert "Lease l-1 expired" in str(error)
    assert ep.board.seen[-1] == "load-model"  # nothing went out after the notice


def test_close_says_close_session_and_drops_the_connection() -> None:
    session, ep = open_session()
    d = session.close()
    ep.flush()
    assert result(d) is None
    assert ep.board.seen[-1] == "close-session"
    assert not ep.board.alive
    error = failure(session.listdir()).value
    assert isinstance(error, SessionEnded) and "was closed" in str(error)
    ep.flush()
    assert result(session.close()) is None  # closing twice is fine


# --- the lease opens its session lazily and closes it before releasing --------------


class FakeTracker:
    def __init__(self, log: list[str]) -> None:
        self.reactor = None
        self.user = "alice"
        self.connected = True
        self.log = log

    def call(self, command: Any, **arguments: Any) -> Deferred[Any]:
        self.log.append(command.commandName.decode())
        return succeed({})


def make_lease(tracker: Any, address: str = "board:9091") -> AsyncLease:
    return AsyncLease(tracker=tracker, id="l-1", request="r-1", key="demo", device="npu-1",
                      address=address, ticket=TICKET, deadline=1e12, info={})


def test_lease_opens_one_session_on_first_use_and_closes_it_before_release() -> None:
    ep = PumpEndpoint()
    lease = make_lease(FakeTracker(ep.board.seen))
    opening = lease.open_session(endpoint=ep)
    again = lease.open_session(endpoint=ep)
    ep.flush()
    session = result(opening)
    assert result(again) is session
    model = call(ep, lease.upload(b"onnx bytes", "add.onnx").addCallback(
        lambda _: lease.load_model("add.onnx")))
    assert model.name == "m-add"
    assert ep.connects == 1
    d = lease.release()
    ep.flush()
    result(d)
    assert ep.board.seen[-2:] == ["close-session", ct.Release.commandName.decode()]
    assert not lease.active


def test_blocking_session_and_lease_over_real_sockets(tmp_path: Any) -> None:
    reactor = _reactor.reactor()
    boards: list[FakeBoard] = []

    def build() -> FakeBoard:
        boards.append(FakeBoard())
        return boards[-1]

    port = _reactor.call(lambda: succeed(reactor.listenTCP(
        0, Factory.forProtocol(build), interface="127.0.0.1")))
    address = f"127.0.0.1:{port.getHost().port}"
    big = np.random.default_rng(2).bytes(3 << 20)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "add.onnx").write_bytes(b"onnx bytes")
    outcome: dict[str, Any] = {}

    def script() -> None:
        with connect_session(address, TICKET, user="bob") as session:
            outcome["uploaded"] = session.upload(str(tmp_path / "big.bin"))
            outcome["back"] = session.download("big.bin")
            model = session.load_model(str(tmp_path / "add.onnx"))
            outcome["list"] = model.run([X, MASK])
            outcome["dict"] = model.run({"x": X, "mask": MASK})
            outcome["times"] = model.benchmark([X, MASK], number=10, repeat=3)
            try:
                model.run({"x": X})
            except TensorMismatch as e:
                outcome["mismatch"] = str(e)
        log: list[str] = []
        with Lease(make_lease(FakeTracker(log), address)) as lease:
            lease.listdir()
            log.append("used")
        outcome["lease_log"] = log

    worker = threading.Thread(target=script, daemon=True)
    worker.start()
    worker.join(30)
    _reactor.call(port.stopListening)
    assert not worker.is_alive(), "the blocking session did not finish within 30 s"
    assert outcome["uploaded"] == "big.bin"
    assert outcome["back"] == big
    for outputs in (outcome["list"], outcome["dict"]):
        np.testing.assert_array_equal(outputs[0], X + 1)
        np.testing.assert_array_equal(outputs[1], MASK)
    assert outcome["times"] == [0.001, 0.002, 0.003]
    assert "Input 'mask'" in outcome["mismatch"]
    assert boards[0].files["big.bin"] == big
    assert boards[0].seen[-1] == "close-session"
    assert boards[1].seen == ["open-session", "list-files", "close-session"]
    assert outcome["lease_log"] == ["used", "release"]


def test_a_run_whose_bytes_are_written_is_answered_without_waiting_on_them() -> None:
    from compassd.client.session import AsyncSession

    class Watched(Deferred):  # type: ignore[type-arg]
        chained = 0

        def addBoth(self, *args: Any, **kwargs: Any) -> Any:
            self.chained += 1
            return super().addBoth(*args, **kwargs)

    answer = Watched()
    assert AsyncSession._after_run(answer, succeed(None)) is answer
    assert answer.chained == 0  # nothing chained on it: one Deferred less per small run
    got: list[Any] = []
    sending: Deferred[None] = Deferred()
    later: Deferred[str] = Deferred()
    AsyncSession._after_run(later, sending).addBoth(got.append)
    later.callback("outputs")
    assert got == []  # the answer waits for the bytes still being written
    sending.callback(None)
    assert got == ["outputs"]
    refused: Deferred[str] = Deferred()
    failed: Deferred[None] = Deferred()
    failed.errback(ConnectionError("the connection went away while sending"))
    AsyncSession._after_run(refused, failed).addBoth(got.append)
    refused.callback("outputs")
    assert isinstance(got[-1], Failure) and got[-1].check(ConnectionError)
