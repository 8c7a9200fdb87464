/*
 * compassd._aipu: a CPython binding of the Zhouyi NPU user-mode driver, libaipudrv.so.
 *
 * The library is opened with dlopen() at run time (never linked), because boards ship it
 * next to the kernel module and CI hosts have none. The driver's header is C++ only, so the
 * prototypes, enums and struct layouts below are our own, taken from the driver reference
 * (UMD 6.1, with the differences of 5.8 to 6.0 kept in a version table). docs/aipu-binding.md
 * describes the Python API; the rules this file keeps are:
 *
 *  - The GIL is released around every driver call except aipu_get_error_message, whose
 *    message table is not thread-safe inside the driver: holding the GIL serialises it.
 *  - Buffers cross through the buffer protocol only (no numpy C API), and their byte size is
 *    checked against the tensor descriptor: the driver copies desc.size bytes blindly.
 *  - A job that timed out may still be running on the NPU, and cleaning it, unloading its
 *    graph or deinitialising the context would free memory the NPU still uses. After a
 *    timeout the Driver is "poisoned": nothing is freed and no new work is accepted; the
 *    executor process must exit (closing /dev/aipu makes the kernel cancel its jobs).
 *  - The driver has no per-job lock: a Job is used by one thread at a time (others get a
 *    RuntimeError), and a Graph or Driver cannot be closed while a call on it is in flight.
 *  - The library is never dlclose()d once called into: the driver may keep threads and
 *    static state alive (a hung job's thread, for one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* The driver's ABI                                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef uint32_t aipu_status_t; /* a 32-bit enum */
typedef struct aipu_ctx aipu_ctx_t; /* opaque: the driver's struct holding one uint32_t */
typedef int (*aipu_job_callback_t)(uint64_t job_id, uint32_t job_status);

/* 20 bytes; zero_point was a float before UMD 5.10 and is an int32 since. */
typedef struct {
    uint32_t id;
    uint32_t size;
    float scale;
    union {
        int32_t i;
        float f;
    } zero_point;
    uint32_t data_type;
} aipu_tensor_desc_t;

_Static_assert(sizeof(aipu_tensor_desc_t) == 20, "the tensor descriptor must be 20 bytes");

/* Config structs are passed as zeroed buffers at least as large as the newest release's
 * (40-byte load config, 56-byte create config): older releases read a prefix and see zeros. */
#define LOAD_CFG_SIZE 64
#define LOAD_CFG_EXTRA_WEIGHT_PATH 24
#define CREATE_CFG_SIZE 64

#define ST_SUCCESS 0x00u
#define ST_OPEN_DEV_FAIL 0x03u
#define ST_JOB_EXCEPTION 0x11u
#define ST_TIMEOUT 0x23u
#define ST_RUNTIME_BASE 0x200u /* v1/v2 layer-library runtime errors end a job */

#define TENSOR_INPUT 0u
#define TENSOR_OUTPUT 1u

#define JOB_STATUS_NO_STATUS 0u
#define JOB_STATUS_DONE 1u
#define JOB_STATUS_EXCEPTION 2u
#define JOB_STATUS_COREDUMP 3u

typedef struct {
    /* required */
    aipu_status_t (*init_context)(aipu_ctx_t **ctx);
    aipu_status_t (*deinit_context)(const aipu_ctx_t *ctx);
    aipu_status_t (*get_error_message)(const aipu_ctx_t *ctx, aipu_status_t status,
                                       const char **msg);
    aipu_status_t (*load_graph)(const aipu_ctx_t *ctx, const char *path, uint64_t *graph,
                                void *config);
    aipu_status_t (*load_graph_helper)(const aipu_ctx_t *ctx, const char *buf, uint32_t size,
                                       uint64_t *graph, void *config);
    aipu_status_t (*unload_graph)(const aipu_ctx_t *ctx, uint64_t graph);
    aipu_status_t (*create_job)(const aipu_ctx_t *ctx, uint64_t graph, uint64_t *job,
                                void *config);
    aipu_status_t (*clean_job)(const aipu_ctx_t *ctx, uint64_t job);
    aipu_status_t (*get_tensor_count)(const aipu_ctx_t *ctx, uint64_t id, uint32_t type,
                                      uint32_t *count);
    aipu_status_t (*get_tensor_descriptor)(const aipu_ctx_t *ctx, uint64_t id, uint32_t type,
                                           uint32_t index, aipu_tensor_desc_t *desc);
    aipu_status_t (*load_tensor)(const aipu_ctx_t *ctx, uint64_t job, uint32_t index,
                                 const void *data);
    aipu_status_t (*get_tensor)(const aipu_ctx_t *ctx, uint64_t job, uint32_t type,
                                uint32_t index, void *data);
    aipu_status_t (*finish_job)(const aipu_ctx_t *ctx, uint64_t job, int32_t timeout_ms);
    aipu_status_t (*flush_job)(const aipu_ctx_t *ctx, uint64_t job, aipu_job_callback_t cb);
    aipu_status_t (*get_job_status)(const aipu_ctx_t *ctx, uint64_t job, uint32_t *status,
                                    int32_t timeout_ms);
    /* optional */
    aipu_status_t (*config_global)(const aipu_ctx_t *ctx, uint64_t types, void *config);
    aipu_status_t (*config_job)(const aipu_ctx_t *ctx, uint64_t job, uint64_t types,
                                void *config);
    aipu_status_t (*get_partition_count)(const aipu_ctx_t *ctx, uint32_t *count);
    aipu_status_t (*get_cluster_count)(const aipu_ctx_t *ctx, uint32_t partition,
                                       uint32_t *count);
    aipu_status_t (*get_core_count)(const aipu_ctx_t *ctx, uint32_t partition, uint32_t cluster,
                                    uint32_t *count);
    aipu_status_t (*get_target)(const aipu_ctx_t *ctx, char *target);
    aipu_status_t (*get_device_status)(const aipu_ctx_t *ctx, uint32_t *status);
    aipu_status_t (*ioctl)(aipu_ctx_t *ctx, uint32_t cmd, void *arg);
} api_t;

static const struct {
    const char *name;
    size_t offset;
    int required;
} SYMBOLS[] = {
#define SYM(field, required) {"aipu_" #field, offsetof(api_t, field), required}
    SYM(init_context, 1),        SYM(deinit_context, 1),       SYM(get_error_message, 1),
    SYM(load_graph, 1),          SYM(load_graph_helper, 1),    SYM(unload_graph, 1),
    SYM(create_job, 1),          SYM(clean_job, 1),            SYM(get_tensor_count, 1),
    SYM(get_tensor_descriptor, 1), SYM(load_tensor, 1),        SYM(get_tensor, 1),
    SYM(finish_job, 1),          SYM(flush_job, 1),            SYM(get_job_status, 1),
    SYM(config_global, 0),       SYM(config_job, 0),           SYM(get_partition_count, 0),
    SYM(get_cluster_count, 0),   SYM(get_core_count, 0),       SYM(get_target, 0),
    SYM(get_device_status, 0),   SYM(ioctl, 0),
#undef SYM
};
#define N_SYMBOLS (sizeof SYMBOLS / sizeof SYMBOLS[0])

/* What changed between releases (driver reference, section 1.7). */
typedef struct {
    const char *name;
    int major, minor;
    int zero_point_is_float;
    int has_extra_weight_path;
    uint64_t cfg_hw, cfg_disable_ver_check, cfg_enable_ver_check;
    uint32_t ioctl_get_version;      /* 0: unknown */
    uint32_t ioctl_get_buildversion; /* 0: unknown */
} abi_t;

static const abi_t ABIS[] = {
    {"5.8", 5, 8, 1, 0, 0x800, 0x1000, 0x2000, 270, 0},
    {"5.9", 5, 9, 1, 0, 0x800, 0x1000, 0x2000, 270, 0},
    {"5.10", 5, 10, 0, 1, 0x800, 0x1000, 0x2000, 269, 0},
    {"5.11", 5, 11, 0, 1, 0x800, 0x1000, 0x2000, 269, 0},
    {"6.0", 6, 0, 0, 1, 0x20000, 0x1000000, 0x2000000, 272, 0},
    {"6.1", 6, 1, 0, 1, 0x20000, 0x1000000, 0x2000000, 273, 256},
};
#define N_ABIS (sizeof ABIS / sizeof ABIS[0])
#define ABI_NEWEST (&ABIS[N_ABIS - 1])

/* ------------------------------------------------------------------------------------------ */
/* Status codes, data types                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    uint32_t code;
    const char *name;
    const char *text; /* ours: used where the driver's message is empty or unavailable */
} status_info_t;

static const status_info_t STATUSES[] = {
    {0x00, "AIPU_STATUS_SUCCESS", "success"},
    {0x01, "AIPU_STATUS_ERROR_NULL_PTR", "an argument was a NULL pointer"},
    {0x02, "AIPU_STATUS_ERROR_INVALID_CTX", "the driver context is invalid"},
    {0x03, "AIPU_STATUS_ERROR_OPEN_DEV_FAIL",
     "cannot open the NPU device /dev/aipu: is the aipu kernel module loaded?"},
    {0x04, "AIPU_STATUS_ERROR_DEV_ABNORMAL", "the NPU device is in an abnormal state"},
    {0x05, "AIPU_STATUS_ERROR_DEINIT_FAIL", "the driver context could not be deinitialised"},
    {0x06, "AIPU_STATUS_ERROR_INVALID_CONFIG", "invalid configuration"},
    {0x07, "AIPU_STATUS_ERROR_UNKNOWN_BIN", "unknown graph binary (or an extra weight hash mismatch)"},
    {0x08, "AIPU_STATUS_ERROR_GVERSION_UNSUPPORTED",
     "this graph binary version is not supported by the driver"},
    {0x09, "AIPU_STATUS_ERROR_INVALID_GBIN", "the graph binary is malformed"},
    {0x0A, "AIPU_STATUS_ERROR_TARGET_NOT_FOUND",
     "the graph was built for another NPU target than this device"},
    {0x0B, "AIPU_STATUS_ERROR_INVALID_GRAPH_ID", "unknown or unloaded graph"},
    {0x0C, "AIPU_STATUS_ERROR_OPEN_FILE_FAIL", "cannot open the file"},
    {0x0D, "AIPU_STATUS_ERROR_MAP_FILE_FAIL", "cannot map the file"},
    {0x0E, "AIPU_STATUS_ERROR_READ_FILE_FAIL", "cannot read a file (an extra weight file?)"},
    {0x0F, "AIPU_STATUS_ERROR_WRITE_FILE_FAIL", "cannot write a file"},
    {0x10, "AIPU_STATUS_ERROR_INVALID_JOB_ID", "unknown or cleaned job"},
    {0x11, "AIPU_STATUS_ERROR_JOB_EXCEPTION", "the job raised an exception on the NPU"},
    {0x12, "AIPU_STATUS_ERROR_JOB_TIMEOUT", "the job timed out"},
    {0x13, "AIPU_STATUS_ERROR_OP_NOT_SUPPORTED", "operation not supported on this platform"},
    {0x14, "AIPU_STATUS_ERROR_INVALID_OP", "operation not valid in the current state"},
    {0x15, "AIPU_STATUS_ERROR_INVALID_SIZE", "invalid size"},
    {0x16, "AIPU_STATUS_ERROR_BUF_ALLOC_FAIL", "out of NPU buffer memory"},
    {0x17, "AIPU_STATUS_ERROR_BUF_FREE_FAIL", "cannot free NPU buffers"},
    {0x18, "AIPU_STATUS_ERROR_INVALID_CORE_ID", "invalid core ID"},
    {0x19, "AIPU_STATUS_ERROR_RESERVE_SRAM_FAIL", "cannot reserve SRAM"},
    {0x1A, "AIPU_STATUS_ERROR_INVALID_TENSOR_ID", "invalid tensor index"},
    {0x1B, "AIPU_STATUS_ERROR_INVALID_CLUSTER_ID", "invalid cluster ID"},
    {0x1C, "AIPU_STATUS_ERROR_INVALID_PARTITION_ID", "invalid partition ID"},
    {0x1D, "AIPU_STATUS_ERROR_PRINTF_FAIL", "cannot parse the NPU printf buffer"},
    {0x1E, "AIPU_STATUS_ERROR_INVALID_TENSOR_TYPE", "invalid tensor type for this operation"},
    {0x1F, "AIPU_STATUS_ERROR_INVALID_GM", "invalid GM configuration"},
    {0x20, "AIPU_STATUS_ERROR_INVALID_SEGMMU", "invalid segment MMU configuration"},
    {0x21, "AIPU_STATUS_ERROR_INVALID_QOS", "invalid QoS level"},
    {0x22, "AIPU_STATUS_ERROR_INVALID_TENSOR_CNT", "invalid tensor count"},
    {0x23, "AIPU_STATUS_ERROR_TIMEOUT", "timed out waiting for the job"},
    {0x24, "AIPU_STATUS_ERROR_NO_BATCH_QUEUE", "no such batch queue"},
    {0x25, "AIPU_STATUS_ERROR_MARK_SHARED_TENSOR", "cannot mark a shared tensor"},
    {0x26, "AIPU_STATUS_ERROR_SET_SHARED_TENSOR", "cannot set a shared tensor"},
    {0x27, "AIPU_STATUS_ERROR_DMABUF_SHARED_IO", "cannot share an I/O buffer through dma-buf"},
    {0x28, "AIPU_STATUS_ERROR_GET_SHAPE_FAILED", "cannot get a tensor shape"},
    {0x29, "AIPU_STATUS_ERROR_SET_SHAPE_FAILED", "cannot set a tensor shape"},
    {0x30, "AIPU_STATUS_ERROR_NOT_CONFIG_SHAPE",
     "the input shapes of a dynamic-shape graph were not configured"},
    {0x31, "AIPU_STATUS_ERROR_UNMATCH_OUT_SHAPE", "the output shape does not match"},
    {0x32, "AIPU_STATUS_ERROR_ZERO_TENSOR_SIZE", "a tensor has size zero"},
    {0x33, "AIPU_STATUS_ERROR_ALLOC_GRIP_ID", "cannot allocate a grid ID"},
    {0x34, "AIPU_STATUS_ERROR_ALLOC_GROUP_ID", "cannot allocate a group ID"},
    {0x35, "AIPU_STATUS_ERROR_NOT_FOUND_IN_HASHTABLE", "not found in the hash table"},
    {0x36, "AIPU_STATUS_ERROR_INVALID_COREDUMP", "invalid coredump"},
    {0x37, "AIPU_STATUS_ERROR_JOB_DISPATCH_FAIL", "the job could not be dispatched to the NPU"},
    {0x38, "AIPU_STATUS_MAX", "not a status (the enum's sentinel)"},
    {0x200, "AIPU_STATUS_ERROR_UNKNOWN_ERROR", "unknown runtime error"},
    {0x300, "AIPU_STATUS_ERROR_KEYBOARD_INTERRUPT", "the execution was interrupted"},
    {0x301, "AIPU_STATUS_ERROR_SYSTEM_ERR", "system error"},
    {0x380, "AIPU_STATUS_ERROR_OUT_OF_SPEC", "inputs or data are out of the NPU's specification"},
    {0x381, "AIPU_STATUS_ERROR_OUT_OF_AIFF_SPEC", "out of the AIFF specification"},
    {0x382, "AIPU_STATUS_ERROR_OUT_OF_TPC_SPEC", "out of the TPC specification"},
    {0x383, "AIPU_STATUS_ERROR_OUT_OF_DMA_SPEC", "out of the DMA specification"},
    {0x400, "AIPU_STATUS_ERROR_OUT_OF_MEM_RANGE", "memory access out of range"},
    {0x401, "AIPU_STATUS_ERROR_OUT_OF_SRAM_RANGE", "SRAM access out of range"},
    {0x402, "AIPU_STATUS_ERROR_OUT_OF_LSRAM0_RANGE", "local SRAM0 access out of range"},
    {0x403, "AIPU_STATUS_ERROR_OUT_OF_LSRAM1_RANGE", "local SRAM1 access out of range"},
    {0x404, "AIPU_STATUS_ERROR_OUT_OF_LSRAM_RANGE", "local SRAM access out of range"},
    {0x405, "AIPU_STATUS_ERROR_OUT_OF_GSRAM0_RANGE", "global SRAM0 access out of range"},
    {0x406, "AIPU_STATUS_ERROR_OUT_OF_GSRAM1_RANGE", "global SRAM1 access out of range"},
    {0x407, "AIPU_STATUS_ERROR_OUT_OF_GSRAM_RANGE", "global SRAM access out of range"},
    {0x480, "AIPU_STATUS_ERROR_ARITHMETIC_ERR", "arithmetic error"},
    {0x481, "AIPU_STATUS_ERROR_FLOAT_POINT_ERR", "floating-point error"},
    {0x482, "AIPU_STATUS_ERROR_UNDERFLOW_ERR", "underflow"},
    {0x483, "AIPU_STATUS_ERROR_OVERFLOW_ERR", "overflow"},
    {0x484, "AIPU_STATUS_ERROR_NOT_A_NUMBER_ERR", "NaN"},
    {0x485, "AIPU_STATUS_ERROR_INFINITY_ERR", "infinity"},
    {0x486, "AIPU_STATUS_ERROR_STRING_LENGTH_ERR", "string too long"},
    {0x487, "AIPU_STATUS_ERROR_ZERO_DIVISION_ERR", "division by zero"},
};
#define N_STATUSES (sizeof STATUSES / sizeof STATUSES[0])

static const status_info_t *status_info(uint32_t code)
{
    size_t i;
    for (i = 0; i < N_STATUSES; i++)
        if (STATUSES[i].code == code)
            return &STATUSES[i];
    return NULL;
}

/* Writes the status's name, or "AIPU_STATUS_0x..." for a code we do not know. */
static const char *status_name(uint32_t code, char *buf, size_t size)
{
    const status_info_t *info = status_info(code);
    if (info != NULL)
        return info->name;
    snprintf(buf, size, "AIPU_STATUS_0x%x", (unsigned)code);
    return buf;
}

static const char *status_text(uint32_t code)
{
    const status_info_t *info = status_info(code);
    return info != NULL ? info->text : "unknown status";
}

typedef struct {
    uint32_t code;
    const char *name;  /* the driver's AIPU_DATA_TYPE_ suffix */
    const char *dtype; /* numpy dtype of the bytes as stored */
} data_type_info_t;

/* BF16 travels as raw uint16; 4/12-bit types in byte-aligned containers as (u)int8/(u)int16
 * (the 12-bit container size is an assumption); packed types and NONE as raw bytes. */
static const data_type_info_t DATA_TYPE_TABLE[] = {
    {0x00, "NONE", "uint8"},         {0x01, "BOOL", "bool"},
    {0x02, "U8", "uint8"},           {0x03, "S8", "int8"},
    {0x04, "U16", "uint16"},         {0x05, "S16", "int16"},
    {0x06, "U32", "uint32"},         {0x07, "S32", "int32"},
    {0x08, "U64", "uint64"},         {0x09, "S64", "int64"},
    {0x0A, "F16", "float16"},        {0x0B, "F32", "float32"},
    {0x0C, "F64", "float64"},        {0x0D, "BF16", "uint16"},
    {0x12, "ALIGNED_U4", "uint8"},   {0x13, "ALIGNED_S4", "int8"},
    {0x14, "ALIGNED_U12", "uint16"}, {0x15, "ALIGNED_S12", "int16"},
    {0x20, "COMPACT_U4", "uint8"},   {0x21, "COMPACT_S4", "uint8"},
    {0x22, "COMPACT_U12", "uint8"},  {0x23, "COMPACT_S12", "uint8"},
};
#define N_DATA_TYPES (sizeof DATA_TYPE_TABLE / sizeof DATA_TYPE_TABLE[0])

static const char *dtype_of(uint32_t code)
{
    size_t i;
    for (i = 0; i < N_DATA_TYPES; i++)
        if (DATA_TYPE_TABLE[i].code == code)
            return DATA_TYPE_TABLE[i].dtype;
    return "uint8"; /* a type newer than this table: raw bytes */
}

/* ------------------------------------------------------------------------------------------ */
/* Exceptions and small helpers                                                                */
/* ------------------------------------------------------------------------------------------ */

static PyObject *AipuError;
static PyObject *DriverLoadError;
static PyObject *DriverError;
static PyObject *NoDeviceError;
static PyObject *JobException;
static PyObject *JobTimeout;
static PyObject *DriverPoisoned;
static PyObject *TensorSizeError;

static PyTypeObject *TensorDescType;

/* Raises type(message) with extra attributes taken from a dict (stolen; may be NULL). */
static void raise_with(PyObject *type, PyObject *message, PyObject *attrs)
{
    PyObject *exc, *key, *value;
    Py_ssize_t pos = 0;

    if (message == NULL || attrs == NULL)
        goto out; /* an error is already set */
    exc = PyObject_CallOneArg(type, message);
    if (exc == NULL)
        goto out;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (PyObject_SetAttr(exc, key, value) < 0) {
            Py_DECREF(exc);
            goto out;
        }
    }
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
out:
    Py_XDECREF(message);
    Py_XDECREF(attrs);
}

/* Replaces the current exception by type(message), with the old one as __cause__. */
static void raise_from_current(PyObject *type, PyObject *message)
{
    PyObject *et, *ev, *tb, *exc;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL && ev != NULL)
        PyException_SetTraceback(ev, tb);
    if (message == NULL) {
        PyErr_Restore(et, ev, tb);
        return;
    }
    exc = PyObject_CallOneArg(type, message);
    Py_DECREF(message);
    if (exc == NULL) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        return;
    }
    if (ev != NULL)
        PyException_SetCause(exc, ev); /* steals ev */
    Py_XDECREF(et);
    Py_XDECREF(tb);
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
}

static void format_id(char *buf, size_t size, uint64_t id)
{
    snprintf(buf, size, "0x%llx", (unsigned long long)id);
}

/* ------------------------------------------------------------------------------------------ */
/* Object layouts                                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    void *lib;
    api_t api;
    aipu_ctx_t *ctx;       /* NULL when init failed or after close */
    const abi_t *abi;
    int abi_known;         /* release known, so its ioctl numbers are usable */
    PyObject *abi_source;  /* "argument", "file name" or "assumed" */
    PyObject *path;        /* str, as given */
    PyObject *real_path;   /* str or None */
    PyObject *version;     /* str or None */
    PyObject *kmd_version; /* str or None */
    PyObject *features;    /* frozenset of optional symbols present */
    PyObject *poison_reason; /* str or NULL */
    int closed;
    int poll_any_thread;
    Py_ssize_t active;     /* driver calls in flight with the GIL released */
    Py_ssize_t scheduled;  /* jobs flushed and not yet seen to end */
} DriverObject;

typedef struct {
    PyObject_HEAD
    DriverObject *driver;
    uint64_t id;
    PyObject *path; /* str, or None when loaded from memory */
    PyObject *inputs;
    PyObject *outputs;
    int closed;
    Py_ssize_t active;
    Py_ssize_t scheduled;
} GraphObject;

enum { JOB_IDLE, JOB_SCHEDULED, JOB_DONE, JOB_EXCEPTION, JOB_LOST, JOB_CLOSED };
static const char *const JOB_STATE_NAMES[] = {"idle",      "scheduled", "done",
                                              "exception", "timed_out", "closed"};

typedef struct {
    PyObject_HEAD
    GraphObject *graph;
    uint64_t id;
    int state;
    int busy;
    unsigned long flush_thread;
    PyObject *dump_strings; /* keeps configure_dump's strings alive while the job lives */
} JobObject;

static PyTypeObject DriverType;
static PyTypeObject GraphType;
static PyTypeObject JobType;

/* Fetches the driver's text for a status (a new str, maybe empty), or NULL with no error set
 * when the driver has none. Called with the GIL held: the driver's lookup is not thread-safe. */
static PyObject *driver_message(DriverObject *d, aipu_status_t status)
{
    const char *msg = NULL;
    aipu_status_t ret;

    if (d->api.get_error_message == NULL)
        return NULL;
    ret = d->api.get_error_message(d->ctx, status, &msg);
    /* Without a context only OPEN_DEV_FAIL has a message (returned as the status itself);
     * anything else comes back as NULL_PTR with the NULL_PTR text, which would mislead. */
    if ((d->ctx == NULL && ret != status) || (d->ctx != NULL && ret != ST_SUCCESS) || msg == NULL)
        return NULL;
    return PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
}

/* Raises a DriverError (or `type`) for a failed driver call. `what` says what we were doing.
 * job_id is attached when non-zero. */
static PyObject *raise_driver_error(DriverObject *d, PyObject *type, aipu_status_t status,
                                    const char *call, uint64_t job_id, const char *fmt, ...)
{
    char name_buf[40];
    const char *name = status_name(status, name_buf, sizeof name_buf);
    PyObject *what, *drv, *message, *attrs;
    va_list va;

    if (type == NULL) {
        if (status == ST_OPEN_DEV_FAIL)
            type = NoDeviceError;
        else if (status == ST_JOB_EXCEPTION || status >= ST_RUNTIME_BASE)
            type = JobException;
        else
            type = DriverError;
    }
    va_start(va, fmt);
    what = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (what == NULL)
        return NULL;
    drv = driver_message(d, status);
    if (drv == NULL) {
        PyErr_Clear();
        drv = PyUnicode_FromString("");
        if (drv == NULL) {
            Py_DECREF(what);
            return NULL;
        }
    }
    if (PyUnicode_GetLength(drv) > 0)
        message = PyUnicode_FromFormat("%U: %s returned %s (0x%x): %U", what, call, name,
                                       (unsigned)status, drv);
    else
        message = PyUnicode_FromFormat("%U: %s returned %s (0x%x): %s", what, call, name,
                                       (unsigned)status, status_text(status));
    attrs = Py_BuildValue("{s:I,s:s,s:O,s:s,s:N}", "status", (unsigned)status, "status_name",
                          name, "driver_message", drv, "call", call, "job_id",
                          job_id ? PyLong_FromUnsignedLongLong(job_id) : Py_NewRef(Py_None));
    Py_DECREF(what);
    Py_DECREF(drv);
    raise_with(type, message, attrs);
    return NULL;
}

static void poison(DriverObject *d, PyObject *reason /* stolen; may be NULL */)
{
    if (d->poison_reason == NULL)
        d->poison_reason = reason;
    else
        Py_XDECREF(reason);
    if (d->poison_reason == NULL) {
        PyErr_Clear();
        d->poison_reason = PyUnicode_FromString("a job was abandoned while running");
        PyErr_Clear();
    }
}

static int driver_check_open(DriverObject *d)
{
    if (d->closed || d->ctx == NULL) {
        PyErr_Format(PyExc_ValueError, "the NPU driver %R is closed", d->path);
        return -1;
    }
    return 0;
}

static int driver_check_usable(DriverObject *d)
{
    if (driver_check_open(d) < 0)
        return -1;
    if (d->poison_reason != NULL) {
        PyErr_Format(DriverPoisoned,
                     "the NPU driver in this process is unusable because %U, and that job "
                     "may still be running on the NPU, so nothing may be freed or reused: "
                     "exit this process (closing /dev/aipu makes the kernel driver cancel "
                     "its jobs) and start a new one",
                     d->poison_reason);
        return -1;
    }
    return 0;
}

static int graph_check_usable(GraphObject *g)
{
    char id[24];
    if (g->closed) {
        format_id(id, sizeof id, g->id);
        PyErr_Format(PyExc_ValueError, "graph %s is closed", id);
        return -1;
    }
    return driver_check_usable(g->driver);
}

/* For any job operation: open, not in use by another thread, not abandoned. */
static int job_check_usable(JobObject *j)
{
    char id[24];
    format_id(id, sizeof id, j->id);
    if (j->state == JOB_CLOSED) {
        PyErr_Format(PyExc_ValueError, "job %s is closed", id);
        return -1;
    }
    if (j->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "job %s is in use by another thread; the driver allows one thread per job",
                     id);
        return -1;
    }
    return graph_check_usable(j->graph);
}

/* Bookkeeping around a call made with the GIL released. */
static void job_begin(JobObject *j)
{
    j->busy = 1;
    j->graph->active++;
    j->graph->driver->active++;
}

static void job_end(JobObject *j)
{
    j->busy = 0;
    j->graph->active--;
    j->graph->driver->active--;
}

/* st = call, with the GIL released; the driver counts as busy meanwhile. */
#define UNLOCKED_CALL(d, st, call)                                                             \
    do {                                                                                       \
        (d)->active++;                                                                         \
        Py_BEGIN_ALLOW_THREADS                                                                 \
        (st) = (call);                                                                         \
        Py_END_ALLOW_THREADS                                                                   \
        (d)->active--;                                                                         \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Tensor descriptors                                                                          */
/* ------------------------------------------------------------------------------------------ */

static PyStructSequence_Field TENSOR_DESC_FIELDS[] = {
    {"index", "the tensor's index within its type"},
    {"tensor_type", "TENSOR_INPUT, TENSOR_OUTPUT, TENSOR_PROFILER, ..."},
    {"size", "the tensor's size in bytes: buffers must have exactly this size"},
    {"data_type", "the driver's data type code (aipu_data_type_t)"},
    {"dtype", "the numpy dtype name of the bytes as stored"},
    {"scale", "quantisation scale: q = round(scale * x - zero_point)"},
    {"zero_point", "quantisation zero point: an int (a float before UMD 5.10)"},
    {NULL, NULL},
};

static PyStructSequence_Desc TENSOR_DESC_DESC = {
    "compassd._aipu.TensorDesc",
    "A tensor descriptor as the driver reports it. The driver knows no shape and no name:\n"
    "those come from the model's manifest.",
    TENSOR_DESC_FIELDS,
    7,
};

static PyObject *make_desc(const abi_t *abi, uint32_t type, uint32_t index,
                           const aipu_tensor_desc_t *raw)
{
    PyObject *desc = PyStructSequence_New(TensorDescType);
    PyObject *items[7];
    int i;

    if (desc == NULL)
        return NULL;
    items[0] = PyLong_FromUnsignedLong(index);
    items[1] = PyLong_FromUnsignedLong(type);
    items[2] = PyLong_FromUnsignedLong(raw->size);
    items[3] = PyLong_FromUnsignedLong(raw->data_type);
    items[4] = PyUnicode_FromString(dtype_of(raw->data_type));
    items[5] = PyFloat_FromDouble(raw->scale);
    items[6] = abi->zero_point_is_float ? PyFloat_FromDouble(raw->zero_point.f)
                                        : PyLong_FromLong(raw->zero_point.i);
    for (i = 0; i < 7; i++) {
        if (items[i] == NULL) {
            int k;
            for (k = i; k < 7; k++)
                Py_XDECREF(items[k]);
            Py_DECREF(desc);
            return NULL;
        }
        PyStructSequence_SET_ITEM(desc, i, items[i]);
    }
    return desc;
}

/* Queries all descriptors of one type for a graph or job ID: a tuple, or NULL with an error. */
static PyObject *query_descs(DriverObject *d, uint64_t id, uint32_t type)
{
    aipu_status_t st;
    uint32_t count = 0, i;
    PyObject *result;
    char id_text[24];

    format_id(id_text, sizeof id_text, id);
    UNLOCKED_CALL(d, st, d->api.get_tensor_count(d->ctx, id, type, &count));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_tensor_count", 0,
                                  "cannot count the type-%u tensors of %s", (unsigned)type,
                                  id_text);
    result = PyTuple_New(count);
    if (result == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        aipu_tensor_desc_t raw;
        PyObject *desc;
        memset(&raw, 0, sizeof raw);
        UNLOCKED_CALL(d, st, d->api.get_tensor_descriptor(d->ctx, id, type, i, &raw));
        if (st != ST_SUCCESS) {
            Py_DECREF(result);
            return raise_driver_error(d, NULL, st, "aipu_get_tensor_descriptor", 0,
                                      "cannot read descriptor %u of the type-%u tensors of %s",
                                      (unsigned)i, (unsigned)type, id_text);
        }
        desc = make_desc(d->abi, type, i, &raw);
        if (desc == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, desc);
    }
    return result;
}

static uint32_t desc_size(PyObject *desc)
{
    return (uint32_t)PyLong_AsUnsignedLong(PyStructSequence_GET_ITEM(desc, 2));
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    Py_buffer *views;
    Py_ssize_t n; /* acquired so far */
} buffers_t;

static void buffers_release(buffers_t *b)
{
    Py_ssize_t i;
    for (i = 0; i < b->n; i++)
        PyBuffer_Release(&b->views[i]);
    PyMem_Free(b->views);
    b->views = NULL;
    b->n = 0;
}

/* Acquires one C-contiguous buffer per descriptor and checks each size. */
static int buffers_acquire(buffers_t *b, PyObject *seq, PyObject *descs, int writable,
                           const char *kind)
{
    PyObject *fast;
    Py_ssize_t n, expected = PyTuple_GET_SIZE(descs), i;

    b->views = NULL;
    b->n = 0;
    if (PyObject_CheckBuffer(seq) || PyUnicode_Check(seq)) {
        PyErr_Format(PyExc_TypeError,
                     "%ss must be a sequence with one buffer per %s tensor, not a single %.200s",
                     kind, kind, Py_TYPE(seq)->tp_name);
        return -1;
    }
    fast = PySequence_Fast(seq, "");
    if (fast == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "%ss must be a sequence with one buffer per %s tensor, not %.200s", kind,
                     kind, Py_TYPE(seq)->tp_name);
        return -1;
    }
    n = PySequence_Fast_GET_SIZE(fast);
    if (n != expected) {
        PyErr_Format(PyExc_ValueError, "the graph has %zd %s tensor%s but %zd buffer%s given",
                     expected, kind, expected == 1 ? "" : "s", n, n == 1 ? " was" : "s were");
        Py_DECREF(fast);
        return -1;
    }
    b->views = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(Py_buffer));
    if (b->views == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        PyObject *desc = PyTuple_GET_ITEM(descs, i);
        uint32_t size = desc_size(desc);
        int flags = writable ? (PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) : PyBUF_C_CONTIGUOUS;

        if (PyObject_GetBuffer(item, &b->views[i], flags) < 0) {
            raise_from_current(
                PyExc_TypeError,
                PyUnicode_FromFormat("%s tensor %zd: expected a C-contiguous %s, got %.200s",
                                     kind, i,
                                     writable ? "writable buffer (bytearray, memoryview or "
                                                "writable numpy array)"
                                              : "buffer (bytes, bytearray, memoryview or numpy "
                                                "array)",
                                     Py_TYPE(item)->tp_name));
            goto fail;
        }
        b->n = i + 1;
        if (b->views[i].len != (Py_ssize_t)size) {
            raise_with(TensorSizeError,
                       PyUnicode_FromFormat("%s tensor %zd: expected %u bytes (%U), got %zd bytes",
                                            kind, i, (unsigned)size,
                                            PyStructSequence_GET_ITEM(desc, 4), b->views[i].len),
                       Py_BuildValue("{s:s,s:n,s:I,s:n}", "kind", kind, "index", i, "expected",
                                     (unsigned)size, "given", b->views[i].len));
            goto fail;
        }
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    buffers_release(b);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Driver                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static const abi_t *abi_lookup(int major, int minor)
{
    size_t i;
    for (i = 0; i < N_ABIS; i++)
        if (ABIS[i].major == major && ABIS[i].minor == minor)
            return &ABIS[i];
    return NULL;
}

/* Parses "6.1", "6.1.0" or the tail of "libaipudrv.so.6.1.0"; minor is -1 when absent. */
static int parse_version(const char *s, int *major, int *minor)
{
    char *end;
    long a, b = -1;
    if (*s < '0' || *s > '9')
        return -1;
    a = strtol(s, &end, 10);
    if (*end == '.') {
        if (end[1] < '0' || end[1] > '9')
            return -1;
        b = strtol(end + 1, &end, 10);
        while (*end == '.' || (*end >= '0' && *end <= '9'))
            end++;
    }
    if (*end != '\0' || a > 1000 || b > 1000)
        return -1;
    *major = (int)a;
    *minor = (int)b;
    return 0;
}

static PyObject *supported_abis_text(void)
{
    return PyUnicode_FromFormat("%s, %s, %s, %s, %s or %s", ABIS[0].name, ABIS[1].name,
                                ABIS[2].name, ABIS[3].name, ABIS[4].name, ABIS[5].name);
}

/* Picks the ABI from the abi= argument or the library's real file name (section 1.7: the
 * symbol sets of 5.11 and 6.x are the same, so nothing else tells them apart). */
static int choose_abi(DriverObject *d, PyObject *abi_arg)
{
    int major, minor;
    const char *source;

    if (abi_arg != Py_None) {
        const char *text;
        if (!PyUnicode_Check(abi_arg)) {
            PyErr_Format(PyExc_TypeError, "abi must be a str such as \"6.1\", not %.200s",
                         Py_TYPE(abi_arg)->tp_name);
            return -1;
        }
        text = PyUnicode_AsUTF8(abi_arg);
        if (text == NULL)
            return -1;
        if (parse_version(text, &major, &minor) < 0 ||
            (d->abi = abi_lookup(major, minor)) == NULL) {
            PyObject *known = supported_abis_text();
            if (known != NULL) {
                PyErr_Format(PyExc_ValueError, "unknown driver ABI %R: this binding knows %U",
                             abi_arg, known);
                Py_DECREF(known);
            }
            return -1;
        }
        d->abi_known = 1;
        source = "argument";
    } else {
        const char *real = NULL, *base, *tail;
        if (d->real_path != Py_None && (real = PyUnicode_AsUTF8(d->real_path)) == NULL)
            return -1;
        base = real ? strrchr(real, '/') : NULL;
        base = base ? base + 1 : real;
        tail = base && strncmp(base, "libaipudrv.so.", 14) == 0 ? base + 14 : NULL;
        if (tail == NULL || parse_version(tail, &major, &minor) < 0) {
            /* A bare libaipudrv.so (as TVM ships it): assume the newest layout. */
            d->abi = ABI_NEWEST;
            source = "assumed";
        } else if (minor >= 0 && (d->abi = abi_lookup(major, minor)) != NULL) {
            d->abi_known = 1;
            source = "file name";
        } else if (major > ABI_NEWEST->major ||
                   (major == ABI_NEWEST->major && minor > ABI_NEWEST->minor) ||
                   (major == ABI_NEWEST->major && minor < 0)) {
            d->abi = ABI_NEWEST;
            source = "assumed";
        } else {
            PyObject *known = supported_abis_text();
            if (known != NULL) {
                PyErr_Format(DriverLoadError,
                             "the NPU driver %R is UMD %s, whose ABI this binding does not know "
                             "(it knows %U); pass abi= (or the server's driver ABI option) if "
                             "you know it matches one of those",
                             d->real_path, tail, known);
                Py_DECREF(known);
            }
            return -1;
        }
    }
    d->abi_source = PyUnicode_FromString(source);
    return d->abi_source == NULL ? -1 : 0;
}

/* The "X.Y.Z" of libaipudrv.so.X.Y.Z, or None. */
static PyObject *version_from_file_name(PyObject *real_path)
{
    const char *real, *base;
    if (real_path == Py_None || (real = PyUnicode_AsUTF8(real_path)) == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    base = strrchr(real, '/');
    base = base ? base + 1 : real;
    if (strncmp(base, "libaipudrv.so.", 14) == 0 && base[14] >= '0' && base[14] <= '9')
        return PyUnicode_FromString(base + 14);
    Py_RETURN_NONE;
}

static PyObject *string_or_none(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    if (n == 0)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "replace");
}

static void driver_query_versions(DriverObject *d)
{
    /* char umd_version[16], kmd_version[16], filled with strncpy: not terminated. */
    char v[33];
    aipu_status_t st;

    memset(v, 0, sizeof v);
    if (d->abi_known && d->api.ioctl != NULL && d->abi->ioctl_get_version != 0) {
        UNLOCKED_CALL(d, st, d->api.ioctl(d->ctx, d->abi->ioctl_get_version, v));
        if (st == ST_SUCCESS) {
            d->version = string_or_none(v, 16);
            d->kmd_version = string_or_none(v + 16, 16);
        }
    }
    if (d->version == NULL || d->version == Py_None) {
        Py_XDECREF(d->version);
        d->version = version_from_file_name(d->real_path);
    }
    if (d->kmd_version == NULL)
        d->kmd_version = Py_NewRef(Py_None);
    if (d->version == NULL) {
        PyErr_Clear();
        d->version = Py_NewRef(Py_None);
    }
}

static PyObject *Driver_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "abi", "poll_any_thread", NULL};
    PyObject *path_arg = Py_None, *abi_arg = Py_None, *path_bytes = NULL, *features = NULL;
    int poll_any = 1;
    DriverObject *d;
    const char *cpath;
    char errbuf[1024];
    void *lib;
    size_t i;
    aipu_status_t st;
    aipu_ctx_t *ctx = NULL;
    Dl_info info;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$Op:Driver", kwlist, &path_arg, &abi_arg,
                                     &poll_any))
        return NULL;
    d = (DriverObject *)type->tp_alloc(type, 0);
    if (d == NULL)
        return NULL;
    d->closed = 1; /* until init_context succeeds */

    if (path_arg == Py_None) {
        const char *env = getenv("COMPASS_AIPU_DRIVER");
        path_bytes = PyBytes_FromString(env != NULL && env[0] != '\0' ? env : "libaipudrv.so");
        if (path_bytes == NULL)
            goto fail;
    } else if (!PyUnicode_FSConverter(path_arg, &path_bytes)) {
        goto fail;
    }
    cpath = PyBytes_AS_STRING(path_bytes);
    if (cpath[0] == '\0') { /* dlopen("") would hand back the main program */
        PyErr_SetString(PyExc_ValueError, "the NPU driver path is empty");
        goto fail;
    }
    d->path = PyUnicode_DecodeFSDefault(cpath);
    if (d->path == NULL)
        goto fail;

    errbuf[0] = '\0';
    Py_BEGIN_ALLOW_THREADS
    lib = dlopen(cpath, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *e = dlerror(); /* thread-local: read it on this thread, now */
        snprintf(errbuf, sizeof errbuf, "%s", e ? e : "unknown dlopen error");
    }
    Py_END_ALLOW_THREADS
    if (lib == NULL) {
        raise_with(DriverLoadError,
                   PyUnicode_FromFormat("cannot load the NPU driver library %R: %s; give the "
                                        "path of libaipudrv.so (server option, or the "
                                        "COMPASS_AIPU_DRIVER environment variable)",
                                        d->path, errbuf),
                   Py_BuildValue("{s:O,s:O}", "path", d->path, "symbol", Py_None));
        goto fail;
    }

    if (dlsym(lib, "PyInit_libaipudrv") != NULL) {
        dlclose(lib);
        raise_with(DriverLoadError,
                   PyUnicode_FromFormat("%R is the pybind11 (python_api) build of libaipudrv, "
                                        "whose API is not C-compatible: use the standard build",
                                        d->path),
                   Py_BuildValue("{s:O,s:O}", "path", d->path, "symbol", Py_None));
        goto fail;
    }
    features = PySet_New(NULL);
    if (features == NULL) {
        dlclose(lib);
        goto fail;
    }
    for (i = 0; i < N_SYMBOLS; i++) {
        void *sym = dlsym(lib, SYMBOLS[i].name);
        if (sym == NULL && SYMBOLS[i].required) {
            dlclose(lib);
            raise_with(DriverLoadError,
                       PyUnicode_FromFormat("the NPU driver library %R does not export %s, which "
                                            "compassd needs: is it the Zhouyi UMD "
                                            "(libaipudrv.so, 5.8 or later)?",
                                            d->path, SYMBOLS[i].name),
                       Py_BuildValue("{s:O,s:s}", "path", d->path, "symbol", SYMBOLS[i].name));
            goto fail;
        }
        /* POSIX guarantees that a void * from dlsym converts to a function pointer. */
        memcpy((char *)&d->api + SYMBOLS[i].offset, &sym, sizeof sym);
        if (sym != NULL && !SYMBOLS[i].required) {
            PyObject *name = PyUnicode_FromString(SYMBOLS[i].name);
            if (name == NULL || PySet_Add(features, name) < 0) {
                Py_XDECREF(name);
                dlclose(lib);
                goto fail;
            }
            Py_DECREF(name);
        }
    }
    d->features = PyFrozenSet_New(features);
    Py_CLEAR(features);
    if (d->features == NULL) {
        dlclose(lib);
        goto fail;
    }
    d->lib = lib;

    /* The file that really provides the API: a search-path name or a symlink resolved. */
    {
        void *init_sym;
        char *real = NULL;
        memcpy(&init_sym, &d->api.init_context, sizeof init_sym);
        if (dladdr(init_sym, &info) != 0 && info.dli_fname != NULL)
            real = realpath(info.dli_fname, NULL);
        if (real != NULL) {
            d->real_path = PyUnicode_DecodeFSDefault(real);
            free(real);
            if (d->real_path == NULL)
                goto fail;
        } else {
            d->real_path = Py_NewRef(Py_None);
        }
    }
    if (choose_abi(d, abi_arg) < 0)
        goto fail;

    /* From here on the library has been called into: it stays loaded. */
    Py_BEGIN_ALLOW_THREADS
    st = d->api.init_context(&ctx);
    Py_END_ALLOW_THREADS
    if (st != ST_SUCCESS) {
        raise_driver_error(d, NULL, st, "aipu_init_context", 0,
                           "cannot open the NPU through %R", d->path);
        goto fail;
    }
    if (ctx == NULL) {
        PyErr_Format(DriverError, "aipu_init_context of %R succeeded but gave no context",
                     d->path);
        goto fail;
    }
    d->ctx = ctx;
    d->closed = 0;

    /* Completion is thread-affine unless poll_in_commit_thread is false: asking for that lets
     * Job.wait() run on another thread than Job.flush(). */
    if (poll_any && d->api.config_global != NULL && d->abi->cfg_hw != 0) {
        unsigned char hw[2] = {0 /* poll_in_commit_thread */, 1 /* enable_tec_done_irq */};
        UNLOCKED_CALL(d, st, d->api.config_global(d->ctx, d->abi->cfg_hw, hw));
        d->poll_any_thread = st == ST_SUCCESS;
    }
    driver_query_versions(d);
    Py_XDECREF(path_bytes);
    return (PyObject *)d;

fail:
    Py_XDECREF(features);
    Py_XDECREF(path_bytes);
    Py_DECREF(d);
    return NULL;
}

/* Deinitialises unless that could free memory a running job uses. Returns the status. */
static aipu_status_t driver_release(DriverObject *d, int release_gil)
{
    aipu_ctx_t *ctx = d->ctx;
    aipu_status_t st = ST_SUCCESS;

    if (d->closed)
        return ST_SUCCESS;
    d->closed = 1;
    if (d->scheduled > 0)
        poison(d, PyUnicode_FromString("the driver was closed while a job was still running"));
    if (d->poison_reason != NULL || ctx == NULL)
        return ST_SUCCESS; /* leak it: the process is to be recycled */
    if (release_gil) {
        Py_BEGIN_ALLOW_THREADS
        st = d->api.deinit_context(ctx);
        Py_END_ALLOW_THREADS
    } else {
        st = d->api.deinit_context(ctx);
    }
    d->ctx = NULL; /* freed by the driver on success; unusable otherwise */
    return st;
}

static void Driver_dealloc(DriverObject *d)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb); /* deallocation may run while an exception is pending */
    if (!d->closed)
        driver_release(d, 0);
    PyErr_Restore(et, ev, tb);
    Py_XDECREF(d->abi_source);
    Py_XDECREF(d->path);
    Py_XDECREF(d->real_path);
    Py_XDECREF(d->version);
    Py_XDECREF(d->kmd_version);
    Py_XDECREF(d->features);
    Py_XDECREF(d->poison_reason);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyObject *Driver_close(DriverObject *d, PyObject *Py_UNUSED(ignored))
{
    aipu_status_t st;
    if (d->closed)
        Py_RETURN_NONE;
    if (d->active > 0)
        return PyErr_Format(PyExc_RuntimeError,
                            "cannot close the NPU driver %R: %zd driver call%s in progress in "
                            "other threads",
                            d->path, d->active, d->active == 1 ? " is" : "s are");
    st = driver_release(d, 1);
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_deinit_context", 0,
                                  "cannot close the NPU driver %R", d->path);
    Py_RETURN_NONE;
}

static PyObject *self_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *Driver_exit(DriverObject *d, PyObject *Py_UNUSED(args))
{
    PyObject *r = Driver_close(d, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *graph_new(DriverObject *d, uint64_t id, PyObject *path);

/* Shared by load_graph and load_graph_bytes. */
static int make_load_config(DriverObject *d, unsigned char *cfg, PyObject *extra,
                            PyObject **extra_bytes)
{
    const char *p;
    memset(cfg, 0, LOAD_CFG_SIZE);
    *extra_bytes = NULL;
    if (extra == Py_None)
        return 0;
    if (!d->abi->has_extra_weight_path) {
        PyErr_Format(PyExc_ValueError,
                     "UMD %s has no extra_weight_path in its load config: put the extra "
                     "weight files where that release looks for them",
                     d->abi->name);
        return -1;
    }
    if (!PyUnicode_FSConverter(extra, extra_bytes))
        return -1;
    p = PyBytes_AS_STRING(*extra_bytes);
    memcpy(cfg + LOAD_CFG_EXTRA_WEIGHT_PATH, &p, sizeof p);
    return 0;
}

static PyObject *Driver_load_graph(DriverObject *d, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "extra_weight_path", NULL};
    PyObject *path_arg, *extra = NULL, *path_bytes = NULL, *extra_bytes = NULL, *path_str;
    PyObject *result = NULL;
    unsigned char cfg[LOAD_CFG_SIZE];
    uint64_t id = 0;
    aipu_status_t st;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$O:load_graph", kwlist, &path_arg, &extra))
        return NULL;
    if (driver_check_usable(d) < 0 || !PyUnicode_FSConverter(path_arg, &path_bytes))
        return NULL;
    path_str = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_bytes));
    if (path_str == NULL)
        goto out;
    if (extra == NULL) {
        /* As TVM does: extra weight files (aipu.bin.extraweight*) sit next to the graph. */
        const char *p = PyBytes_AS_STRING(path_bytes), *slash = strrchr(p, '/');
        extra = slash == NULL ? PyUnicode_FromString(".")
                : slash == p  ? PyUnicode_FromString("/")
                              : PyUnicode_DecodeFSDefaultAndSize(p, slash - p);
        if (extra == NULL)
            goto out;
        if (!d->abi->has_extra_weight_path)
            Py_SETREF(extra, Py_NewRef(Py_None));
    } else {
        Py_INCREF(extra);
    }
    if (make_load_config(d, cfg, extra, &extra_bytes) < 0)
        goto out;
    UNLOCKED_CALL(d, st, d->api.load_graph(d->ctx, PyBytes_AS_STRING(path_bytes), &id, cfg));
    if (st != ST_SUCCESS) {
        raise_driver_error(d, NULL, st, "aipu_load_graph", 0, "cannot load the graph %R",
                           path_str);
        goto out;
    }
    result = graph_new(d, id, path_str);
out:
    Py_XDECREF(extra);
    Py_XDECREF(path_str);
    Py_XDECREF(path_bytes);
    Py_XDECREF(extra_bytes);
    return result;
}

static PyObject *Driver_load_graph_bytes(DriverObject *d, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "extra_weight_path", NULL};
    PyObject *extra = Py_None, *extra_bytes = NULL, *result = NULL;
    Py_buffer view;
    unsigned char cfg[LOAD_CFG_SIZE];
    uint64_t id = 0;
    aipu_status_t st;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|$O:load_graph_bytes", kwlist, &view,
                                     &extra))
        return NULL;
    if (driver_check_usable(d) < 0)
        goto out;
    if ((size_t)view.len > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "a graph loaded from memory is limited to 4 GiB, got %zd "
                     "bytes", view.len);
        goto out;
    }
    if (make_load_config(d, cfg, extra, &extra_bytes) < 0)
        goto out;
    UNLOCKED_CALL(d, st, d->api.load_graph_helper(d->ctx, view.buf, (uint32_t)view.len, &id, cfg));
    if (st != ST_SUCCESS) {
        raise_driver_error(d, NULL, st, "aipu_load_graph_helper", 0,
                           "cannot load a graph from %zd bytes in memory", view.len);
        goto out;
    }
    result = graph_new(d, id, Py_None);
out:
    PyBuffer_Release(&view);
    Py_XDECREF(extra_bytes);
    return result;
}

static PyObject *Driver_set_version_check(DriverObject *d, PyObject *arg)
{
    int enabled = PyObject_IsTrue(arg);
    aipu_status_t st;
    uint64_t bit;

    if (enabled < 0 || driver_check_usable(d) < 0)
        return NULL;
    if (d->api.config_global == NULL)
        return PyErr_Format(PyExc_NotImplementedError,
                            "the NPU driver %R does not export aipu_config_global", d->path);
    bit = enabled ? d->abi->cfg_enable_ver_check : d->abi->cfg_disable_ver_check;
    UNLOCKED_CALL(d, st, d->api.config_global(d->ctx, bit, NULL));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_config_global", 0,
                                  "cannot %s the graph target check",
                                  enabled ? "enable" : "disable");
    Py_RETURN_NONE;
}

/* Optional queries return None when the symbol is absent. */
static PyObject *Driver_target(DriverObject *d, PyObject *Py_UNUSED(ignored))
{
    char target[64];
    aipu_status_t st;
    if (driver_check_open(d) < 0)
        return NULL;
    if (d->api.get_target == NULL)
        Py_RETURN_NONE;
    memset(target, 0, sizeof target); /* the driver does not terminate it */
    UNLOCKED_CALL(d, st, d->api.get_target(d->ctx, target));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_target", 0,
                                  "cannot read the NPU target");
    return string_or_none(target, 32);
}

static PyObject *Driver_partition_count(DriverObject *d, PyObject *Py_UNUSED(ignored))
{
    uint32_t n = 0;
    aipu_status_t st;
    if (driver_check_open(d) < 0)
        return NULL;
    if (d->api.get_partition_count == NULL)
        Py_RETURN_NONE;
    UNLOCKED_CALL(d, st, d->api.get_partition_count(d->ctx, &n));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_partition_count", 0,
                                  "cannot count the NPU partitions");
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Driver_cluster_count(DriverObject *d, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"partition", NULL};
    unsigned int partition = 0;
    uint32_t n = 0;
    aipu_status_t st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|I:cluster_count", kwlist, &partition))
        return NULL;
    if (driver_check_open(d) < 0)
        return NULL;
    if (d->api.get_cluster_count == NULL)
        Py_RETURN_NONE;
    UNLOCKED_CALL(d, st, d->api.get_cluster_count(d->ctx, partition, &n));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_cluster_count", 0,
                                  "cannot count the clusters of partition %u", partition);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Driver_core_count(DriverObject *d, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"partition", "cluster", NULL};
    unsigned int partition = 0, cluster = 0;
    uint32_t n = 0;
    aipu_status_t st;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|II:core_count", kwlist, &partition, &cluster))
        return NULL;
    if (driver_check_open(d) < 0)
        return NULL;
    if (d->api.get_core_count == NULL)
        Py_RETURN_NONE;
    UNLOCKED_CALL(d, st, d->api.get_core_count(d->ctx, partition, cluster, &n));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_core_count", 0,
                                  "cannot count the cores of partition %u, cluster %u",
                                  partition, cluster);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Driver_device_status(DriverObject *d, PyObject *Py_UNUSED(ignored))
{
    uint32_t status = 0;
    aipu_status_t st;
    if (driver_check_open(d) < 0)
        return NULL;
    if (d->api.get_device_status == NULL)
        Py_RETURN_NONE;
    UNLOCKED_CALL(d, st, d->api.get_device_status(d->ctx, &status));
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_device_status", 0,
                                  "cannot read the NPU device status");
    switch (status) {
    case 0:
        return PyUnicode_FromString("idle");
    case 1:
        return PyUnicode_FromString("busy");
    case 2:
        return PyUnicode_FromString("exception");
    default:
        return PyUnicode_FromFormat("unknown (%u)", (unsigned)status);
    }
}

/* Calls a query method; on a DriverError stores None (a health report should not fail). */
static int info_put(PyObject *dict, const char *key, PyObject *value)
{
    int r;
    if (value == NULL) {
        if (!PyErr_ExceptionMatches(DriverError))
            return -1;
        PyErr_Clear();
        value = Py_NewRef(Py_None);
    }
    r = PyDict_SetItemString(dict, key, value);
    Py_DECREF(value);
    return r;
}

static PyObject *Driver_info(DriverObject *d, PyObject *Py_UNUSED(ignored))
{
    PyObject *dict, *parts;
    long total_cores = -1;

    if (driver_check_open(d) < 0)
        return NULL;
    dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    if (PyDict_SetItemString(dict, "path", d->path) < 0 ||
        PyDict_SetItemString(dict, "real_path", d->real_path) < 0 ||
        info_put(dict, "abi", PyUnicode_FromString(d->abi->name)) < 0 ||
        PyDict_SetItemString(dict, "abi_source", d->abi_source) < 0 ||
        PyDict_SetItemString(dict, "umd_version", d->version) < 0 ||
        PyDict_SetItemString(dict, "kmd_version", d->kmd_version) < 0 ||
        info_put(dict, "target", Driver_target(d, NULL)) < 0 ||
        info_put(dict, "device_status", Driver_device_status(d, NULL)) < 0)
        goto fail;

    parts = Driver_partition_count(d, NULL);
    if (parts == NULL && !PyErr_ExceptionMatches(DriverError))
        goto fail;
    PyErr_Clear();
    if (parts != NULL && parts != Py_None && d->api.get_cluster_count != NULL &&
        d->api.get_core_count != NULL) {
        uint32_t p, c, np = (uint32_t)PyLong_AsUnsignedLong(parts);
        total_cores = 0;
        for (p = 0; p < np && total_cores >= 0; p++) {
            uint32_t nc = 0;
            aipu_status_t st;
            UNLOCKED_CALL(d, st, d->api.get_cluster_count(d->ctx, p, &nc));
            if (st != ST_SUCCESS) {
                total_cores = -1;
                break;
            }
            for (c = 0; c < nc; c++) {
                uint32_t n = 0;
                UNLOCKED_CALL(d, st, d->api.get_core_count(d->ctx, p, c, &n));
                if (st != ST_SUCCESS) {
                    total_cores = -1;
                    break;
                }
                total_cores += n;
            }
        }
    }
    if (info_put(dict, "partitions", parts ? parts : Py_NewRef(Py_None)) < 0 ||
        info_put(dict, "cores",
                 total_cores >= 0 ? PyLong_FromLong(total_cores) : Py_NewRef(Py_None)) < 0)
        goto fail;
    if (PyDict_SetItemString(dict, "features", d->features) < 0 ||
        info_put(dict, "poisoned", PyBool_FromLong(d->poison_reason != NULL)) < 0)
        goto fail;
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

static PyObject *Driver_repr(DriverObject *d)
{
    return PyUnicode_FromFormat("<compassd._aipu.Driver %R UMD %S (ABI %s), %s>", d->path,
                                d->version ? d->version : Py_None, d->abi ? d->abi->name : "?",
                                d->poison_reason ? "poisoned"
                                : d->closed      ? "closed"
                                                 : "open");
}

static PyObject *Driver_get_abi(DriverObject *d, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(d->abi->name);
}

#define OBJ_GETTER(Type, name, expr)                                                           \
    static PyObject *Type##_get_##name(Type *self, void *Py_UNUSED(c))                         \
    {                                                                                          \
        return Py_NewRef(expr);                                                                \
    }

OBJ_GETTER(DriverObject, path, self->path)
OBJ_GETTER(DriverObject, real_path, self->real_path)
OBJ_GETTER(DriverObject, abi_source, self->abi_source)
OBJ_GETTER(DriverObject, version, self->version)
OBJ_GETTER(DriverObject, kmd_version, self->kmd_version)
OBJ_GETTER(DriverObject, features, self->features)
OBJ_GETTER(DriverObject, poison_reason, self->poison_reason ? self->poison_reason : Py_None)

static PyObject *Driver_get_closed(DriverObject *d, void *Py_UNUSED(c))
{
    return PyBool_FromLong(d->closed);
}

static PyObject *Driver_get_poisoned(DriverObject *d, void *Py_UNUSED(c))
{
    return PyBool_FromLong(d->poison_reason != NULL);
}

static PyObject *Driver_get_poll_any_thread(DriverObject *d, void *Py_UNUSED(c))
{
    return PyBool_FromLong(d->poll_any_thread);
}

static PyMethodDef Driver_methods[] = {
    {"close", (PyCFunction)Driver_close, METH_NOARGS,
     "Deinitialise the driver context (a no-op when closed, or when poisoned: then nothing "
     "is freed)."},
    {"__enter__", self_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Driver_exit, METH_VARARGS, NULL},
    {"load_graph", (PyCFunction)(void (*)(void))Driver_load_graph, METH_VARARGS | METH_KEYWORDS,
     "load_graph(path, *, extra_weight_path=<the graph's directory>) -> Graph"},
    {"load_graph_bytes", (PyCFunction)(void (*)(void))Driver_load_graph_bytes,
     METH_VARARGS | METH_KEYWORDS, "load_graph_bytes(data, *, extra_weight_path=None) -> Graph"},
    {"set_version_check", (PyCFunction)Driver_set_version_check, METH_O,
     "Turn the driver's check of a graph's target against the device on or off."},
    {"target", (PyCFunction)Driver_target, METH_NOARGS,
     "The NPU target, e.g. \"X2_1204MP3\" (None if the driver cannot tell)."},
    {"partition_count", (PyCFunction)Driver_partition_count, METH_NOARGS, NULL},
    {"cluster_count", (PyCFunction)(void (*)(void))Driver_cluster_count,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"core_count", (PyCFunction)(void (*)(void))Driver_core_count, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"device_status", (PyCFunction)Driver_device_status, METH_NOARGS,
     "\"idle\", \"busy\" or \"exception\" (None if the driver cannot tell)."},
    {"info", (PyCFunction)Driver_info, METH_NOARGS,
     "A dict for health reports: versions, ABI, target, cores, device status, features."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Driver_getset[] = {
    {"path", (getter)DriverObject_get_path, NULL, "the library path as given", NULL},
    {"real_path", (getter)DriverObject_get_real_path, NULL, "the library file really loaded",
     NULL},
    {"abi", (getter)Driver_get_abi, NULL, "the UMD release whose ABI is used, e.g. \"6.1\"",
     NULL},
    {"abi_source", (getter)DriverObject_get_abi_source, NULL,
     "\"argument\", \"file name\" or \"assumed\"", NULL},
    {"version", (getter)DriverObject_get_version, NULL, "the UMD version, or None", NULL},
    {"kmd_version", (getter)DriverObject_get_kmd_version, NULL, "the KMD version, or None",
     NULL},
    {"features", (getter)DriverObject_get_features, NULL,
     "the optional driver functions present", NULL},
    {"closed", (getter)Driver_get_closed, NULL, NULL, NULL},
    {"poisoned", (getter)Driver_get_poisoned, NULL,
     "True after a job timed out or was abandoned: exit the process", NULL},
    {"poison_reason", (getter)DriverObject_get_poison_reason, NULL, NULL, NULL},
    {"poll_any_thread", (getter)Driver_get_poll_any_thread, NULL,
     "whether Job.wait() may run on another thread than Job.flush()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DriverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "compassd._aipu.Driver",
    .tp_basicsize = sizeof(DriverObject),
    .tp_dealloc = (destructor)Driver_dealloc,
    .tp_repr = (reprfunc)Driver_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Driver(path=None, *, abi=None, poll_any_thread=True)\n\n"
              "Load libaipudrv.so (path, else $COMPASS_AIPU_DRIVER, else the loader's search "
              "path)\nand initialise a driver context.",
    .tp_methods = Driver_methods,
    .tp_getset = Driver_getset,
    .tp_new = Driver_new,
};

/* ------------------------------------------------------------------------------------------ */
/* Graph                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static aipu_status_t graph_release(GraphObject *g, int release_gil);

static PyObject *graph_new(DriverObject *d, uint64_t id, PyObject *path)
{
    GraphObject *g = PyObject_New(GraphObject, &GraphType);
    if (g == NULL) {
        aipu_status_t ignored;
        UNLOCKED_CALL(d, ignored, d->api.unload_graph(d->ctx, id));
        (void)ignored;
        return NULL;
    }
    g->driver = (DriverObject *)Py_NewRef(d);
    g->id = id;
    g->path = Py_NewRef(path);
    g->inputs = NULL;
    g->outputs = NULL;
    g->closed = 0;
    g->active = 0;
    g->scheduled = 0;
    g->inputs = query_descs(d, id, TENSOR_INPUT);
    if (g->inputs != NULL)
        g->outputs = query_descs(d, id, TENSOR_OUTPUT);
    if (g->outputs == NULL) {
        Py_DECREF(g); /* unloads it */
        return NULL;
    }
    return (PyObject *)g;
}

static aipu_status_t graph_release(GraphObject *g, int release_gil)
{
    DriverObject *d = g->driver;
    aipu_status_t st = ST_SUCCESS;

    if (g->closed)
        return ST_SUCCESS;
    g->closed = 1;
    if (d->closed || d->ctx == NULL)
        return ST_SUCCESS; /* deinit unloaded it */
    if (g->scheduled > 0)
        poison(d, PyUnicode_FromString("a graph was closed while one of its jobs was running"));
    if (d->poison_reason != NULL)
        return ST_SUCCESS;
    if (release_gil) {
        UNLOCKED_CALL(d, st, d->api.unload_graph(d->ctx, g->id));
    } else {
        st = d->api.unload_graph(d->ctx, g->id);
    }
    return st;
}

static void Graph_dealloc(GraphObject *g)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    graph_release(g, 0);
    PyErr_Restore(et, ev, tb);
    Py_XDECREF(g->inputs);
    Py_XDECREF(g->outputs);
    Py_XDECREF(g->path);
    Py_XDECREF(g->driver);
    PyObject_Free(g);
}

static PyObject *Graph_close(GraphObject *g, PyObject *Py_UNUSED(ignored))
{
    aipu_status_t st;
    char id[24];
    if (g->closed)
        Py_RETURN_NONE;
    format_id(id, sizeof id, g->id);
    if (g->active > 0)
        return PyErr_Format(PyExc_RuntimeError,
                            "cannot close graph %s: a call on it or its jobs is in progress in "
                            "another thread",
                            id);
    st = graph_release(g, 1);
    if (st != ST_SUCCESS)
        return raise_driver_error(g->driver, NULL, st, "aipu_unload_graph", 0,
                                  "cannot unload graph %s", id);
    Py_RETURN_NONE;
}

static PyObject *Graph_exit(GraphObject *g, PyObject *Py_UNUSED(args))
{
    PyObject *r = Graph_close(g, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *job_new(GraphObject *g);

static PyObject *Graph_create_job(GraphObject *g, PyObject *Py_UNUSED(ignored))
{
    return job_new(g);
}

static PyObject *Graph_tensors(GraphObject *g, PyObject *arg)
{
    unsigned long type = PyLong_AsUnsignedLong(arg);
    if (type == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (type > UINT32_MAX)
        return PyErr_Format(PyExc_OverflowError, "tensor type %lu is out of range", type);
    if (graph_check_usable(g) < 0)
        return NULL;
    return query_descs(g->driver, g->id, (uint32_t)type);
}

static PyObject *Graph_get_build_version(GraphObject *g, void *Py_UNUSED(c))
{
    DriverObject *d = g->driver;
    unsigned char arg[16]; /* u64 graph_id in, u32 aipubin_buildversion out at offset 8 */
    uint32_t version;
    aipu_status_t st;
    char id[24];

    if (graph_check_usable(g) < 0)
        return NULL;
    if (!d->abi_known || d->api.ioctl == NULL || d->abi->ioctl_get_buildversion == 0)
        Py_RETURN_NONE;
    memset(arg, 0, sizeof arg);
    memcpy(arg, &g->id, sizeof g->id);
    UNLOCKED_CALL(d, st, d->api.ioctl(d->ctx, d->abi->ioctl_get_buildversion, arg));
    if (st != ST_SUCCESS) {
        format_id(id, sizeof id, g->id);
        return raise_driver_error(d, NULL, st, "aipu_ioctl", 0,
                                  "cannot read the build version of graph %s", id);
    }
    memcpy(&version, arg + 8, sizeof version);
    return PyLong_FromUnsignedLong(version);
}

static PyObject *job_run(JobObject *j, PyObject *inputs, PyObject *outputs, int timeout_ms);
static aipu_status_t job_release(JobObject *j, int release_gil);

static PyObject *Graph_run(GraphObject *g, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inputs", "outputs", "timeout_ms", NULL};
    PyObject *inputs, *outputs, *job, *result;
    int timeout_ms = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|i:run", kwlist, &inputs, &outputs,
                                     &timeout_ms))
        return NULL;
    job = job_new(g);
    if (job == NULL)
        return NULL;
    result = job_run((JobObject *)job, inputs, outputs, timeout_ms);
    if (result != NULL) {
        aipu_status_t st = job_release((JobObject *)job, 1);
        if (st != ST_SUCCESS) {
            char id[24];
            format_id(id, sizeof id, ((JobObject *)job)->id);
            Py_CLEAR(result);
            raise_driver_error(g->driver, NULL, st, "aipu_clean_job", 0, "cannot clean job %s",
                               id);
        }
    }
    Py_DECREF(job); /* cleans it if the run failed (unless it timed out) */
    return result;
}

static PyObject *Graph_repr(GraphObject *g)
{
    char id[24];
    format_id(id, sizeof id, g->id);
    return PyUnicode_FromFormat("<compassd._aipu.Graph %s %R: %zd inputs, %zd outputs%s>", id,
                                g->path, g->inputs ? PyTuple_GET_SIZE(g->inputs) : 0,
                                g->outputs ? PyTuple_GET_SIZE(g->outputs) : 0,
                                g->closed ? ", closed" : "");
}

OBJ_GETTER(GraphObject, driver, (PyObject *)self->driver)
OBJ_GETTER(GraphObject, path, self->path)
OBJ_GETTER(GraphObject, inputs, self->inputs)
OBJ_GETTER(GraphObject, outputs, self->outputs)

static PyObject *Graph_get_id(GraphObject *g, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(g->id);
}

static PyObject *Graph_get_closed(GraphObject *g, void *Py_UNUSED(c))
{
    return PyBool_FromLong(g->closed);
}

static PyMethodDef Graph_methods[] = {
    {"close", (PyCFunction)Graph_close, METH_NOARGS, "Unload the graph (and so its jobs)."},
    {"__enter__", self_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Graph_exit, METH_VARARGS, NULL},
    {"create_job", (PyCFunction)Graph_create_job, METH_NOARGS, "create_job() -> Job"},
    {"run", (PyCFunction)(void (*)(void))Graph_run, METH_VARARGS | METH_KEYWORDS,
     "run(inputs, outputs, timeout_ms=-1): create a job, run it once, clean it."},
    {"tensors", (PyCFunction)Graph_tensors, METH_O,
     "tensors(tensor_type) -> tuple of TensorDesc of any tensor type"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Graph_getset[] = {
    {"id", (getter)Graph_get_id, NULL, "the driver's graph ID", NULL},
    {"driver", (getter)GraphObject_get_driver, NULL, NULL, NULL},
    {"path", (getter)GraphObject_get_path, NULL, "the file loaded, or None", NULL},
    {"inputs", (getter)GraphObject_get_inputs, NULL, "tuple of input TensorDesc", NULL},
    {"outputs", (getter)GraphObject_get_outputs, NULL, "tuple of output TensorDesc", NULL},
    {"closed", (getter)Graph_get_closed, NULL, NULL, NULL},
    {"build_version", (getter)Graph_get_build_version, NULL,
     "the build tool version in the graph, or None where the driver release has no known "
     "ioctl for it",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GraphType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "compassd._aipu.Graph",
    .tp_basicsize = sizeof(GraphObject),
    .tp_dealloc = (destructor)Graph_dealloc,
    .tp_repr = (reprfunc)Graph_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A loaded graph; made by Driver.load_graph().",
    .tp_methods = Graph_methods,
    .tp_getset = Graph_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* Job                                                                                         */
/* ------------------------------------------------------------------------------------------ */

static PyObject *job_new(GraphObject *g)
{
    DriverObject *d = g->driver;
    unsigned char cfg[CREATE_CFG_SIZE];
    uint64_t id = 0;
    aipu_status_t st;
    JobObject *j;
    char gid[24];

    if (graph_check_usable(g) < 0)
        return NULL;
    memset(cfg, 0, sizeof cfg); /* all zeros: the defaults */
    g->active++;
    UNLOCKED_CALL(d, st, d->api.create_job(d->ctx, g->id, &id, cfg));
    g->active--;
    if (st != ST_SUCCESS) {
        /* On v3x a failed create can leave its job registered: clean any ID it returned. */
        if (id != 0) {
            aipu_status_t ignored;
            UNLOCKED_CALL(d, ignored, d->api.clean_job(d->ctx, id));
            (void)ignored;
        }
        format_id(gid, sizeof gid, g->id);
        return raise_driver_error(d, NULL, st, "aipu_create_job", 0,
                                  "cannot create a job for graph %s", gid);
    }
    j = PyObject_New(JobObject, &JobType);
    if (j == NULL) {
        UNLOCKED_CALL(d, st, d->api.clean_job(d->ctx, id));
        return NULL;
    }
    j->graph = (GraphObject *)Py_NewRef(g);
    j->id = id;
    j->state = JOB_IDLE;
    j->busy = 0;
    j->flush_thread = 0;
    j->dump_strings = NULL;
    return (PyObject *)j;
}

static void job_leave_scheduled(JobObject *j, int new_state)
{
    j->state = new_state;
    j->graph->scheduled--;
    j->graph->driver->scheduled--;
}

/* Cleans the job, except when that could free memory the NPU still uses. */
static aipu_status_t job_release(JobObject *j, int release_gil)
{
    GraphObject *g = j->graph;
    DriverObject *d = g->driver;
    aipu_status_t st = ST_SUCCESS;
    int state = j->state;
    char id[24];

    if (state == JOB_CLOSED)
        return ST_SUCCESS;
    if (state == JOB_SCHEDULED) {
        job_leave_scheduled(j, JOB_LOST);
        format_id(id, sizeof id, j->id);
        poison(d, PyUnicode_FromFormat("job %s was closed while still running", id));
    }
    j->state = JOB_CLOSED;
    if (state == JOB_SCHEDULED || state == JOB_LOST || g->closed || d->closed ||
        d->ctx == NULL || d->poison_reason != NULL)
        return ST_SUCCESS;
    if (release_gil) {
        g->active++;
        UNLOCKED_CALL(d, st, d->api.clean_job(d->ctx, j->id));
        g->active--;
    } else {
        st = d->api.clean_job(d->ctx, j->id);
    }
    return st;
}

static void Job_dealloc(JobObject *j)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    job_release(j, 0);
    PyErr_Restore(et, ev, tb);
    Py_XDECREF(j->dump_strings);
    Py_XDECREF(j->graph);
    PyObject_Free(j);
}

static PyObject *Job_close(JobObject *j, PyObject *Py_UNUSED(ignored))
{
    aipu_status_t st;
    char id[24];
    format_id(id, sizeof id, j->id);
    if (j->state == JOB_CLOSED)
        Py_RETURN_NONE;
    if (j->busy)
        return PyErr_Format(PyExc_RuntimeError,
                            "cannot close job %s: it is in use by another thread", id);
    st = job_release(j, 1);
    if (st != ST_SUCCESS)
        return raise_driver_error(j->graph->driver, NULL, st, "aipu_clean_job", 0,
                                  "cannot clean job %s", id);
    Py_RETURN_NONE;
}

static PyObject *Job_exit(JobObject *j, PyObject *Py_UNUSED(args))
{
    PyObject *r = Job_close(j, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* For operations that start the job or touch its tensors. */
static int job_check_not_running(JobObject *j)
{
    char id[24];
    if (job_check_usable(j) < 0)
        return -1;
    if (j->state == JOB_SCHEDULED) {
        format_id(id, sizeof id, j->id);
        PyErr_Format(PyExc_RuntimeError, "job %s is still running: wait() for it first", id);
        return -1;
    }
    return 0;
}

/* Raises for a status from a call that ends a run (finish or get_job_status). */
static PyObject *raise_job_error(JobObject *j, aipu_status_t st, const char *call,
                                 int timeout_ms)
{
    DriverObject *d = j->graph->driver;
    char id[24];
    format_id(id, sizeof id, j->id);
    if (st == ST_TIMEOUT)
        return raise_driver_error(
            d, JobTimeout, st, call, j->id,
            "job %s of graph %R did not finish within %d ms; it may still be running on the "
            "NPU, so it was not cleaned and this driver is now unusable: exit this process",
            id, j->graph->path, timeout_ms);
    if (st == ST_JOB_EXCEPTION || st >= ST_RUNTIME_BASE)
        return raise_driver_error(d, JobException, st, call, j->id,
                                  "job %s of graph %R ended with an exception on the NPU", id,
                                  j->graph->path);
    return raise_driver_error(d, NULL, st, call, j->id, "cannot run job %s of graph %R", id,
                              j->graph->path);
}

static PyObject *job_run(JobObject *j, PyObject *inputs, PyObject *outputs, int timeout_ms)
{
    GraphObject *g = j->graph;
    DriverObject *d = g->driver;
    buffers_t in, out;
    aipu_status_t st = ST_SUCCESS;
    const char *call = NULL;
    Py_ssize_t i, failed = -1;
    int finished = 0, previous = j->state;
    char id[24];

    if (job_check_not_running(j) < 0)
        return NULL;
    if (buffers_acquire(&in, inputs, g->inputs, 0, "input") < 0)
        return NULL;
    if (buffers_acquire(&out, outputs, g->outputs, 1, "output") < 0) {
        buffers_release(&in);
        return NULL;
    }
    /* Counted as scheduled while finish_job runs: closing the graph or driver from another
     * thread is refused anyway (active > 0), and a timeout keeps it that way. */
    job_begin(j);
    j->state = JOB_SCHEDULED;
    g->scheduled++;
    d->scheduled++;
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < in.n; i++) {
        st = d->api.load_tensor(d->ctx, j->id, (uint32_t)i, in.views[i].buf);
        if (st != ST_SUCCESS) {
            call = "aipu_load_tensor";
            failed = i;
            break;
        }
    }
    if (st == ST_SUCCESS) {
        st = d->api.finish_job(d->ctx, j->id, timeout_ms);
        finished = 1;
        call = "aipu_finish_job";
    }
    if (st == ST_SUCCESS) {
        for (i = 0; i < out.n; i++) {
            st = d->api.get_tensor(d->ctx, j->id, TENSOR_OUTPUT, (uint32_t)i, out.views[i].buf);
            if (st != ST_SUCCESS) {
                call = "aipu_get_tensor";
                failed = i;
                break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    job_end(j);
    buffers_release(&in);
    buffers_release(&out);

    if (st == ST_SUCCESS) {
        job_leave_scheduled(j, JOB_DONE);
        Py_RETURN_NONE;
    }
    format_id(id, sizeof id, j->id);
    if (finished && st == ST_TIMEOUT) {
        job_leave_scheduled(j, JOB_LOST);
        poison(d, PyUnicode_FromFormat("job %s of graph %R timed out after %d ms", id, g->path,
                                       timeout_ms));
        return raise_job_error(j, st, call, timeout_ms);
    }
    if (finished && (st == ST_JOB_EXCEPTION || st >= ST_RUNTIME_BASE)) {
        job_leave_scheduled(j, JOB_EXCEPTION);
        return raise_job_error(j, st, call, timeout_ms);
    }
    /* It ended and reading an output failed, or it never started (a load or the dispatch
     * failed) and keeps its state as the driver does. */
    job_leave_scheduled(j, call && strcmp(call, "aipu_get_tensor") == 0 ? JOB_DONE : previous);
    if (failed >= 0)
        return raise_driver_error(d, NULL, st, call, j->id, "job %s: %s tensor %zd", id,
                                  strcmp(call, "aipu_load_tensor") == 0 ? "cannot load input"
                                                                        : "cannot read output",
                                  failed);
    return raise_job_error(j, st, call, timeout_ms);
}

static PyObject *Job_run(JobObject *j, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inputs", "outputs", "timeout_ms", NULL};
    PyObject *inputs, *outputs;
    int timeout_ms = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|i:run", kwlist, &inputs, &outputs,
                                     &timeout_ms))
        return NULL;
    return job_run(j, inputs, outputs, timeout_ms);
}

static PyObject *Job_load_inputs(JobObject *j, PyObject *inputs)
{
    DriverObject *d = j->graph->driver;
    buffers_t in;
    aipu_status_t st = ST_SUCCESS;
    Py_ssize_t i;
    char id[24];

    if (job_check_not_running(j) < 0 ||
        buffers_acquire(&in, inputs, j->graph->inputs, 0, "input") < 0)
        return NULL;
    job_begin(j);
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < in.n; i++)
        if ((st = d->api.load_tensor(d->ctx, j->id, (uint32_t)i, in.views[i].buf)) != ST_SUCCESS)
            break;
    Py_END_ALLOW_THREADS
    job_end(j);
    buffers_release(&in);
    if (st != ST_SUCCESS) {
        format_id(id, sizeof id, j->id);
        return raise_driver_error(d, NULL, st, "aipu_load_tensor", j->id,
                                  "job %s: cannot load input tensor %zd", id, i);
    }
    Py_RETURN_NONE;
}

static PyObject *Job_flush(JobObject *j, PyObject *Py_UNUSED(ignored))
{
    DriverObject *d = j->graph->driver;
    aipu_status_t st;
    char id[24];

    if (job_check_not_running(j) < 0)
        return NULL;
    job_begin(j);
    Py_BEGIN_ALLOW_THREADS
    st = d->api.flush_job(d->ctx, j->id, NULL);
    Py_END_ALLOW_THREADS
    job_end(j);
    if (st != ST_SUCCESS) {
        format_id(id, sizeof id, j->id);
        return raise_driver_error(d, NULL, st, "aipu_flush_job", j->id, "cannot start job %s",
                                  id);
    }
    j->state = JOB_SCHEDULED;
    j->flush_thread = PyThread_get_thread_ident();
    j->graph->scheduled++;
    d->scheduled++;
    Py_RETURN_NONE;
}

static PyObject *Job_wait(JobObject *j, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout_ms", NULL};
    DriverObject *d = j->graph->driver;
    int timeout_ms = -1;
    uint32_t status = JOB_STATUS_NO_STATUS;
    aipu_status_t st;
    char id[24];

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:wait", kwlist, &timeout_ms))
        return NULL;
    if (job_check_usable(j) < 0)
        return NULL;
    format_id(id, sizeof id, j->id);
    if (j->state == JOB_DONE)
        Py_RETURN_TRUE;
    if (j->state != JOB_SCHEDULED)
        return PyErr_Format(PyExc_RuntimeError, "job %s is not running (%s): flush() it first",
                            id, JOB_STATE_NAMES[j->state]);
    if (j->flush_thread != PyThread_get_thread_ident() && !d->poll_any_thread)
        return PyErr_Format(PyExc_RuntimeError,
                            "job %s was flushed in another thread, and this driver reports a "
                            "job's end only to that thread (aipu_config_global with "
                            "poll_in_commit_thread=false is unavailable): wait() in the "
                            "thread that called flush()",
                            id);
    job_begin(j);
    Py_BEGIN_ALLOW_THREADS
    st = d->api.get_job_status(d->ctx, j->id, &status, timeout_ms);
    Py_END_ALLOW_THREADS
    job_end(j);
    if (st == ST_TIMEOUT) /* polling timed out: "not yet" */
        Py_RETURN_FALSE;
    if (st >= ST_RUNTIME_BASE) {
        job_leave_scheduled(j, JOB_EXCEPTION);
        return raise_job_error(j, st, "aipu_get_job_status", timeout_ms);
    }
    if (st != ST_SUCCESS)
        return raise_driver_error(d, NULL, st, "aipu_get_job_status", j->id,
                                  "cannot poll job %s", id);
    switch (status) {
    case JOB_STATUS_DONE:
        job_leave_scheduled(j, JOB_DONE);
        Py_RETURN_TRUE;
    case JOB_STATUS_EXCEPTION:
    case JOB_STATUS_COREDUMP:
        job_leave_scheduled(j, JOB_EXCEPTION);
        return raise_driver_error(d, JobException, ST_JOB_EXCEPTION, "aipu_get_job_status",
                                  j->id, "job %s of graph %R ended with %s on the NPU", id,
                                  j->graph->path,
                                  status == JOB_STATUS_COREDUMP ? "a coredump" : "an exception");
    default:
        Py_RETURN_FALSE;
    }
}

/* Copies tensors of one type out of the job into caller buffers. */
static PyObject *job_get(JobObject *j, uint32_t type, PyObject *descs, PyObject *outputs,
                         Py_ssize_t first_index, const char *kind)
{
    DriverObject *d = j->graph->driver;
    buffers_t out;
    aipu_status_t st = ST_SUCCESS;
    Py_ssize_t i;
    char id[24];

    if (buffers_acquire(&out, outputs, descs, 1, kind) < 0)
        return NULL;
    job_begin(j);
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < out.n; i++)
        if ((st = d->api.get_tensor(d->ctx, j->id, type, (uint32_t)(first_index + i),
                                    out.views[i].buf)) != ST_SUCCESS)
            break;
    Py_END_ALLOW_THREADS
    job_end(j);
    buffers_release(&out);
    if (st != ST_SUCCESS) {
        format_id(id, sizeof id, j->id);
        return raise_driver_error(d, NULL, st, "aipu_get_tensor", j->id,
                                  "job %s: cannot read %s tensor %zd", id, kind, first_index + i);
    }
    Py_RETURN_NONE;
}

static PyObject *Job_get_outputs(JobObject *j, PyObject *outputs)
{
    if (job_check_not_running(j) < 0)
        return NULL;
    return job_get(j, TENSOR_OUTPUT, j->graph->outputs, outputs, 0, "output");
}

static PyObject *Job_get_tensor(JobObject *j, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tensor_type", "index", "out", NULL};
    unsigned int type, index;
    PyObject *out, *all, *one = NULL, *seq = NULL, *result = NULL;
    char id[24];

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IIO:get_tensor", kwlist, &type, &index, &out))
        return NULL;
    if (job_check_not_running(j) < 0)
        return NULL;
    all = type == TENSOR_OUTPUT ? Py_NewRef(j->graph->outputs)
                                : query_descs(j->graph->driver, j->id, type);
    if (all == NULL)
        return NULL;
    if ((Py_ssize_t)index >= PyTuple_GET_SIZE(all)) {
        format_id(id, sizeof id, j->id);
        PyErr_Format(PyExc_IndexError, "job %s has %zd tensors of type %u, no index %u", id,
                     PyTuple_GET_SIZE(all), type, index);
        goto out;
    }
    one = PyTuple_Pack(1, PyTuple_GET_ITEM(all, index));
    seq = PyTuple_Pack(1, out);
    if (one != NULL && seq != NULL)
        result = job_get(j, type, one, seq, index, "requested");
out:
    Py_XDECREF(one);
    Py_XDECREF(seq);
    Py_DECREF(all);
    return result;
}

static PyObject *Job_configure_dump(JobObject *j, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"types", "dump_dir", "prefix", "output_prefix", "misc_prefix",
                             NULL};
    DriverObject *d = j->graph->driver;
    unsigned long long types;
    PyObject *strs[4] = {NULL, Py_None, Py_None, Py_None};
    PyObject *kept;
    const char *ptrs[4] = {NULL, NULL, NULL, NULL}; /* aipu_job_config_dump_t: 4 pointers */
    aipu_status_t st;
    int i;
    char id[24];

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KO|OOO:configure_dump", kwlist, &types,
                                     &strs[0], &strs[1], &strs[2], &strs[3]))
        return NULL;
    if (job_check_not_running(j) < 0)
        return NULL;
    if (d->api.config_job == NULL)
        return PyErr_Format(PyExc_NotImplementedError,
                            "the NPU driver %R does not export aipu_config_job", d->path);
    kept = PyTuple_New(4);
    if (kept == NULL)
        return NULL;
    for (i = 0; i < 4; i++) {
        PyObject *b = NULL;
        if (strs[i] == Py_None) {
            PyTuple_SET_ITEM(kept, i, Py_NewRef(Py_None));
            continue;
        }
        if (!PyUnicode_FSConverter(strs[i], &b)) {
            Py_DECREF(kept);
            return NULL;
        }
        PyTuple_SET_ITEM(kept, i, b);
        ptrs[i] = PyBytes_AS_STRING(b);
    }
    job_begin(j);
    Py_BEGIN_ALLOW_THREADS
    st = d->api.config_job(d->ctx, j->id, (uint64_t)types, (void *)ptrs);
    Py_END_ALLOW_THREADS
    job_end(j);
    if (st != ST_SUCCESS) {
        char types_text[24];
        Py_DECREF(kept);
        format_id(id, sizeof id, j->id);
        format_id(types_text, sizeof types_text, types);
        return raise_driver_error(d, NULL, st, "aipu_config_job", j->id,
                                  "cannot configure dumps (types %s) for job %s", types_text, id);
    }
    /* The driver may keep the pointers: the strings live as long as the job. */
    Py_XSETREF(j->dump_strings, kept);
    Py_RETURN_NONE;
}

static PyObject *Job_repr(JobObject *j)
{
    char id[24];
    format_id(id, sizeof id, j->id);
    return PyUnicode_FromFormat("<compassd._aipu.Job %s %s>", id, JOB_STATE_NAMES[j->state]);
}

OBJ_GETTER(JobObject, graph, (PyObject *)self->graph)

static PyObject *Job_get_id(JobObject *j, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(j->id);
}

static PyObject *Job_get_state(JobObject *j, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(JOB_STATE_NAMES[j->state]);
}

static PyObject *Job_get_closed(JobObject *j, void *Py_UNUSED(c))
{
    return PyBool_FromLong(j->state == JOB_CLOSED);
}

static PyMethodDef Job_methods[] = {
    {"close", (PyCFunction)Job_close, METH_NOARGS,
     "Clean the job; a running or timed-out job is not cleaned (the driver is poisoned)."},
    {"__enter__", self_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Job_exit, METH_VARARGS, NULL},
    {"run", (PyCFunction)(void (*)(void))Job_run, METH_VARARGS | METH_KEYWORDS,
     "run(inputs, outputs, timeout_ms=-1): load inputs, run to the end, read outputs.\n"
     "timeout_ms <= 0 waits forever; a timeout raises JobTimeout and poisons the driver."},
    {"load_inputs", (PyCFunction)Job_load_inputs, METH_O, "load_inputs(inputs)"},
    {"flush", (PyCFunction)Job_flush, METH_NOARGS, "Start the job without waiting."},
    {"wait", (PyCFunction)(void (*)(void))Job_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout_ms=-1) -> bool: True when done, False if still running at the deadline\n"
     "(0 polls, -1 blocks); raises JobException if the job failed."},
    {"get_outputs", (PyCFunction)Job_get_outputs, METH_O, "get_outputs(outputs)"},
    {"get_tensor", (PyCFunction)(void (*)(void))Job_get_tensor, METH_VARARGS | METH_KEYWORDS,
     "get_tensor(tensor_type, index, out): read one tensor of any type (e.g. the profiler's)."},
    {"configure_dump", (PyCFunction)(void (*)(void))Job_configure_dump,
     METH_VARARGS | METH_KEYWORDS,
     "configure_dump(types, dump_dir, prefix=None, output_prefix=None, misc_prefix=None)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Job_getset[] = {
    {"id", (getter)Job_get_id, NULL, "the driver's job ID", NULL},
    {"graph", (getter)JobObject_get_graph, NULL, NULL, NULL},
    {"state", (getter)Job_get_state, NULL,
     "\"idle\", \"scheduled\", \"done\", \"exception\", \"timed_out\" or \"closed\"", NULL},
    {"closed", (getter)Job_get_closed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject JobType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "compassd._aipu.Job",
    .tp_basicsize = sizeof(JobObject),
    .tp_dealloc = (destructor)Job_dealloc,
    .tp_repr = (reprfunc)Job_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A job of a graph; made by Graph.create_job(). One thread at a time.",
    .tp_methods = Job_methods,
    .tp_getset = Job_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* Module                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static PyObject *mod_status_name(PyObject *Py_UNUSED(m), PyObject *arg)
{
    char buf[40];
    unsigned long code = PyLong_AsUnsignedLong(arg);
    if (code == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (code > UINT32_MAX)
        return PyErr_Format(PyExc_OverflowError, "status %lu is out of range", code);
    return PyUnicode_FromString(status_name((uint32_t)code, buf, sizeof buf));
}

static PyObject *mod_status_description(PyObject *Py_UNUSED(m), PyObject *arg)
{
    unsigned long code = PyLong_AsUnsignedLong(arg);
    if (code == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(status_text(code > UINT32_MAX ? UINT32_MAX : (uint32_t)code));
}

static PyObject *mod_dtype_for(PyObject *Py_UNUSED(m), PyObject *arg)
{
    unsigned long code = PyLong_AsUnsignedLong(arg);
    if (code == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(dtype_of(code > UINT32_MAX ? UINT32_MAX : (uint32_t)code));
}

static PyObject *mod_default_driver_path(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    const char *env = getenv("COMPASS_AIPU_DRIVER");
    return PyUnicode_DecodeFSDefault(env != NULL && env[0] != '\0' ? env : "libaipudrv.so");
}

static PyMethodDef module_methods[] = {
    {"status_name", mod_status_name, METH_O,
     "status_name(code) -> \"AIPU_STATUS_...\" (or \"AIPU_STATUS_0x...\" if unknown)"},
    {"status_description", mod_status_description, METH_O,
     "status_description(code) -> this binding's own description of a status"},
    {"dtype_for", mod_dtype_for, METH_O, "dtype_for(data_type) -> numpy dtype name"},
    {"default_driver_path", mod_default_driver_path, METH_NOARGS,
     "$COMPASS_AIPU_DRIVER if set, else \"libaipudrv.so\" (found by the dynamic loader)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "compassd._aipu",
    .m_doc = "Binding of the Zhouyi NPU user-mode driver (libaipudrv.so), loaded at run time.\n"
             "See docs/aipu-binding.md.",
    .m_size = -1,
    .m_methods = module_methods,
};

static PyObject *new_exception(PyObject *module, const char *name, PyObject *base,
                               const char *doc)
{
    char full[64];
    PyObject *exc;
    snprintf(full, sizeof full, "compassd._aipu.%s", name);
    exc = PyErr_NewExceptionWithDoc(full, doc, base, NULL);
    if (exc == NULL || PyModule_AddObjectRef(module, name, exc) < 0) {
        Py_XDECREF(exc);
        return NULL;
    }
    return exc;
}

static int add_int(PyObject *m, const char *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    int r;
    if (v == NULL)
        return -1;
    r = PyModule_AddObjectRef(m, name, v);
    Py_DECREF(v);
    return r;
}

static int add_tables(PyObject *m)
{
    PyObject *names = PyDict_New(), *types = PyDict_New(), *abis = PyTuple_New(N_ABIS);
    size_t i;
    int r = -1;

    if (names == NULL || types == NULL || abis == NULL)
        goto out;
    for (i = 0; i < N_STATUSES; i++) {
        PyObject *k = PyLong_FromUnsignedLong(STATUSES[i].code);
        PyObject *v = PyUnicode_FromString(STATUSES[i].name);
        int bad = k == NULL || v == NULL || PyDict_SetItem(names, k, v) < 0 ||
                  add_int(m, STATUSES[i].name + 5 /* drop "AIPU_" */, STATUSES[i].code) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad)
            goto out;
    }
    for (i = 0; i < N_DATA_TYPES; i++) {
        PyObject *k = PyLong_FromUnsignedLong(DATA_TYPE_TABLE[i].code);
        PyObject *v = Py_BuildValue("(ss)", DATA_TYPE_TABLE[i].name, DATA_TYPE_TABLE[i].dtype);
        int bad = k == NULL || v == NULL || PyDict_SetItem(types, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad)
            goto out;
    }
    for (i = 0; i < N_ABIS; i++) {
        PyObject *v = PyUnicode_FromString(ABIS[i].name);
        if (v == NULL)
            goto out;
        PyTuple_SET_ITEM(abis, i, v);
    }
    if (PyModule_AddObjectRef(m, "STATUS_NAMES", names) < 0 ||
        PyModule_AddObjectRef(m, "DATA_TYPES", types) < 0 ||
        PyModule_AddObjectRef(m, "SUPPORTED_ABIS", abis) < 0)
        goto out;
    r = 0;
out:
    Py_XDECREF(names);
    Py_XDECREF(types);
    Py_XDECREF(abis);
    return r;
}

PyMODINIT_FUNC PyInit__aipu(void)
{
    PyObject *m;

    if (PyType_Ready(&DriverType) < 0 || PyType_Ready(&GraphType) < 0 ||
        PyType_Ready(&JobType) < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    TensorDescType = PyStructSequence_NewType(&TENSOR_DESC_DESC);
    if (TensorDescType == NULL)
        goto fail;

    if ((AipuError = new_exception(m, "AipuError", PyExc_Exception,
                                   "Base class of this module's errors.")) == NULL ||
        (DriverLoadError = new_exception(
             m, "DriverLoadError", AipuError,
             "libaipudrv.so cannot be loaded or lacks a required symbol (.path, .symbol).")) ==
            NULL ||
        (DriverError = new_exception(
             m, "DriverError", AipuError,
             "A driver call failed (.status, .status_name, .driver_message, .call, "
             ".job_id).")) == NULL ||
        (NoDeviceError = new_exception(m, "NoDeviceError", DriverError,
                                       "aipu_init_context could not open /dev/aipu.")) == NULL ||
        (JobException = new_exception(m, "JobException", DriverError,
                                      "A job ended with an exception on the NPU.")) == NULL ||
        (JobTimeout = new_exception(
             m, "JobTimeout", DriverError,
             "A job did not finish in time. It may still run: the driver is poisoned and the "
             "process must exit.")) == NULL ||
        (DriverPoisoned = new_exception(
             m, "DriverPoisoned", AipuError,
             "The driver was used after a job timed out or was abandoned.")) == NULL)
        goto fail;
    {
        PyObject *bases = PyTuple_Pack(2, AipuError, PyExc_ValueError);
        if (bases == NULL)
            goto fail;
        TensorSizeError = new_exception(
            m, "TensorSizeError", bases,
            "A buffer's size differs from its tensor's (.kind, .index, .expected, .given).");
        Py_DECREF(bases);
        if (TensorSizeError == NULL)
            goto fail;
    }

    if (PyModule_AddObjectRef(m, "Driver", (PyObject *)&DriverType) < 0 ||
        PyModule_AddObjectRef(m, "Graph", (PyObject *)&GraphType) < 0 ||
        PyModule_AddObjectRef(m, "Job", (PyObject *)&JobType) < 0 ||
        PyModule_AddObjectRef(m, "TensorDesc", (PyObject *)TensorDescType) < 0 ||
        PyModule_AddStringConstant(m, "ENV_DRIVER_PATH", "COMPASS_AIPU_DRIVER") < 0 ||
        PyModule_AddStringConstant(m, "DEFAULT_LIBRARY", "libaipudrv.so") < 0 ||
        add_int(m, "TENSOR_INPUT", 0) < 0 || add_int(m, "TENSOR_OUTPUT", 1) < 0 ||
        add_int(m, "TENSOR_INTER_DUMP", 2) < 0 || add_int(m, "TENSOR_PRINTF", 3) < 0 ||
        add_int(m, "TENSOR_PROFILER", 4) < 0 || add_int(m, "TENSOR_LAYER_COUNTER", 5) < 0 ||
        add_int(m, "TENSOR_ERROR_CODE", 6) < 0 || add_int(m, "TENSOR_OUT_TENSOR_SHAPE", 7) < 0 ||
        add_int(m, "DUMP_TEXT", 0x1) < 0 || add_int(m, "DUMP_WEIGHT", 0x2) < 0 ||
        add_int(m, "DUMP_RODATA", 0x4) < 0 || add_int(m, "DUMP_DESCRIPTOR", 0x8) < 0 ||
        add_int(m, "DUMP_INPUT", 0x10) < 0 || add_int(m, "DUMP_OUTPUT", 0x20) < 0 ||
        add_int(m, "DUMP_REUSE", 0x40) < 0 || add_int(m, "DUMP_TCB_CHAIN", 0x80) < 0 ||
        add_int(m, "DUMP_EMULATION", 0x100) < 0 || add_int(m, "DUMP_PROFILE", 0x200) < 0 ||
        add_tables(m) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
