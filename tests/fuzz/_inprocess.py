"""What the server and executor fuzz tests share: an in-memory backend and AMP box helpers.

L{IdentityBackend} is a real L{Backend} that needs no driver and no ONNX Runtime: every
model it loads takes one int8 tensor C{x} of 4 elements and gives it back as C{y}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from twisted.protocols import amp

from compassd.executor.backends import Backend, LoadedModel
from compassd.executor.manifest import Manifest, TensorSpec


class IdentityBackend(Backend):
    name = "identity"

    def info(self) -> list[str]:
        return ["backend=identity"]

    def health(self) -> tuple[bool, str]:
        return True, "fine"

    def load(self, path: str, manifest: Manifest | None = None, *,
             name: str | None = None) -> LoadedModel:
        model = LoadedModel(name or path, (TensorSpec("x", "int8", (4,)),),
                            (TensorSpec("y", "int8", (4,)),))
        self.models[model.name] = model
        return model

    def _runner(self, model: str, arrays: list[NDArray[Any]]
                ) -> Callable[[], list[NDArray[Any]]]:
        return lambda: [np.array(arrays[0], copy=True)]


def box(command: type[amp.Command], ask: int | None, **arguments: Any) -> bytes:
    """The wire bytes of C{command} with C{arguments} (no C{_ask}: a notice)."""
    values = command.makeArguments(arguments, None)
    values[amp.COMMAND] = command.commandName
    if ask is not None:
        values[amp.ASK] = str(ask).encode()
    return amp.AmpBox(values).serialize()


def mutate(draw: Any, st: Any, stream: bytes) -> bytes:
    """Flip, truncate, splice, or replace C{stream}, or give an oversized value."""
    how = draw(st.sampled_from(["keep", "flip", "truncate", "splice", "random",
                                "oversize", "huge-key", "endless"]))
    if how == "flip" and stream:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(stream) - 1))
            stream = stream[:i] + bytes([draw(st.integers(0, 255))]) + stream[i + 1:]
    elif how == "truncate" and stream:
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    elif how == "splice":
        i = draw(st.integers(0, len(stream)))
        stream = stream[:i] + draw(st.binary(max_size=64)) + stream[i:]
    elif how == "random":
        stream = draw(st.binary(max_size=512))
    elif how == "oversize":
        stream += (b"\x00\x08_command\x00\x07exec-run\x00\x04_ask\x00\x0299"
                   b"\x00\x05model\xff\xff" + b"A" * 70000 + b"\x00\x00")
    elif how == "huge-key":
        stream += b"\x01\x00" + b"k" * 256 + b"\xff\xff"
    elif how == "endless":
        stream += endless_box(draw(st.integers(1, 4000)))
    return stream


ENDLESS = b"endless-"
"""The start of every key of L{endless_box}."""


def endless_box(value_size: int, keys: int = 400) -> bytes:
    """A box of distinct keys that never ends: past every box limit, in bytes or keys."""
    value = b"v" * value_size
    return b"".join(len(ENDLESS + b"%d" % i).to_bytes(2, "big") + ENDLESS + b"%d" % i
                    + len(value).to_bytes(2, "big") + value for i in range(keys))


def answers(data: bytes) -> dict[bytes, amp.AmpBox]:
    """The answer and error boxes in C{data}, by their C{_answer}/C{_error} tag."""
    found = {}
    for reply in amp.parseString(data):
        tag = reply.get(amp.ANSWER) or reply.get(amp.ERROR)
        if tag is not None:
            found[tag] = reply
    return found
