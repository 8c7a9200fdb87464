"""Typed stub of the C extension ``compassd._aipu`` (source: ``compassd/_aipu.c``).

A binding of the Zhouyi NPU user-mode driver, ``libaipudrv.so``, opened with ``dlopen`` at
run time. ``docs/aipu-binding.md`` describes the API, the ABI differences handled and the
error mapping.
"""

from collections.abc import Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Final, Literal, final

from _typeshed import ReadableBuffer, WriteableBuffer
from numpy.typing import NDArray

_Path = str | bytes | PathLike[str] | PathLike[bytes]
# numpy's stubs give ndarray a __buffer__ only for Python 3.12+, so name it as well.
_In = ReadableBuffer | NDArray[Any]
_Out = WriteableBuffer | NDArray[Any]
_JobState = Literal["idle", "scheduled", "done", "exception", "timed_out", "closed"]

class AipuError(Exception):
    """Base class of this module's errors."""

class DriverLoadError(AipuError):
    """libaipudrv.so cannot be loaded, or lacks a required symbol."""

    path: str
    symbol: str | None

class DriverError(AipuError):
    """A driver call failed."""

    status: int
    status_name: str
    driver_message: str  # the driver's own text; may be empty
    call: str  # the driver function that failed, e.g. "aipu_load_graph"
    job_id: int | None

class NoDeviceError(DriverError):
    """aipu_init_context could not open /dev/aipu (OPEN_DEV_FAIL)."""

class JobException(DriverError):
    """A job ended with an exception (or a runtime error code) on the NPU."""

class JobTimeout(DriverError):
    """A job did not finish in time; it may still run: the process must exit."""

class DriverPoisoned(AipuError):
    """The driver was used after a job timed out or was abandoned."""

class TensorSizeError(AipuError, ValueError):
    """A buffer's size differs from its tensor's."""

    kind: str
    index: int
    expected: int
    given: int

@final
class TensorDesc(tuple[int, int, int, int, str, float, int | float]):
    """A tensor descriptor: there is no shape and no name in the driver."""

    n_fields: Final[int]
    n_sequence_fields: Final[int]
    n_unnamed_fields: Final[int]
    __match_args__: Final = (
        "index",
        "tensor_type",
        "size",
        "data_type",
        "dtype",
        "scale",
        "zero_point",
    )

    # The field shadows tuple.index(), as a structseq field does at run time.
    @property
    def index(self) -> int: ...  # type: ignore[override]
    @property
    def tensor_type(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def data_type(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def zero_point(self) -> int | float: ...

@final
class Driver:
    def __new__(
        cls, path: _Path | None = None, *, abi: str | None = None, poll_any_thread: bool = True
    ) -> Driver: ...
    @property
    def path(self) -> str: ...
    @property
    def real_path(self) -> str | None: ...
    @property
    def abi(self) -> str: ...
    @property
    def abi_source(self) -> Literal["argument", "file name", "assumed"]: ...
    @property
    def version(self) -> str | None: ...
    @property
    def kmd_version(self) -> str | None: ...
    @property
    def features(self) -> frozenset[str]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def poisoned(self) -> bool: ...
    @property
    def poison_reason(self) -> str | None: ...
    @property
    def poll_any_thread(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Driver: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...
    def load_graph(self, path: _Path, *, extra_weight_path: _Path | None = ...) -> Graph: ...
    def load_graph_bytes(
        self, data: ReadableBuffer, *, extra_weight_path: _Path | None = None
    ) -> Graph: ...
    def set_version_check(self, enabled: bool) -> None: ...
    def target(self) -> str | None: ...
    def partition_count(self) -> int | None: ...
    def cluster_count(self, partition: int = 0) -> int | None: ...
    def core_count(self, partition: int = 0, cluster: int = 0) -> int | None: ...
    def device_status(self) -> str | None: ...
    def info(self) -> dict[str, object]: ...

@final
class Graph:
    @property
    def id(self) -> int: ...
    @property
    def driver(self) -> Driver: ...
    @property
    def path(self) -> str | None: ...
    @property
    def inputs(self) -> tuple[TensorDesc, ...]: ...
    @property
    def outputs(self) -> tuple[TensorDesc, ...]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def build_version(self) -> int | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Graph: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...
    def create_job(self) -> Job: ...
    def run(
        self,
        inputs: Sequence[_In],
        outputs: Sequence[_Out],
        timeout_ms: int = -1,
    ) -> None: ...
    def tensors(self, tensor_type: int) -> tuple[TensorDesc, ...]: ...

@final
class Job:
    @property
    def id(self) -> int: ...
    @property
    def graph(self) -> Graph: ...
    @property
    def state(self) -> _JobState: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Job: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]: ...
    def run(
        self,
        inputs: Sequence[_In],
        outputs: Sequence[_Out],
        timeout_ms: int = -1,
    ) -> None: ...
    def load_inputs(self, inputs: Sequence[_In]) -> None: ...
    def flush(self) -> None: ...
    def wait(self, timeout_ms: int = -1) -> bool: ...
    def get_outputs(self, outputs: Sequence[_Out]) -> None: ...
    def get_tensor(self, tensor_type: int, index: int, out: _Out) -> None: ...
    def configure_dump(
        self,
        types: int,
        dump_dir: _Path,
        prefix: _Path | None = None,
        output_prefix: _Path | None = None,
        misc_prefix: _Path | None = None,
    ) -> None: ...

def status_name(code: int) -> str: ...
def status_description(code: int) -> str: ...
def dtype_for(data_type: int) -> str: ...
def default_driver_path() -> str: ...

ENV_DRIVER_PATH: Final[str]
DEFAULT_LIBRARY: Final[str]
SUPPORTED_ABIS: Final[tuple[str, ...]]
STATUS_NAMES: Final[dict[int, str]]
DATA_TYPES: Final[dict[int, tuple[str, str]]]

TENSOR_INPUT: Final[int]
TENSOR_OUTPUT: Final[int]
TENSOR_INTER_DUMP: Final[int]
TENSOR_PRINTF: Final[int]
TENSOR_PROFILER: Final[int]
TENSOR_LAYER_COUNTER: Final[int]
TENSOR_ERROR_CODE: Final[int]
TENSOR_OUT_TENSOR_SHAPE: Final[int]

DUMP_TEXT: Final[int]
DUMP_WEIGHT: Final[int]
DUMP_RODATA: Final[int]
DUMP_DESCRIPTOR: Final[int]
DUMP_INPUT: Final[int]
DUMP_OUTPUT: Final[int]
DUMP_REUSE: Final[int]
DUMP_TCB_CHAIN: Final[int]
DUMP_EMULATION: Final[int]
DUMP_PROFILE: Final[int]

# Status codes (aipu_status_t), named as in the driver without the "AIPU_" prefix.
STATUS_SUCCESS: Final[int]
STATUS_ERROR_NULL_PTR: Final[int]
STATUS_ERROR_INVALID_CTX: Final[int]
STATUS_ERROR_OPEN_DEV_FAIL: Final[int]
STATUS_ERROR_DEV_ABNORMAL: Final[int]
STATUS_ERROR_DEINIT_FAIL: Final[int]
STATUS_ERROR_INVALID_CONFIG: Final[int]
STATUS_ERROR_UNKNOWN_BIN: Final[int]
STATUS_ERROR_GVERSION_UNSUPPORTED: Final[int]
STATUS_ERROR_INVALID_GBIN: Final[int]
STATUS_ERROR_TARGET_NOT_FOUND: Final[int]
STATUS_ERROR_INVALID_GRAPH_ID: Final[int]
STATUS_ERROR_OPEN_FILE_FAIL: Final[int]
STATUS_ERROR_MAP_FILE_FAIL: Final[int]
STATUS_ERROR_READ_FILE_FAIL: Final[int]
STATUS_ERROR_WRITE_FILE_FAIL: Final[int]
STATUS_ERROR_INVALID_JOB_ID: Final[int]
STATUS_ERROR_JOB_EXCEPTION: Final[int]
STATUS_ERROR_JOB_TIMEOUT: Final[int]
STATUS_ERROR_OP_NOT_SUPPORTED: Final[int]
STATUS_ERROR_INVALID_OP: Final[int]
STATUS_ERROR_INVALID_SIZE: Final[int]
STATUS_ERROR_BUF_ALLOC_FAIL: Final[int]
STATUS_ERROR_BUF_FREE_FAIL: Final[int]
STATUS_ERROR_INVALID_CORE_ID: Final[int]
STATUS_ERROR_RESERVE_SRAM_FAIL: Final[int]
STATUS_ERROR_INVALID_TENSOR_ID: Final[int]
STATUS_ERROR_INVALID_CLUSTER_ID: Final[int]
STATUS_ERROR_INVALID_PARTITION_ID: Final[int]
STATUS_ERROR_PRINTF_FAIL: Final[int]
STATUS_ERROR_INVALID_TENSOR_TYPE: Final[int]
STATUS_ERROR_INVALID_GM: Final[int]
STATUS_ERROR_INVALID_SEGMMU: Final[int]
STATUS_ERROR_INVALID_QOS: Final[int]
STATUS_ERROR_INVALID_TENSOR_CNT: Final[int]
STATUS_ERROR_TIMEOUT: Final[int]
STATUS_ERROR_NO_BATCH_QUEUE: Final[int]
STATUS_ERROR_MARK_SHARED_TENSOR: Final[int]
STATUS_ERROR_SET_SHARED_TENSOR: Final[int]
STATUS_ERROR_DMABUF_SHARED_IO: Final[int]
STATUS_ERROR_GET_SHAPE_FAILED: Final[int]
STATUS_ERROR_SET_SHAPE_FAILED: Final[int]
STATUS_ERROR_NOT_CONFIG_SHAPE: Final[int]
STATUS_ERROR_UNMATCH_OUT_SHAPE: Final[int]
STATUS_ERROR_ZERO_TENSOR_SIZE: Final[int]
STATUS_ERROR_ALLOC_GRIP_ID: Final[int]
STATUS_ERROR_ALLOC_GROUP_ID: Final[int]
STATUS_ERROR_NOT_FOUND_IN_HASHTABLE: Final[int]
STATUS_ERROR_INVALID_COREDUMP: Final[int]
STATUS_ERROR_JOB_DISPATCH_FAIL: Final[int]
STATUS_MAX: Final[int]
STATUS_ERROR_UNKNOWN_ERROR: Final[int]
STATUS_ERROR_KEYBOARD_INTERRUPT: Final[int]
STATUS_ERROR_SYSTEM_ERR: Final[int]
STATUS_ERROR_OUT_OF_SPEC: Final[int]
STATUS_ERROR_OUT_OF_AIFF_SPEC: Final[int]
STATUS_ERROR_OUT_OF_TPC_SPEC: Final[int]
STATUS_ERROR_OUT_OF_DMA_SPEC: Final[int]
STATUS_ERROR_OUT_OF_MEM_RANGE: Final[int]
STATUS_ERROR_OUT_OF_SRAM_RANGE: Final[int]
STATUS_ERROR_OUT_OF_LSRAM0_RANGE: Final[int]
STATUS_ERROR_OUT_OF_LSRAM1_RANGE: Final[int]
STATUS_ERROR_OUT_OF_LSRAM_RANGE: Final[int]
STATUS_ERROR_OUT_OF_GSRAM0_RANGE: Final[int]
STATUS_ERROR_OUT_OF_GSRAM1_RANGE: Final[int]
STATUS_ERROR_OUT_OF_GSRAM_RANGE: Final[int]
STATUS_ERROR_ARITHMETIC_ERR: Final[int]
STATUS_ERROR_FLOAT_POINT_ERR: Final[int]
STATUS_ERROR_UNDERFLOW_ERR: Final[int]
STATUS_ERROR_OVERFLOW_ERR: Final[int]
STATUS_ERROR_NOT_A_NUMBER_ERR: Final[int]
STATUS_ERROR_INFINITY_ERR: Final[int]
STATUS_ERROR_STRING_LENGTH_ERR: Final[int]
STATUS_ERROR_ZERO_DIVISION_ERR: Final[int]
