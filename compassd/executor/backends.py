"""The backends an executor runs models with: the NPU driver or ONNX Runtime (CPU).

A L{Backend} loads model files, checks every input against the model's signature and
runs or benchmarks the model. It raises only compassd protocol errors, with sentences:

- L{ModelRejected}: the backend could not load the file (its own message is included);
- L{TensorMismatch}: an input is unknown, missing, or of the wrong dtype or shape;
- L{RunFailed}: the backend failed while running;
- L{BackendPoisoned} (a L{RunFailed}): the backend can no longer be used in this process
  (a driver job timed out and may still run on the NPU): the executor answers and exits.

Backends are plain blocking objects with no reactor: the executor process calls them.
"""

from __future__ import annotations

import abc
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from ..protocol.errors import ModelRejected, RunFailed, TensorMismatch
from ..tensors import shape_fits, shape_text
from .external_data import check_external_data
from .manifest import Manifest, ManifestError, TensorSpec, bind, load_manifest, manifest_path_for


class BackendPoisoned(RunFailed):
    """The backend is unusable for the rest of this process; the executor must exit."""


@attrs.frozen
class LoadedModel:
    """What L{Backend.load} gives: the model's name and its tensor signatures."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def check_inputs(
    model: str, specs: Sequence[TensorSpec], given: Sequence[tuple[str, Any]]
) -> list[NDArray[Any]]:
    """Order and check C{given} inputs (name, array) against a model's C{specs}.

    Inputs are matched by name when every name is set, else by position. Returns
    C-contiguous arrays in model order, or raises L{TensorMismatch} naming the tensor and
    what the model expects.
    """
    names = [s.name for s in specs]
    if given and all(name for name, _ in given):
        by_name: dict[str, Any] = {}
        for name, array in given:
            if name not in names:
                raise TensorMismatch(
                    f"Model {model} has no input named {name!r}; its inputs are"
                    f" {', '.join(repr(n) for n in names) or 'none'}."
                )
            if name in by_name:
                raise TensorMismatch(f"The input {name!r} of model {model} was given twice.")
            by_name[name] = array
        missing = [n for n in names if n not in by_name]
        if missing:
            raise TensorMismatch(
                f"Model {model} needs the input(s) {', '.join(repr(n) for n in missing)},"
                " which the call did not give."
            )
        ordered = [by_name[n] for n in names]
    else:
        if len(given) != len(specs):
            raise TensorMismatch(
                f"Model {model} takes {len(specs)} input(s)"
                f" ({', '.join(repr(n) for n in names)}), but the call gave {len(given)}."
            )
        ordered = [array for _, array in given]
    result = []
    for spec, value in zip(specs, ordered, strict=True):
        a = np.asarray(value)
        expected = f"{spec.dtype} with shape {shape_text(spec.shape)}"
        if a.dtype != np.dtype(spec.dtype):
            raise TensorMismatch(
                f"Input {spec.name!r} of model {model} must be {expected}, but it is {a.dtype.name}"
                f" with shape {shape_text(a.shape)}: convert it with .astype({spec.dtype!r})."
            )
        if not shape_fits(a.shape, spec.shape):
            raise TensorMismatch(
                f"Input {spec.name!r} of model {model} must be {expected}, but its shape is"
                f" {shape_text(a.shape)}."
            )
        result.append(np.ascontiguousarray(a))
    return result


def time_runs(run: Callable[[], object], number: int, repeat: int, warmup: int) -> list[float]:
    """Seconds per run: C{warmup} untimed runs, then C{repeat} means of C{number} runs."""
    if number < 1 or repeat < 1 or warmup < 0:
        raise RunFailed(
            f"A benchmark needs number >= 1, repeat >= 1 and warmup >= 0"
            f" (got number={number}, repeat={repeat}, warmup={warmup})."
        )
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - start) / number)
    return times


class Backend(abc.ABC):
    """A way to run models. Subclasses implement the C{_load}/C{_run} hooks."""

    name: str = ""

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}
        self.session_dir: str | None = None
        """The directory every file a model reads must be inside (the executor sets it
        when it attaches to a session); None: the model file's own directory."""

    @abc.abstractmethod
    def info(self) -> list[str]:
        """Lines of C{key=value} describing the backend and device (for L{Ready})."""

    @abc.abstractmethod
    def health(self) -> tuple[bool, str]:
        """Whether the backend can run models now, and a sentence saying why (not)."""

    @abc.abstractmethod
    def load(
        self, path: str, manifest: Manifest | None = None, *, name: str | None = None
    ) -> LoadedModel:
        """Load the model file at C{path} (L{ModelRejected} if the backend refuses it).

        The model is known by C{name} (default: C{path} as given); loading a name again
        replaces the model.
        """

    @abc.abstractmethod
    def _runner(self, model: str, arrays: list[NDArray[Any]]) -> Callable[[], list[NDArray[Any]]]:
        """A callable running C{model} on checked inputs, for C{run} and C{benchmark}."""

    def _runner_into(
        self, model: str, arrays: list[NDArray[Any]], out: list[NDArray[Any]]
    ) -> Callable[[], list[NDArray[Any]]] | None:
        """A callable running C{model} that writes its outputs into the arrays C{out}
        (one per output, of its dtype and shape) and returns them; None where the backend
        cannot write into caller memory (then L{run} returns new arrays)."""
        return None

    def model(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            loaded = ", ".join(repr(m) for m in self.models) or "none"
            raise RunFailed(
                f"No model named {name!r} is loaded (loaded: {loaded}); load it first."
            ) from None

    def run(
        self, model: str, inputs: Sequence[Any], out: list[NDArray[Any]] | None = None
    ) -> list[NDArray[Any]]:
        """Run C{model} once on inputs given in model order (arrays, or (name, array)).

        With C{out} (a writable C-contiguous array per output, of the output's dtype and
        shape, e.g. views of the arena), a backend that can writes the outputs there and
        returns those very arrays, saving an allocation and a copy; others return new
        arrays, so callers compare with C{is}.
        """
        arrays = check_inputs(model, self.model(model).inputs, _pairs(inputs))
        if out is not None:
            runner = self._runner_into(model, arrays, out)
            if runner is not None:
                return runner()
        return self._runner(model, arrays)()

    def benchmark(
        self, model: str, inputs: Sequence[Any], number: int = 10, repeat: int = 3, warmup: int = 1
    ) -> list[float]:
        """Seconds per run of C{model}: one figure per repeat, each a mean of C{number}."""
        arrays = check_inputs(model, self.model(model).inputs, _pairs(inputs))
        return time_runs(self._runner(model, arrays), number, repeat, warmup)

    def close(self) -> None:
        """Free the models and the device."""
        self.models.clear()


def _pairs(inputs: Sequence[Any]) -> list[tuple[str, Any]]:
    return [(item[0], item[1]) if isinstance(item, tuple) else ("", item) for item in inputs]


# --- the NPU -------------------------------------------------------------------------


class AipuBackend(Backend):
    """Models are C{aipu.bin} graphs run by the NPU driver through C{compassd._aipu}.

    The driver is opened at construction; if that fails the backend stays unhealthy
    (L{health} says why and retries) and refuses models. C{timeout_ms} bounds each job
    (C{<= 0}: wait forever); a timed-out job poisons the driver (L{BackendPoisoned}).
    """

    name = "aipu"

    def __init__(self, driver_path: str | None = None, timeout_ms: int = 60_000) -> None:
        super().__init__()
        self._aipu: Any = None
        self._import_error = ""
        try:
            from .. import _aipu

            self._aipu = _aipu
        except ImportError as e:
            self._import_error = (
                f"compassd's C binding of the NPU driver (compassd._aipu) cannot be imported"
                f" ({e}): it is built when compassd is installed, which needs a C compiler and"
                " Python's headers (Debian: apt install gcc python3-dev); install them and"
                " install compassd again")
        self.driver_path = driver_path
        self.timeout_ms = timeout_ms
        self._graphs: dict[str, Any] = {}
        self._jobs: dict[str, Any] = {}
        self._driver: Any = None
        self._open_error = ""
        self._open()

    def _open(self) -> None:
        if self._aipu is None:
            self._open_error = self._import_error
            return
        try:
            self._driver = self._aipu.Driver(self.driver_path)
            self._open_error = ""
        except (self._aipu.AipuError, OSError, ValueError) as e:
            self._driver = None
            self._open_error = f"the NPU driver cannot be opened: {e}"

    def info(self) -> list[str]:
        if self._driver is None:
            return [f"driver_error={self._open_error}"]
        lines = []
        for key, value in self._driver.info().items():
            if isinstance(value, frozenset | set | list | tuple):
                value = ",".join(sorted(str(v) for v in value))
            lines.append(f"{key}={'' if value is None else value}")
        return lines

    def health(self) -> tuple[bool, str]:
        if self._driver is None:
            self._open()
            if self._driver is None:
                return False, self._open_error
        if self._driver.poisoned:
            return False, f"the NPU driver is poisoned: {self._driver.poison_reason}"
        status = self._driver.device_status()
        if status == "exception":
            return False, "the NPU reports an exception state (device status EXCEPTION)"
        return True, f"driver context open, device status {status or 'unknown'}"

    def _usable(self) -> Any:
        if self._driver is None:
            raise ModelRejected(f"The aipu backend cannot load models: {self._open_error}.")
        if self._driver.poisoned:
            raise BackendPoisoned(
                "The NPU driver can no longer be used in this executor:"
                f" {self._driver.poison_reason}."
            )
        return self._driver

    def load(
        self, path: str, manifest: Manifest | None = None, *, name: str | None = None
    ) -> LoadedModel:
        key = path if name is None else name
        driver = self._usable()
        if manifest is None and manifest_path_for(path).is_file():
            try:
                manifest = load_manifest(manifest_path_for(path))
            except ManifestError as e:
                raise ModelRejected(f"Model {key} was not loaded: {e}.") from None
        old = self._graphs.pop(key, None)
        self.models.pop(key, None)
        self._drop_job(key)
        if old is not None:
            old.close()
        try:
            graph = driver.load_graph(path)
        except self._aipu.DriverPoisoned as e:
            raise BackendPoisoned(f"The NPU driver can no longer load models: {e}.") from None
        except (self._aipu.AipuError, OSError, ValueError) as e:
            raise ModelRejected(f"The NPU driver refused model {key}: {e}") from None
        try:
            inputs, outputs = bind(
                manifest,
                [(d.size, d.dtype) for d in graph.inputs],
                [(d.size, d.dtype) for d in graph.outputs],
            )
        except ManifestError as e:
            graph.close()
            raise ModelRejected(f"Model {key} was not loaded: {e}.") from None
        self._graphs[key] = graph
        model = LoadedModel(key, tuple(inputs), tuple(outputs))
        self.models[key] = model
        return model

    def _runner(self, model: str, arrays: list[NDArray[Any]]) -> Callable[[], list[NDArray[Any]]]:
        return self._graph_runner(model, arrays, None)

    def _runner_into(
        self, model: str, arrays: list[NDArray[Any]], out: list[NDArray[Any]]
    ) -> Callable[[], list[NDArray[Any]]] | None:
        specs = self.models[model].outputs
        if len(out) != len(specs) or any(
            o.dtype != np.dtype(s.dtype) or o.shape != tuple(s.shape)
            or not o.flags.c_contiguous or not o.flags.writeable
            for o, s in zip(out, specs, strict=True)
        ):
            return None
        return self._graph_runner(model, arrays, out)

    def _graph_runner(
        self, model: str, arrays: list[NDArray[Any]], out: list[NDArray[Any]] | None
    ) -> Callable[[], list[NDArray[Any]]]:
        self._usable()
        graph = self._graphs[model]
        specs = self.models[model].outputs
        aipu = self._aipu
        timeout = self.timeout_ms

        def run() -> list[NDArray[Any]]:
            # The driver copies each output straight into its buffer: the arena's view
            # when given, so no output is allocated and copied again.
            outputs = out if out is not None else [np.empty(s.shape, s.dtype) for s in specs]
            try:
                # One job per model, run again and again (the driver allows re-running a
                # DONE job): creating and cleaning a job per run costs its buffers each
                # time. A job that failed is dropped; the binding then cleans it, unless
                # it timed out.
                job = self._jobs.get(model)
                if job is None:
                    job = self._jobs[model] = graph.create_job()
                try:
                    job.run(arrays, outputs, timeout)
                except BaseException:
                    self._jobs.pop(model, None)
                    raise
            except aipu.JobTimeout as e:
                raise BackendPoisoned(
                    f"Model {model} did not finish within {timeout} ms on the NPU ({e});"
                    " the job may still run, so this executor must be restarted."
                ) from None
            except aipu.DriverPoisoned as e:
                raise BackendPoisoned(
                    f"The NPU driver can no longer run model {model}: {e}."
                ) from None
            except aipu.JobException as e:
                raise RunFailed(f"Model {model} raised an exception on the NPU: {e}") from None
            except aipu.TensorSizeError as e:
                raise TensorMismatch(f"Model {model}: {e}.") from None
            except aipu.AipuError as e:
                raise RunFailed(f"The NPU driver failed to run model {model}: {e}") from None
            return outputs

        return run

    def _drop_job(self, model: str) -> None:
        job = self._jobs.pop(model, None)
        if job is not None and not job.closed:
            try:
                job.close()
            except (self._aipu.AipuError, RuntimeError):
                pass  # unloading the graph takes its jobs with it

    def close(self) -> None:
        super().close()
        for model in list(self._jobs):
            self._drop_job(model)
        for graph in self._graphs.values():
            if not graph.closed:
                graph.close()
        self._graphs.clear()
        if self._driver is not None:
            self._driver.close()


# --- ONNX Runtime --------------------------------------------------------------------

_ONNX_TYPES = {
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
}


def _onnx_spec(arg: Any, model: str) -> TensorSpec:
    dtype = _ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise ModelRejected(
            f"Model {model} has tensor {arg.name!r} of type {arg.type}, which compassd cannot"
            " carry (only bool, integer and float tensors)."
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(arg.name, dtype, shape)


class OnnxBackend(Backend):
    """Models are ONNX files run by ONNX Runtime with the CPU execution provider.

    C{onnxruntime} is imported at construction: a host without it gets an unhealthy
    backend that refuses models with a sentence saying what to install.
    """

    name = "onnx"
    PROVIDER = "CPUExecutionProvider"

    def __init__(self, threads: int = 0) -> None:
        super().__init__()
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        try:
            import onnxruntime

            self._ort: Any = onnxruntime
            self._import_error = ""
        except ImportError as e:
            self._ort = None
            self._import_error = (
                f"onnxruntime cannot be imported ({e}); install it (pip install onnxruntime)"
            )

    def info(self) -> list[str]:
        cpu = platform.processor() or platform.machine()
        lines = [f"cpu={cpu}", f"cpu_count={os.cpu_count() or 0}"]
        if self._ort is None:
            return [*lines, f"onnxruntime_error={self._import_error}"]
        return [*lines, f"onnxruntime={self._ort.__version__}", f"provider={self.PROVIDER}"]

    def health(self) -> tuple[bool, str]:
        if self._ort is None:
            return False, self._import_error
        providers = self._ort.get_available_providers()
        if self.PROVIDER not in providers:
            return (
                False,
                f"onnxruntime {self._ort.__version__} lacks {self.PROVIDER} (has {providers})",
            )
        return True, f"onnxruntime {self._ort.__version__} with {self.PROVIDER}"

    def load(
        self, path: str, manifest: Manifest | None = None, *, name: str | None = None
    ) -> LoadedModel:
        key = path if name is None else name
        if self._ort is None:
            raise ModelRejected(f"The onnx backend cannot load models: {self._import_error}.")
        check_external_data(path, self.session_dir or os.path.dirname(path), key)
        options = self._ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            session = self._ort.InferenceSession(path, options, providers=[self.PROVIDER])
        except Exception as e:  # onnxruntime raises its own classes (Fail, InvalidGraph...)
            raise ModelRejected(f"ONNX Runtime refused model {key}: {e}") from None
        inputs = tuple(_onnx_spec(a, key) for a in session.get_inputs())
        outputs = tuple(_onnx_spec(a, key) for a in session.get_outputs())
        self.models.pop(key, None)
        self._sessions[key] = session
        model = LoadedModel(key, inputs, outputs)
        self.models[key] = model
        return model

    def _runner(self, model: str, arrays: list[NDArray[Any]]) -> Callable[[], list[NDArray[Any]]]:
        session = self._sessions[model]
        feed = {spec.name: a for spec, a in zip(self.models[model].inputs, arrays, strict=True)}

        def run() -> list[NDArray[Any]]:
            try:
                return [np.asarray(o) for o in session.run(None, feed)]
            except Exception as e:
                raise RunFailed(f"ONNX Runtime failed to run model {model}: {e}") from None

        return run

    def _runner_into(
        self, model: str, arrays: list[NDArray[Any]], out: list[NDArray[Any]]
    ) -> Callable[[], list[NDArray[Any]]] | None:
        """ONNX Runtime's IO binding: the inputs are read where they lie (the arena) and
        the outputs written straight into C{out} (the arena's views), so no output is
        allocated and then copied into the arena. None (a plain run) for arrays that are
        not the model's fixed output shapes and dtypes, or that ONNX Runtime cannot bind."""
        session = self._sessions[model]
        loaded = self.models[model]
        if len(out) != len(loaded.outputs) or any(
            o.dtype != np.dtype(s.dtype) or o.shape != tuple(s.shape)
            or not o.flags.c_contiguous or not o.flags.writeable
            for o, s in zip(out, loaded.outputs, strict=True)
        ):
            return None
        try:
            binding = session.io_binding()
            for spec, array in zip(loaded.inputs, arrays, strict=True):
                binding.bind_cpu_input(spec.name, array)
            for spec, array in zip(loaded.outputs, out, strict=True):
                binding.bind_output(spec.name, "cpu", 0, array.dtype, list(array.shape),
                                    array.ctypes.data)
        except Exception:  # a type or an older onnxruntime that cannot bind: run plainly
            return None

        def run() -> list[NDArray[Any]]:
            try:
                session.run_with_iobinding(binding)
            except Exception as e:
                raise RunFailed(f"ONNX Runtime failed to run model {model}: {e}") from None
            return out

        return run

    def close(self) -> None:
        super().close()
        self._sessions.clear()


def make_backend(name: str, driver: str | None = None, timeout_ms: int = 60_000) -> Backend:
    """The backend named C{aipu} or C{onnx}."""
    if name == "aipu":
        return AipuBackend(driver, timeout_ms=timeout_ms)
    if name == "onnx":
        return OnnxBackend()
    raise ValueError(f"unknown backend {name!r}: choose aipu or onnx")
