"""A model loaded in a session on a board: its tensors, its runs and benchmarks.

Inputs are checked here against the model's L{TensorSpec}s before anything is sent, so
a wrong name, dtype or shape is a L{TensorMismatch} that names the tensor, and the board
never sees it. Arrays go out as their own bytes (L{compassd.tensors}); outputs come back
straight into freshly allocated arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionClosed
from twisted.python.failure import Failure

from ..protocol import session as sp
from ..protocol.errors import RunFailed, TensorMismatch
from ..protocol.peer import writes_batched
from ..tensors import TensorSpec, byte_view, empty_tensors, tensor_rows
from ._transfer import Filler

if TYPE_CHECKING:
    from .session import AsyncSession

Inputs = Union[np.ndarray, Sequence[Any], Mapping[str, Any]]
"""Inputs for a run: one array, a list in the model's input order, or a dict by name."""


class AsyncModel:
    """A model loaded in a session: C{name} (the board's name for it), C{path} (its file
    in the session directory), C{inputs} and C{outputs} (L{TensorSpec}s, in model order).
    """

    def __init__(self, session: AsyncSession, name: str, path: str,
                 inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.session = session
        self.name = name
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.last_seconds: float | None = None
        """What the backend took on the board for the latest L{run}."""

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        outs = ", ".join(f"{s.name}: {s.describe()}" for s in self.outputs)
        return f"<AsyncModel {self.name} ({ins}) -> ({outs})>"

    def check(self, inputs: Inputs) -> list[np.ndarray]:
        """The inputs as C-contiguous arrays in model order; L{TensorMismatch} (naming the
        tensor and what was expected) for an unknown name, a missing input, or a wrong
        count, dtype or shape. Nothing is sent."""
        specs = self.inputs
        wanted = ", ".join(f"{s.name}: {s.describe()}" for s in specs) or "none"
        values: list[Any]
        if isinstance(inputs, Mapping):
            known = {s.name for s in specs}
            for key in inputs:
                if key not in known:
                    raise TensorMismatch(
                        f"Model {self.name} has no input named {key!r}; its inputs are"
                        f" {wanted}."
                    )
            for spec in specs:
                if spec.name not in inputs:
                    raise TensorMismatch(
                        f"Input {spec.name!r} of model {self.name} is missing: expected"
                        f" {spec.describe()}."
                    )
            values = [inputs[s.name] for s in specs]
        else:
            if isinstance(inputs, list | tuple):
                values = list(inputs)
            else:
                values = [inputs]
            if len(values) != len(specs):
                raise TensorMismatch(
                    f"Model {self.name} takes {len(specs)} input(s) ({wanted});"
                    f" {len(values)} were given."
                )
        arrays = []
        for spec, value in zip(specs, values, strict=True):
            array = np.asarray(value)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            spec.check(array, self.name)
            arrays.append(np.ascontiguousarray(array))
        return arrays

    def _send(self, command: type[sp.CompassCommand], what: str, inputs: Inputs,
              arguments: dict[str, Any],
              received: Callable[[dict[str, Any]], Any],
              checked: list[np.ndarray] | None = None) -> Deferred[Any]:
        if checked is not None:
            arrays = checked
        else:
            try:
                arrays = self.check(inputs)
            except TensorMismatch as e:
                return fail(e)
        rows = tensor_rows([spec.name for spec in self.inputs], arrays)
        total = sum(a.nbytes for a in arrays)

        def work() -> Deferred[Any]:
            session = self.session
            with writes_batched():  # the box and a small byte run leave in one write
                d = session._protocol.callRemote(command, model=self.name, inputs=rows,
                                                 **arguments)
                sent = session._send_run([byte_view(a) for a in arrays], total)
            d.addCallback(received)  # at once, so a byte run after the answer is caught
            return session._after_run(d, sent)

        return self.session._operation(what, work, arguments.get("timeout"))

    def run(self, inputs: Inputs, *, timeout: float | None = None) -> Deferred[list[np.ndarray]]:
        """Run the model once; the result is its outputs as numpy arrays, in model order.
        The input arrays must stay unchanged until the result fires."""
        return self._run(inputs, timeout, None)

    def _run(self, inputs: Inputs, timeout: float | None,
             checked: list[np.ndarray] | None) -> Deferred[list[np.ndarray]]:
        """L{run}; C{checked}: the inputs as L{check} returned them, not checked again."""
        # the wire takes a float: a whole number of seconds (timeout=10) is one too
        wire = None if timeout is None else float(timeout)
        return self._send(sp.Run, f"running model {self.name}", inputs,
                          {"timeout": wire}, self._receive_outputs, checked)

    def benchmark(self, inputs: Inputs, number: int = 10, repeat: int = 3,
                  warmup: int = 1) -> Deferred[list[float]]:
        """Run the model C{warmup} times, then C{repeat} rounds of C{number} runs on the
        board; the result is each round's mean seconds per run, measured there."""
        return self._send(
            sp.Benchmark, f"benchmarking model {self.name}", inputs,
            {"number": int(number), "repeat": int(repeat), "warmup": int(warmup)},
            lambda answer: list(answer["times"]),
        )

    def _receive_outputs(self, answer: dict[str, Any]) -> Deferred[list[np.ndarray]]:
        self.last_seconds = answer["seconds"]
        rows: list[dict[str, Any]] = answer["outputs"]
        total = sum(int(row["nbytes"]) for row in rows)
        problem = None
        arrays: list[np.ndarray] = []
        try:
            arrays = empty_tensors(rows)
        except ValueError as e:
            problem = str(e)
        filler = Filler([byte_view(a) for a in arrays])

        def finish(outcome: Any) -> Any:
            if isinstance(outcome, Failure):
                if outcome.check(ConnectionClosed):
                    return Failure(self.session._lost_during(
                        f"receiving the outputs of model {self.name}: {filler.received} of"
                        f" {total} bytes arrived; the run"
                    ))
                return outcome
            if problem is not None:
                raise RunFailed(f"Board {self.session.address} sent a bad answer: {problem}.")
            order = {row["name"]: i for i, row in enumerate(rows)}
            if len(order) == len(rows) and set(order) == {s.name for s in self.outputs}:
                return [arrays[order[s.name]] for s in self.outputs]
            return arrays

        return self.session._protocol.expect_raw(total, filler.write).addBoth(finish)
