"""The executor: a child process of the board server that owns the backend.

- :mod:`compassd.executor.arena`: the shared-memory arena tensors cross in;
- :mod:`compassd.executor.manifest`: names and shapes for ``aipu`` graphs;
- :mod:`compassd.executor.backends`: the NPU driver and ONNX Runtime backends;
- :mod:`compassd.executor.handle`: the server's side (spawn, commands, death, spare pool);
- ``python -m compassd.executor``: the process itself.

``docs/executor.md`` describes the process model.
"""

from .arena import ALIGN, Arena, ArenaFull, Slot, SlotAllocator
from .handle import ExecutorHandle, ExecutorPool, spawn_executor
from .manifest import Manifest, ManifestError, TensorSpec, parse_manifest

__all__ = [
    "ALIGN",
    "Arena",
    "ArenaFull",
    "ExecutorHandle",
    "ExecutorPool",
    "Manifest",
    "ManifestError",
    "Slot",
    "SlotAllocator",
    "TensorSpec",
    "parse_manifest",
    "spawn_executor",
]
