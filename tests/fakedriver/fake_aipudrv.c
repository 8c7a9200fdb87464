/*
 * fake_aipudrv.c: a stand-in for the Zhouyi NPU user-mode driver, libaipudrv.so.
 *
 * tests/fakedriver/build.py compiles this file into a shared library whose SONAME is
 * libaipudrv.so. It exports the C-linkage "standard API" with the UMD 6.1 struct layouts
 * (or an older release's, see FAKE_ABI) and behaves as docs/aipu-binding.md and the
 * driver reference (npu-driver-api.md, sections 1 and 9) describe, so that the binding
 * compassd._aipu can be tested on any Linux machine without an NPU.
 *
 * Compile-time switches (-D...):
 *   FAKE_ABI=601|600|511|510|509  the UMD release emulated (default 601, "6.1.0").
 *                                 Before 510 zero_point is a float; before 600 the
 *                                 config bits are the 5.x ones (HW = 0x800) and the
 *                                 GET_VERSION ioctl number is 269 (5.10, 5.11) or 270
 *                                 (5.9); 5.9 has no extra_weight_path in its load config.
 *   FAKE_OMIT_FINISH_JOB          do not export aipu_finish_job (a required symbol).
 *   FAKE_NO_OPTIONAL              export none of the optional symbols (config_global,
 *                                 config_job, topology, target, device status, ioctl).
 *   FAKE_PYTHON_API               also export PyInit_libaipudrv, as the pybind11
 *                                 "python_api" build of the real library does.
 *   FAKE_INSTANCE=n               no effect on the code: a different file, so a process can
 *                                 hold a second copy of the fake's process-wide state.
 *
 * Run-time switches (environment variables):
 *   FAKE_AIPU_NO_DEVICE=1         aipu_init_context fails with OPEN_DEV_FAIL (no /dev/aipu).
 *   FAKE_AIPU_DEV_ABNORMAL=1      aipu_init_context fails with DEV_ABNORMAL.
 *   FAKE_AIPU_TARGET=X2_1204MP3   the device's target (default); the "MPn" suffix gives
 *                                 the core count (1 without it). Graphs built for another
 *                                 target fail with TARGET_NOT_FOUND unless the version
 *                                 check is disabled.
 *   FAKE_AIPU_PARTITIONS=1        number of partitions (one cluster each).
 *   FAKE_AIPU_MAX_JOBS=N          aipu_create_job fails with BUF_ALLOC_FAIL while the
 *                                 context already holds N jobs ("buffers run out after N
 *                                 jobs"). As on v3x, the failed job stays registered and
 *                                 its ID is returned: the caller must clean it.
 *   FAKE_AIPU_DISPATCH_FAIL=1     aipu_flush_job/aipu_finish_job fail with JOB_DISPATCH_FAIL.
 *   FAKE_AIPU_THREAD_AFFINITY=0   turn off the emulation of thread-affine completion
 *                                 (on by default: a job flushed in thread A never shows as
 *                                 done to thread B unless aipu_config_global(HW) set
 *                                 poll_in_commit_thread=false).
 *   FAKE_AIPU_DEVICE_STATUS=idle|busy|exception   read by every aipu_get_device_status.
 *   UMD_LOG_LEVEL=2..6            as the real UMD: 6 silences the log, default WARN.
 *   The others are read once, by aipu_init_context.
 *
 * Graphs (see graphs.py): little ELF32 files, e_type 2, e_machine 0x29A, e_version 1, with
 * a .text section and a .note.aipu section holding ELF notes named
 *   "compilermsg"        u32 file version, u32 build version, u32 device word, u32 flags
 *                        (optional; without it there is no target check);
 *   "fakeio"             u32 count, then per tensor u32 type, u32 size, f32 scale,
 *                        i32 zero point, u32 data type (required);
 *   "fakebehav"          u32 behaviour, i32 argument, u32 delay in ms (optional, default
 *                        identity): 0 identity (output i = input i mod n, truncated or
 *                        zero-padded), 1 add the argument to every element of each output
 *                        (integer types wrap, f32/f64 add; other types raise a job
 *                        exception), 2 raise a job exception, 3 hang forever, 4 crash the
 *                        process with SIGSEGV (a NULL store in the job thread);
 *                        the delay comes first ("sleep" is identity with a delay);
 *   "fakegate"           a NUL-terminated path (optional): the job's thread waits until that
 *                        file exists before its delay and behaviour, so a test decides
 *                        exactly when a job finishes;
 *   "extra_weight_name"  NUL-separated file names that must exist in the load config's
 *                        extra_weight_path (no hash check).
 * "AIPU BIN" (v1/v2) files are refused with GVERSION_UNSUPPORTED: the fake is a v3x-only build.
 *
 * Jobs run in a detached thread per flush. With DUMP_OUTPUT configured through
 * aipu_config_job, a finished job writes output i to <dump_dir>/<output_prefix>output<i>.bin
 * (output_prefix defaults to ""); that file naming is the fake's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

#ifndef FAKE_ABI
#define FAKE_ABI 601
#endif

#if FAKE_ABI == 601
#define UMD_VERSION "6.1.0"
#elif FAKE_ABI == 600
#define UMD_VERSION "6.0.0"
#elif FAKE_ABI == 511
#define UMD_VERSION "5.11.0"
#elif FAKE_ABI == 510
#define UMD_VERSION "5.10.0"
#elif FAKE_ABI == 509
#define UMD_VERSION "5.9.0"
#else
#error "FAKE_ABI must be one of 601, 600, 511, 510, 509"
#endif

#if FAKE_ABI >= 600
#define CFG_SIMULATION 0x10000ULL
#define CFG_HW 0x20000ULL
#define CFG_DISABLE_VER 0x1000000ULL
#define CFG_ENABLE_VER 0x2000000ULL
#define CFG_DYNAMIC_PARAMS 0x400ULL
#else
#define CFG_SIMULATION 0x400ULL
#define CFG_HW 0x800ULL
#define CFG_DISABLE_VER 0x1000ULL
#define CFG_ENABLE_VER 0x2000ULL
#define CFG_DYNAMIC_PARAMS 0ULL /* did not exist */
#endif
#define CFG_DUMP_MASK 0x3FFULL
#define CFG_DUMP_OUTPUT 0x20ULL

#if FAKE_ABI == 601
#define IOCTL_GET_VERSION 273u
#define IOCTL_GET_BUILDVERSION 256u
#define IOCTL_UMD_MAX 281u
#elif FAKE_ABI == 600
#define IOCTL_GET_VERSION 272u
#define IOCTL_GET_BUILDVERSION 0u /* number not known for this release: not emulated */
#define IOCTL_UMD_MAX 280u
#elif FAKE_ABI >= 510
#define IOCTL_GET_VERSION 269u
#define IOCTL_GET_BUILDVERSION 0u
#define IOCTL_UMD_MAX 277u
#else
#define IOCTL_GET_VERSION 270u
#define IOCTL_GET_BUILDVERSION 0u
#define IOCTL_UMD_MAX 278u
#endif
#define IOCTL_ABORT_CMDPOOL (IOCTL_GET_VERSION + 1u)

/* ---- public enums and structs (values and layouts of the emulated release) ---- */

typedef enum {
    ST_SUCCESS = 0x0,
    ST_NULL_PTR = 0x1,
    ST_INVALID_CTX = 0x2,
    ST_OPEN_DEV_FAIL = 0x3,
    ST_DEV_ABNORMAL = 0x4,
    ST_INVALID_CONFIG = 0x6,
    ST_GVERSION_UNSUPPORTED = 0x8,
    ST_INVALID_GBIN = 0x9,
    ST_TARGET_NOT_FOUND = 0xA,
    ST_INVALID_GRAPH_ID = 0xB,
    ST_OPEN_FILE_FAIL = 0xC,
    ST_READ_FILE_FAIL = 0xE,
    ST_INVALID_JOB_ID = 0x10,
    ST_JOB_EXCEPTION = 0x11,
    ST_OP_NOT_SUPPORTED = 0x13,
    ST_INVALID_OP = 0x14,
    ST_INVALID_SIZE = 0x15,
    ST_BUF_ALLOC_FAIL = 0x16,
    ST_INVALID_TENSOR_ID = 0x1A,
    ST_INVALID_CLUSTER_ID = 0x1B,
    ST_INVALID_PARTITION_ID = 0x1C,
    ST_INVALID_TENSOR_TYPE = 0x1E,
    ST_INVALID_QOS = 0x21,
    ST_TIMEOUT = 0x23,
    ST_JOB_DISPATCH_FAIL = 0x37,
    ST_MAX = 0x38,
} aipu_status_t;

enum { TT_INPUT = 0, TT_OUTPUT = 1, TT_INTER_DUMP = 2, TT_PRINTF = 3, TT_PROFILER = 4,
       TT_LAYER_COUNTER = 5, TT_ERROR_CODE = 6, TT_OUT_TENSOR_SHAPE = 7 };

enum { DT_U8 = 2, DT_S8 = 3, DT_U16 = 4, DT_S16 = 5, DT_U32 = 6, DT_S32 = 7, DT_U64 = 8,
       DT_S64 = 9, DT_F32 = 0xB, DT_F64 = 0xC };

/* Public job status values, plus the internal "not finished" states of job_base.h. */
enum { JOB_NO_STATUS = 0, JOB_DONE = 1, JOB_EXCEPTION = 2, JOB_INIT = 3, JOB_SCHED = 4 };

enum { DEV_IDLE = 0, DEV_BUSY = 1, DEV_EXCEPTION = 2 };

typedef struct ctx_handle {
    uint32_t handle;
} aipu_ctx_handle_t;

typedef struct {
    uint32_t id;
    uint32_t size;
    float scale;
#if FAKE_ABI >= 510
    int32_t zero_point;
#else
    float zero_point;
#endif
    uint32_t data_type;
} aipu_tensor_desc_t;

typedef struct {
    const char *dump_dir;
    const char *prefix;
    const char *output_prefix;
    const char *misc_prefix;
} aipu_job_config_dump_t;

typedef int (*aipu_job_callback_t)(uint64_t job_id, int status);

/* ---- logging, as src/utils/log.h: printf to stdout, no flush ---- */

enum { LOG_ERR, LOG_WARN, LOG_ALERT, LOG_INFO, LOG_DEBUG, LOG_DEFAULT, LOG_CLOSE };
static volatile int umd_log_level = LOG_WARN;

#define LOG(level, fmt, ...)                                                                   \
    do {                                                                                       \
        if ((level) > umd_log_level)                                                           \
            break;                                                                             \
        if ((level) == LOG_ERR)                                                                \
            printf("[UMD ERROR] %s:%d:%s: " fmt "\n", __FILE__, __LINE__, __func__,           \
                   ##__VA_ARGS__);                                                             \
        else                                                                                   \
            printf("[UMD WARN] %s:%d:%s: " fmt "\n", __FILE__, __LINE__, __func__,            \
                   ##__VA_ARGS__);                                                             \
    } while (0)

/* ---- error strings: the real ones (status_string.cpp) where known ---- */

static const char *const status_strings[ST_MAX + 1] = {
    [0x00] = "AIPU UMD API executes successfully.",
    [0x01] = "AIPU UMD API input argument(s) contain NULL pointer.",
    [0x02] = "AIPU UMD runtime context is invalid. Please init first.",
    [0x03] = "AIPU device open operation failed. Please check kernel module insmod status or "
             "hardware status.",
    [0x04] = "AIPU device state is abnormal. Please check kernel module insmod status or "
             "hardware status.",
    [0x05] = "AIPU UMD runtime context de-initialization failed.",
    [0x06] = "AIPU UMD runtime configuration input(s) is/are invalid.",
    [0x07] = "The type of the binary loaded is unknown. It cannot be loaded or executed.",
    [0x08] = "The version of the loadable graph binary provided is not supported on UMD.",
    [0x09] = "Loadable graph binary is invalid which contains unrecognized or invalid items.",
    [0x0A] = "The specified target device is not found at runtime. Please double check the "
             "binary target.",
    [0x0B] = "Graph ID provided is an invalid one which has been unloaded or never existed.",
    [0x0C] = "UMD fails in opening the specified file.",
    [0x0D] = "UMD fails in maping the specified file.",
    [0x0E] = "UMD fails in reading the specified file.",
    [0x0F] = "UMD fails in writing the specified file.",
    [0x10] = "Job ID provided is an invalid one which has been cleaned or never existed.",
    [0x11] = "The flushed job encounters exception during execution.",
    [0x12] = "The flushed job execution timeout.",
    [0x13] = "This API call here is not supported on this platform.",
    [0x14] = "This API call here is invalid.",
    [0x15] = "Job size provided is an invalid one.",
    [0x16] = "UMD fails in allocating buffers.",
    [0x17] = "UMD fails in releasing buffers.",
    [0x18] = "The AIPU core ID application provides is invalid and cannot be found in system.",
    [0x19] = "UMD fails in reserving SRAM as the executable binary requested because there is "
             "no SoC SRAM or SRAM is busy.",
    [0x1A] = "The tensor ID application provides is invalid.",
    [0x1B] = "The AIPU cluster ID application provides is invalid and cannot be found in "
             "system.",
    [0x1C] = "The AIPU partition ID application provides is invalid.",
    [0x1D] = "UMD fails in parsing the printf buffer and print corresponding logs.",
    [0x1E] = "The specified tensor type is invalid for this operation.",
    [0x1F] = "GM is invalid.",
    [0x20] = "Segment MMU is invalid.",
    [0x21] = "The specified QoS level is invalid.",
    [0x22] = "The specified tensor count is invalid.",
    [0x23] = "Timeout on polling job's status",
    [0x24] = "There's no specific batch queue",
    /* 0x25 and 0x26 have no entry in 6.1: empty strings, as the real driver returns. */
    [0x25] = "",
    [0x26] = "",
    /* The wording of 0x27..0x37 is the fake's own (the 6.1 strings were not recorded). */
    [0x27] = "Failed to share the IO buffer through dma-buf.",
    [0x28] = "Failed to get the tensor shape.",
    [0x29] = "Failed to set the tensor shape.",
    [0x2A] = "", [0x2B] = "", [0x2C] = "", [0x2D] = "", [0x2E] = "", [0x2F] = "",
    [0x30] = "The input shapes of a dynamic shape graph are not configured.",
    [0x31] = "The output shape does not match.",
    [0x32] = "The tensor size is zero.",
    [0x33] = "Failed to allocate a grid ID.",
    [0x34] = "Failed to allocate a group ID.",
    [0x35] = "Not found in the hash table.",
    [0x36] = "The coredump is invalid.",
    [0x37] = "The job dispatch failed.",
    [0x38] = "Status Max value which should not be returned to application.",
};

static const char *status_string(uint32_t status)
{
    /* 0x200+ codes looked up statically index the table by MAX+k: an empty entry. */
    if (status <= ST_MAX && status_strings[status] != NULL)
        return status_strings[status];
    return "";
}

/* ---- state ---- */

typedef struct {
    uint32_t type;
    uint32_t size;
    float scale;
    int32_t zero_point;
    uint32_t data_type;
} fake_tensor_t;

enum { BEH_IDENTITY = 0, BEH_ADD = 1, BEH_EXCEPTION = 2, BEH_HANG = 3, BEH_CRASH = 4 };

typedef struct {
    uint32_t kind;
    int32_t arg;
    uint32_t delay_ms;
} fake_behaviour_t;

typedef struct fake_job {
    uint64_t id;
    int refs;     /* one for the graph's table, one per running thread or waiter */
    bool in_table;
    int state;    /* JOB_INIT, JOB_SCHED, JOB_DONE, JOB_EXCEPTION */
    pid_t flush_tid;
    uint32_t n_tensors;
    fake_tensor_t *tensors; /* a copy: the job outlives an unloaded graph while it runs */
    unsigned char **bufs;
    fake_behaviour_t behaviour;
    char *gate;   /* wait for this file to exist before running, or NULL */
    bool dump_outputs;
    char *dump_dir;
    char *output_prefix;
    struct fake_job *next;
} fake_job_t;

typedef struct fake_graph {
    uint64_t id;
    uint32_t n_tensors;
    fake_tensor_t *tensors;
    fake_behaviour_t behaviour;
    char *gate;
    uint32_t build_version;
    fake_job_t *jobs;
    struct fake_graph *next;
} fake_graph_t;

typedef struct fake_ctx {
    aipu_ctx_handle_t pub; /* first member: the handle given out points here */
    fake_graph_t *graphs;
    bool ver_check;
    long max_jobs; /* -1: unlimited */
    bool dispatch_fail;
    char target[32];
    uint32_t partitions;
    uint32_t cores;
    struct fake_ctx *next;
} fake_ctx_t;

/* One lock for everything, and one condition broadcast on every job state change. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static fake_ctx_t *g_contexts;
static uint32_t g_next_handle = 1;
/* Per process, as in the real driver (standard_api.h: "effective in one process"). */
static bool g_poll_in_commit_thread = true;
static bool g_thread_affinity = true;

static void init_once(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&g_cond, &attr);
    pthread_condattr_destroy(&attr);
}

static pid_t current_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static bool env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static long env_long(const char *name, long fallback)
{
    const char *v = getenv(name);
    char *end;
    long n;
    if (v == NULL || v[0] == '\0')
        return fallback;
    n = strtol(v, &end, 10);
    return *end == '\0' ? n : fallback;
}

static void lock(void)
{
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g_lock);
}

static void unlock(void)
{
    pthread_mutex_unlock(&g_lock);
}

/* Compares pointers only: a freed handle is never dereferenced. */
static aipu_status_t ctx_check(const aipu_ctx_handle_t *handle, fake_ctx_t **out)
{
    fake_ctx_t *c;
    if (handle == NULL)
        return ST_NULL_PTR;
    for (c = g_contexts; c != NULL; c = c->next) {
        if (&c->pub == handle) {
            *out = c;
            return ST_SUCCESS;
        }
    }
    return ST_INVALID_CTX;
}

static bool graph_id_valid(uint64_t id)
{
    return id >= (1ULL << 32);
}

static bool job_id_valid(uint64_t id)
{
    return id >= (1ULL << 32) && (id & 0xFFFFFFFFULL) != 0;
}

static fake_graph_t *graph_find(fake_ctx_t *c, uint64_t graph_id)
{
    fake_graph_t *g;
    for (g = c->graphs; g != NULL; g = g->next)
        if (g->id == graph_id)
            return g;
    return NULL;
}

static fake_job_t *job_find(fake_ctx_t *c, uint64_t job_id)
{
    fake_graph_t *g = graph_find(c, job_id & ~0xFFFFFFFFULL);
    fake_job_t *j;
    if (g == NULL)
        return NULL;
    for (j = g->jobs; j != NULL; j = j->next)
        if (j->id == job_id)
            return j;
    return NULL;
}

static long count_jobs(fake_ctx_t *c)
{
    long n = 0;
    fake_graph_t *g;
    fake_job_t *j;
    for (g = c->graphs; g != NULL; g = g->next)
        for (j = g->jobs; j != NULL; j = j->next)
            n++;
    return n;
}

/* Index into tensors[] of the index-th tensor of a type, or -1. */
static long tensor_slot(const fake_tensor_t *tensors, uint32_t n, uint32_t type, uint32_t index)
{
    uint32_t i, seen = 0;
    for (i = 0; i < n; i++) {
        if (tensors[i].type != type)
            continue;
        if (seen == index)
            return (long)i;
        seen++;
    }
    return -1;
}

static uint32_t tensor_count(const fake_tensor_t *tensors, uint32_t n, uint32_t type)
{
    uint32_t i, count = 0;
    for (i = 0; i < n; i++)
        if (tensors[i].type == type)
            count++;
    return count;
}

static void job_free(fake_job_t *j)
{
    uint32_t i;
    if (j->bufs != NULL)
        for (i = 0; i < j->n_tensors; i++)
            free(j->bufs[i]);
    free(j->bufs);
    free(j->tensors);
    free(j->gate);
    free(j->dump_dir);
    free(j->output_prefix);
    free(j);
}

static void job_unref_locked(fake_job_t *j)
{
    if (--j->refs == 0)
        job_free(j);
}

static void graph_free_locked(fake_graph_t *g)
{
    fake_job_t *j = g->jobs, *next;
    for (; j != NULL; j = next) {
        next = j->next;
        j->in_table = false;
        job_unref_locked(j);
    }
    free(g->tensors);
    free(g->gate);
    free(g);
}

/* ---- behaviours ---- */

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Made volatile so the compiler cannot see that the store below is through NULL. */
static int *volatile fake_null_pointer;

static bool add_constant(unsigned char *buf, uint32_t size, uint32_t dtype, int32_t k)
{
    uint32_t i;
#define ADD_AS(T)                                                                              \
    for (i = 0; i + sizeof(T) <= size; i += sizeof(T)) {                                       \
        T v;                                                                                   \
        memcpy(&v, buf + i, sizeof v);                                                         \
        v = (T)(v + (T)k);                                                                     \
        memcpy(buf + i, &v, sizeof v);                                                         \
    }                                                                                          \
    return true
    switch (dtype) {
    case DT_U8: case DT_S8: ADD_AS(uint8_t);
    case DT_U16: case DT_S16: ADD_AS(uint16_t);
    case DT_U32: case DT_S32: ADD_AS(uint32_t);
    case DT_U64: case DT_S64: ADD_AS(uint64_t);
    case DT_F32: ADD_AS(float);
    case DT_F64: ADD_AS(double);
    default:
        return false;
    }
#undef ADD_AS
}

/* Computes the outputs from the inputs; false means "raise a job exception". */
static bool compute(fake_job_t *j)
{
    uint32_t n_in = tensor_count(j->tensors, j->n_tensors, TT_INPUT);
    uint32_t i, out_index = 0;
    for (i = 0; i < j->n_tensors; i++) {
        uint32_t size = j->tensors[i].size;
        if (j->tensors[i].type != TT_OUTPUT)
            continue;
        if (n_in > 0) {
            long src = tensor_slot(j->tensors, j->n_tensors, TT_INPUT, out_index % n_in);
            uint32_t src_size = j->tensors[src].size;
            uint32_t copied = src_size < size ? src_size : size;
            /* Like an NPU, write each output byte once: the copy, then zeros past it
               (a job is run again and again, so the tail is zeroed every run). */
            memcpy(j->bufs[i], j->bufs[src], copied);
            memset(j->bufs[i] + copied, 0, size - copied);
        } else {
            memset(j->bufs[i], 0, size);
        }
        if (j->behaviour.kind == BEH_ADD &&
            !add_constant(j->bufs[i], size, j->tensors[i].data_type, j->behaviour.arg))
            return false;
        out_index++;
    }
    return true;
}

static void dump_outputs(fake_job_t *j)
{
    uint32_t i, out_index = 0;
    for (i = 0; i < j->n_tensors; i++) {
        char path[4096];
        FILE *f;
        if (j->tensors[i].type != TT_OUTPUT)
            continue;
        snprintf(path, sizeof path, "%s/%soutput%u.bin", j->dump_dir,
                 j->output_prefix ? j->output_prefix : "", out_index++);
        f = fopen(path, "wb");
        if (f == NULL) {
            LOG(LOG_ERR, "open dump file %s [fail]", path);
            continue;
        }
        fwrite(j->bufs[i], 1, j->tensors[i].size, f);
        fclose(f);
    }
}

static void *job_thread(void *arg)
{
    fake_job_t *j = arg;
    int end = JOB_DONE;

    while (j->gate != NULL && access(j->gate, F_OK) != 0)
        sleep_ms(1);
    if (j->behaviour.delay_ms > 0)
        sleep_ms(j->behaviour.delay_ms);
    switch (j->behaviour.kind) {
    case BEH_HANG:
        for (;;)
            sleep_ms(1000000);
    case BEH_CRASH:
        *fake_null_pointer = 0x29A;
        break;
    case BEH_EXCEPTION:
        end = JOB_EXCEPTION;
        break;
    default:
        if (!compute(j))
            end = JOB_EXCEPTION;
        else if (j->dump_outputs && j->dump_dir != NULL)
            dump_outputs(j);
        break;
    }

    lock();
    j->state = end;
    if (end == JOB_EXCEPTION)
        LOG(LOG_ERR, "Job (0x%llx) exception", (unsigned long long)j->id);
    pthread_cond_broadcast(&g_cond);
    job_unref_locked(j);
    unlock();
    return NULL;
}

/* Called locked. Starts a job: INIT/DONE/EXCEPTION -> SCHED. */
static aipu_status_t job_schedule_locked(fake_ctx_t *c, fake_job_t *j)
{
    pthread_t thread;
    pthread_attr_t attr;
    int err;

    if (j->state == JOB_SCHED) {
        LOG(LOG_ERR, "Job (0x%llx) is already scheduled", (unsigned long long)j->id);
        return ST_INVALID_OP;
    }
    if (c->dispatch_fail) {
        LOG(LOG_ERR, "dispatch job (0x%llx) [fail]", (unsigned long long)j->id);
        return ST_JOB_DISPATCH_FAIL;
    }
    j->state = JOB_SCHED;
    j->flush_tid = current_tid();
    j->refs++;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    err = pthread_create(&thread, &attr, job_thread, j);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        j->state = JOB_INIT;
        j->refs--;
        return ST_JOB_DISPATCH_FAIL;
    }
    return ST_SUCCESS;
}

static void deadline_after(struct timespec *ts, int32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Whether the calling thread may see this job's completion (KMD thread affinity). */
static bool completion_visible(const fake_job_t *j)
{
    if (j->state != JOB_DONE && j->state != JOB_EXCEPTION)
        return false;
    if (!g_thread_affinity || !g_poll_in_commit_thread)
        return true;
    return j->flush_tid == current_tid();
}

/* Called locked with a reference held on j: waits for visible completion. */
static aipu_status_t wait_locked(fake_job_t *j, int32_t timeout_ms)
{
    struct timespec deadline;
    if (timeout_ms > 0)
        deadline_after(&deadline, timeout_ms);
    while (!completion_visible(j)) {
        if (timeout_ms > 0) {
            if (pthread_cond_timedwait(&g_cond, &g_lock, &deadline) == ETIMEDOUT &&
                !completion_visible(j))
                return ST_TIMEOUT;
        } else {
            pthread_cond_wait(&g_cond, &g_lock);
        }
    }
    return ST_SUCCESS;
}

/* ---- graph parsing ---- */

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

typedef struct {
    const unsigned char *compilermsg;
    uint32_t compilermsg_size;
    const unsigned char *io;
    uint32_t io_size;
    const unsigned char *behaviour;
    uint32_t behaviour_size;
    const unsigned char *extra_weights;
    uint32_t extra_weights_size;
    const unsigned char *gate;
    uint32_t gate_size;
} notes_t;

/* Little-endian ELF32 only (the real driver's ELFIO reads more; our graphs are ELF32). */
static aipu_status_t parse_elf(const unsigned char *buf, size_t size, notes_t *notes)
{
    uint32_t shoff, i;
    uint16_t shentsize, shnum, shstrndx;
    const unsigned char *shstr;
    uint32_t shstr_size;
    const unsigned char *note = NULL;
    uint32_t note_size = 0;
    bool have_text = false;

    memset(notes, 0, sizeof *notes);
    if (size < 52 || buf[4] != 1 || buf[5] != 1) {
        LOG(LOG_ERR, "invalid ELF header");
        return ST_INVALID_GBIN;
    }
    if (rd16(buf + 16) != 2 || rd16(buf + 18) != 0x29A || rd32(buf + 20) != 1) {
        LOG(LOG_ERR, "ELF type/machine/version mismatch");
        return ST_INVALID_GBIN;
    }
    shoff = rd32(buf + 32);
    shentsize = rd16(buf + 46);
    shnum = rd16(buf + 48);
    shstrndx = rd16(buf + 50);
    if (shentsize != 40 || shnum == 0 || shstrndx >= shnum ||
        (uint64_t)shoff + (uint64_t)shnum * 40 > size) {
        LOG(LOG_ERR, "invalid ELF section header table");
        return ST_INVALID_GBIN;
    }
#define SH(k) (buf + shoff + (size_t)(k) * 40)
    for (i = 0; i < shnum; i++) {
        uint32_t type = rd32(SH(i) + 4), off = rd32(SH(i) + 16), sz = rd32(SH(i) + 20);
        if (type != 8 /* SHT_NOBITS */ && (uint64_t)off + sz > size) {
            LOG(LOG_ERR, "ELF section %u is out of the file", i);
            return ST_INVALID_GBIN;
        }
    }
    shstr = buf + rd32(SH(shstrndx) + 16);
    shstr_size = rd32(SH(shstrndx) + 20);
    for (i = 1; i < shnum; i++) {
        uint32_t name = rd32(SH(i));
        const char *s;
        if (name >= shstr_size || memchr(shstr + name, 0, shstr_size - name) == NULL) {
            LOG(LOG_ERR, "invalid ELF section name");
            return ST_INVALID_GBIN;
        }
        s = (const char *)shstr + name;
        if (strcmp(s, ".text") == 0)
            have_text = true;
        else if (strcmp(s, ".note.aipu") == 0) {
            note = buf + rd32(SH(i) + 16);
            note_size = rd32(SH(i) + 20);
        }
    }
#undef SH
    if (!have_text || note == NULL) {
        LOG(LOG_ERR, "no .text or .note.aipu section in the graph");
        return ST_INVALID_GBIN;
    }
    for (i = 0; i < note_size;) {
        uint32_t namesz, descsz, name_pad, desc_pad;
        const char *name;
        const unsigned char *desc;
        if (note_size - i < 12)
            goto bad_note;
        namesz = rd32(note + i);
        descsz = rd32(note + i + 4);
        name_pad = (namesz + 3u) & ~3u;
        desc_pad = (descsz + 3u) & ~3u;
        if (namesz == 0 || name_pad < namesz || desc_pad < descsz ||
            (uint64_t)name_pad + desc_pad > note_size - i - 12)
            goto bad_note;
        name = (const char *)note + i + 12;
        if (name[namesz - 1] != '\0')
            goto bad_note;
        desc = note + i + 12 + name_pad;
        if (strcmp(name, "compilermsg") == 0) {
            notes->compilermsg = desc;
            notes->compilermsg_size = descsz;
        } else if (strcmp(name, "fakeio") == 0) {
            notes->io = desc;
            notes->io_size = descsz;
        } else if (strcmp(name, "fakebehav") == 0) {
            notes->behaviour = desc;
            notes->behaviour_size = descsz;
        } else if (strcmp(name, "fakegate") == 0) {
            notes->gate = desc;
            notes->gate_size = descsz;
        } else if (strcmp(name, "extra_weight_name") == 0) {
            notes->extra_weights = desc;
            notes->extra_weights_size = descsz;
        }
        i += 12 + name_pad + desc_pad;
    }
    return ST_SUCCESS;
bad_note:
    LOG(LOG_ERR, "malformed .note.aipu section");
    return ST_INVALID_GBIN;
}

/* "Z<isa>_<config>" for ISA <= 3, "X<isa-3>[P|S]_<config>" above (Graph::version_to_target). */
static bool device_word_to_target(uint32_t word, char *out, size_t out_size)
{
    static const char *const known[] = {
        "Z1_0904", "Z1_1002", "Z1_0701", "Z2_1104", "Z2_0901", "Z2_1002", "Z2_1004",
        "Z3_1204", "Z3_1104", "Z3_1002", "Z3_0901", "X1_1204", "X2_1204", "X3_1304",
        "X3_1204", "X3P_1304", "X3P_1302", "X3P_1202", "X3P_1204", "X3S_1304",
    };
    uint32_t revision = word >> 28, arch = (word >> 20) & 0xFF, isa = (word >> 16) & 0xF;
    uint32_t config = word & 0xFFFF;
    size_t i;

    if (arch != 0 || isa == 0 || config > 9999)
        return false;
    if (isa <= 3)
        snprintf(out, out_size, "Z%u_%04u", isa, config);
    else
        snprintf(out, out_size, "X%u%s_%04u", isa - 3,
                 revision == 1 ? "P" : revision == 2 ? "S" : "", config);
    for (i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(out, known[i]) == 0)
            return true;
    return false;
}

static aipu_status_t load_common(fake_ctx_t *c, const unsigned char *buf, size_t size,
                                 uint64_t *id, const void *config)
{
    notes_t notes;
    aipu_status_t st;
    uint32_t n, i;
    fake_graph_t *g;
    uint64_t k;
    const char *extra_weight_path = NULL;

    if (size < 16) {
        LOG(LOG_ERR, "graph binary is too small (%zu bytes)", size);
        return ST_GVERSION_UNSUPPORTED;
    }
    if (memcmp(buf, "AIPU BIN", 8) == 0) {
        LOG(LOG_ERR, "graph version 0.5 (v1/v2) is not supported by this build");
        return ST_GVERSION_UNSUPPORTED;
    }
    if (memcmp(buf, "\x7f" "ELF", 4) != 0) {
        LOG(LOG_ERR, "unknown graph binary magic");
        return ST_GVERSION_UNSUPPORTED;
    }
    st = parse_elf(buf, size, &notes);
    if (st != ST_SUCCESS)
        return st;
    if (notes.io == NULL || notes.io_size < 4 || (notes.io_size - 4) % 20 != 0 ||
        rd32(notes.io) != (notes.io_size - 4) / 20) {
        LOG(LOG_ERR, "invalid tensor descriptors in the graph");
        return ST_INVALID_GBIN;
    }
    n = rd32(notes.io);
    for (i = 0; i < n; i++)
        if (rd32(notes.io + 4 + 20 * i) > TT_OUT_TENSOR_SHAPE) {
            LOG(LOG_ERR, "invalid tensor type in the graph");
            return ST_INVALID_GBIN;
        }
    if (notes.gate != NULL && memchr(notes.gate, 0, notes.gate_size) == NULL) {
        LOG(LOG_ERR, "invalid gate note");
        return ST_INVALID_GBIN;
    }
    if (notes.behaviour != NULL && notes.behaviour_size < 12) {
        LOG(LOG_ERR, "invalid behaviour note");
        return ST_INVALID_GBIN;
    }

    if (notes.compilermsg != NULL) {
        char target[32];
        size_t base;
        if (notes.compilermsg_size < 16) {
            LOG(LOG_ERR, "invalid compilermsg note");
            return ST_INVALID_GBIN;
        }
        if (!device_word_to_target(rd32(notes.compilermsg + 8), target, sizeof target)) {
            LOG(LOG_ERR, "unknown graph target (device word 0x%x)", rd32(notes.compilermsg + 8));
            return ST_TARGET_NOT_FOUND;
        }
        base = strcspn(c->target, "M"); /* "X2_1204MP3" -> "X2_1204" */
        if (c->ver_check && (strlen(target) != base || strncmp(target, c->target, base) != 0)) {
            LOG(LOG_ERR, "graph target %s does not match the device %s", target, c->target);
            return ST_TARGET_NOT_FOUND;
        }
    }

#if FAKE_ABI >= 510
    /* extra_weight_path is at offset 24 from 5.10 on; put_*_gm at 32..34 from 6.0 on. */
    if (config != NULL) {
        const unsigned char *cfg = config;
        memcpy(&extra_weight_path, cfg + 24, sizeof extra_weight_path);
#if FAKE_ABI >= 600
        if ((cfg[32] || cfg[33] || cfg[34]) && strncmp(c->target, "X3", 2) != 0) {
            LOG(LOG_ERR, "put_*_gm needs a v3_2 target");
            return ST_OP_NOT_SUPPORTED;
        }
#endif
    }
#else
    (void)config; /* 5.9's 24-byte load config has no field the fake uses */
#endif
    if (notes.extra_weights != NULL) {
        uint32_t off = 0;
        while (off < notes.extra_weights_size) {
            const char *name = (const char *)notes.extra_weights + off;
            size_t len = strnlen(name, notes.extra_weights_size - off);
            char path[4096];
            struct stat sb;
            if (len == notes.extra_weights_size - off)
                break; /* unterminated tail: padding or garbage */
            if (len > 0) {
                snprintf(path, sizeof path, "%s/%s",
                         extra_weight_path ? extra_weight_path : "", name);
                if (extra_weight_path == NULL || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
                    LOG(LOG_ERR, "read extra weight file %s [fail]", path);
                    return ST_READ_FILE_FAIL;
                }
            }
            off += (uint32_t)len + 1;
        }
    }

    g = calloc(1, sizeof *g);
    if (g == NULL)
        return ST_BUF_ALLOC_FAIL;
    g->n_tensors = n;
    g->tensors = calloc(n ? n : 1, sizeof *g->tensors);
    if (g->tensors == NULL) {
        free(g);
        return ST_BUF_ALLOC_FAIL;
    }
    for (i = 0; i < n; i++) {
        const unsigned char *e = notes.io + 4 + 20 * i;
        uint32_t raw_scale = rd32(e + 8);
        g->tensors[i].type = rd32(e);
        g->tensors[i].size = rd32(e + 4);
        memcpy(&g->tensors[i].scale, &raw_scale, sizeof raw_scale);
        g->tensors[i].zero_point = (int32_t)rd32(e + 12);
        g->tensors[i].data_type = rd32(e + 16);
    }
    if (notes.behaviour != NULL) {
        g->behaviour.kind = rd32(notes.behaviour);
        g->behaviour.arg = (int32_t)rd32(notes.behaviour + 4);
        g->behaviour.delay_ms = rd32(notes.behaviour + 8);
    }
    if (notes.compilermsg != NULL)
        g->build_version = rd32(notes.compilermsg + 4);
    if (notes.gate != NULL && (g->gate = strdup((const char *)notes.gate)) == NULL) {
        graph_free_locked(g);
        return ST_BUF_ALLOC_FAIL;
    }
    for (k = 1; graph_find(c, k << 32) != NULL; k++) {
    }
    g->id = k << 32;
    g->next = c->graphs;
    c->graphs = g;
    *id = g->id;
    return ST_SUCCESS;
}

/* ---- the standard API ---- */

API aipu_status_t aipu_init_context(aipu_ctx_handle_t **ctx)
{
    fake_ctx_t *c;
    const char *target, *mp;
    const char *level = getenv("UMD_LOG_LEVEL");

    /* Only 2..6 take effect; 6 (LOG_CLOSE) silences everything, errors included. */
    if (level != NULL && level[0] >= '2' && level[0] <= '6' && level[1] == '\0')
        umd_log_level = level[0] == '6' ? -1 : level[0] - '0';
    if (ctx == NULL)
        return ST_NULL_PTR;
    *ctx = NULL;
    if (env_flag("FAKE_AIPU_NO_DEVICE")) {
        LOG(LOG_ERR, "open /dev/aipu [fail]: No such file or directory");
        return ST_OPEN_DEV_FAIL;
    }
    if (env_flag("FAKE_AIPU_DEV_ABNORMAL")) {
        LOG(LOG_ERR, "query AIPU capability [fail]");
        return ST_DEV_ABNORMAL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return ST_BUF_ALLOC_FAIL;
    c->ver_check = true;
    c->max_jobs = env_long("FAKE_AIPU_MAX_JOBS", -1);
    c->dispatch_fail = env_flag("FAKE_AIPU_DISPATCH_FAIL");
    target = getenv("FAKE_AIPU_TARGET");
    if (target == NULL || target[0] == '\0')
        target = "X2_1204MP3";
    snprintf(c->target, sizeof c->target, "%s", target);
    mp = strstr(c->target, "MP");
    c->cores = mp ? (uint32_t)strtoul(mp + 2, NULL, 10) : 1;
    if (c->cores == 0)
        c->cores = 1;
    c->partitions = (uint32_t)env_long("FAKE_AIPU_PARTITIONS", 1);

    lock();
    g_thread_affinity = !(getenv("FAKE_AIPU_THREAD_AFFINITY") &&
                          strcmp(getenv("FAKE_AIPU_THREAD_AFFINITY"), "0") == 0);
    c->pub.handle = g_next_handle++;
    c->next = g_contexts;
    g_contexts = c;
    unlock();
    *ctx = &c->pub;
    return ST_SUCCESS;
}

API aipu_status_t aipu_deinit_context(const aipu_ctx_handle_t *ctx)
{
    fake_ctx_t *c, **pp;
    fake_graph_t *g, *next;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS) {
        unlock();
        return st;
    }
    for (pp = &g_contexts; *pp != c; pp = &(*pp)->next) {
    }
    *pp = c->next;
    for (g = c->graphs; g != NULL; g = next) {
        next = g->next;
        graph_free_locked(g);
    }
    free(c);
    unlock();
    return ST_SUCCESS;
}

API aipu_status_t aipu_get_error_message(const aipu_ctx_handle_t *ctx, aipu_status_t status,
                                         const char **msg)
{
    if (msg == NULL)
        return ST_NULL_PTR;
    if (ctx == NULL) {
        if (status == ST_OPEN_DEV_FAIL) {
            *msg = status_string(ST_OPEN_DEV_FAIL);
            return ST_OPEN_DEV_FAIL;
        }
        *msg = status_string(ST_NULL_PTR);
        return ST_NULL_PTR;
    }
    *msg = status_string((uint32_t)status);
    return ST_SUCCESS;
}

API aipu_status_t aipu_load_graph(const aipu_ctx_handle_t *ctx, const char *path, uint64_t *id,
                                  void *config)
{
    fake_ctx_t *c;
    aipu_status_t st;
    FILE *f;
    struct stat sb;
    unsigned char *buf;
    size_t got;

    lock();
    st = ctx_check(ctx, &c);
    unlock();
    if (st != ST_SUCCESS)
        return st;
    if (path == NULL || id == NULL)
        return ST_NULL_PTR;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (f = fopen(path, "rb")) == NULL) {
        LOG(LOG_ERR, "open file %s [fail]", path);
        return ST_OPEN_FILE_FAIL;
    }
    buf = malloc(sb.st_size ? (size_t)sb.st_size : 1);
    if (buf == NULL) {
        fclose(f);
        return ST_BUF_ALLOC_FAIL;
    }
    got = fread(buf, 1, (size_t)sb.st_size, f);
    fclose(f);
    if (got != (size_t)sb.st_size) {
        free(buf);
        LOG(LOG_ERR, "read file %s [fail]", path);
        return ST_READ_FILE_FAIL;
    }
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS)
        st = load_common(c, buf, got, id, config);
    unlock();
    free(buf);
    return st;
}

API aipu_status_t aipu_load_graph_helper(const aipu_ctx_handle_t *ctx, const char *graph_buf,
                                         uint32_t graph_size, uint64_t *id, void *config)
{
    fake_ctx_t *c;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && (graph_buf == NULL || id == NULL))
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS && graph_size == 0)
        st = ST_INVALID_SIZE;
    if (st == ST_SUCCESS)
        st = load_common(c, (const unsigned char *)graph_buf, graph_size, id, config);
    unlock();
    return st;
}

API aipu_status_t aipu_unload_graph(const aipu_ctx_handle_t *ctx, uint64_t graph)
{
    fake_ctx_t *c;
    fake_graph_t **pp, *g;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_GRAPH_ID;
    if (!graph_id_valid(graph))
        goto out;
    for (pp = &c->graphs; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->id == graph) {
            g = *pp;
            *pp = g->next;
            graph_free_locked(g);
            st = ST_SUCCESS;
            break;
        }
    }
out:
    unlock();
    return st;
}

API aipu_status_t aipu_create_job(const aipu_ctx_handle_t *ctx, uint64_t graph, uint64_t *job,
                                  void *config)
{
    fake_ctx_t *c;
    fake_graph_t *g;
    fake_job_t *j, *other;
    aipu_status_t st;
    uint32_t i;
    uint64_t n;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_GRAPH_ID;
    if (!graph_id_valid(graph) || (g = graph_find(c, graph)) == NULL)
        goto out;
    st = ST_NULL_PTR;
    if (job == NULL)
        goto out;
#if FAKE_ABI >= 600
    if (config != NULL) {
        uint32_t misc;
        memcpy(&misc, config, sizeof misc);
        st = ST_INVALID_PARTITION_ID;
        if ((misc & 0xF) >= c->partitions)
            goto out;
        st = ST_INVALID_QOS;
        if (((misc >> 8) & 0xF) > 1)
            goto out;
    }
#else
    (void)config;
#endif
    st = ST_BUF_ALLOC_FAIL;
    j = calloc(1, sizeof *j);
    if (j == NULL)
        goto out;
    /* Registered before its buffers exist, as on v3x: a failed create leaves the ID. */
    for (n = 1;; n++) {
        for (other = g->jobs; other != NULL && other->id != graph + n; other = other->next) {
        }
        if (other == NULL)
            break;
    }
    j->id = graph + n;
    j->refs = 1;
    j->in_table = true;
    j->state = JOB_INIT;
    j->behaviour = g->behaviour;
    if (g->gate != NULL && (j->gate = strdup(g->gate)) == NULL) {
        job_free(j);
        goto out;
    }
    if (c->max_jobs >= 0 && count_jobs(c) >= c->max_jobs) {
        j->next = g->jobs;
        g->jobs = j;
        *job = j->id;
        LOG(LOG_ERR, "alloc job buffers [fail]: no free memory in the reserved pool");
        goto out;
    }
    j->n_tensors = g->n_tensors;
    j->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *j->tensors);
    j->bufs = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *j->bufs);
    if (j->tensors == NULL || j->bufs == NULL) {
        job_free(j);
        goto out;
    }
    memcpy(j->tensors, g->tensors, g->n_tensors * sizeof *j->tensors);
    for (i = 0; i < g->n_tensors; i++) {
        j->bufs[i] = calloc(1, g->tensors[i].size ? g->tensors[i].size : 1);
        if (j->bufs[i] == NULL) {
            job_free(j);
            goto out;
        }
    }
    j->next = g->jobs;
    g->jobs = j;
    *job = j->id;
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

API aipu_status_t aipu_clean_job(const aipu_ctx_handle_t *ctx, uint64_t job)
{
    fake_ctx_t *c;
    fake_graph_t *g;
    fake_job_t **pp, *j;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job))
        goto out;
    st = ST_INVALID_GRAPH_ID;
    if ((g = graph_find(c, job & ~0xFFFFFFFFULL)) == NULL)
        goto out;
    /* No state check, as in the real driver; an unknown job number is a no-op. */
    st = ST_SUCCESS;
    for (pp = &g->jobs; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->id == job) {
            j = *pp;
            *pp = j->next;
            j->in_table = false;
            job_unref_locked(j);
            break;
        }
    }
out:
    unlock();
    return st;
}

static bool count_type_supported(uint32_t type)
{
    return type == TT_INPUT || type == TT_OUTPUT || type == TT_INTER_DUMP || type == TT_PRINTF ||
           type == TT_PROFILER || type == TT_OUT_TENSOR_SHAPE;
}

API aipu_status_t aipu_get_tensor_count(const aipu_ctx_handle_t *ctx, uint64_t id, uint32_t type,
                                        uint32_t *cnt)
{
    fake_ctx_t *c;
    fake_graph_t *g;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_GRAPH_ID;
    if (!graph_id_valid(id) || (g = graph_find(c, id & ~0xFFFFFFFFULL)) == NULL)
        goto out;
    st = ST_NULL_PTR;
    if (cnt == NULL)
        goto out;
    st = ST_INVALID_TENSOR_TYPE;
    if (!count_type_supported(type))
        goto out;
    *cnt = tensor_count(g->tensors, g->n_tensors, type);
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

API aipu_status_t aipu_get_tensor_descriptor(const aipu_ctx_handle_t *ctx, uint64_t id,
                                             uint32_t type, uint32_t index,
                                             aipu_tensor_desc_t *desc)
{
    fake_ctx_t *c;
    fake_graph_t *g;
    aipu_status_t st;
    long slot;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_GRAPH_ID;
    if (!graph_id_valid(id) || (g = graph_find(c, id & ~0xFFFFFFFFULL)) == NULL)
        goto out;
    st = ST_INVALID_TENSOR_TYPE;
    if (!count_type_supported(type))
        goto out;
    st = ST_INVALID_TENSOR_ID;
    if ((slot = tensor_slot(g->tensors, g->n_tensors, type, index)) < 0)
        goto out;
    st = ST_NULL_PTR;
    if (desc == NULL)
        goto out;
    desc->id = index;
    desc->size = g->tensors[slot].size;
    desc->scale = g->tensors[slot].scale;
#if FAKE_ABI >= 510
    desc->zero_point = g->tensors[slot].zero_point;
#else
    desc->zero_point = (float)g->tensors[slot].zero_point;
#endif
    desc->data_type = g->tensors[slot].data_type;
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

API aipu_status_t aipu_load_tensor(const aipu_ctx_handle_t *ctx, uint64_t job, uint32_t index,
                                   const void *data)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;
    long slot;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = ST_NULL_PTR;
    if (data == NULL)
        goto out;
    st = ST_INVALID_TENSOR_ID;
    if ((slot = tensor_slot(j->tensors, j->n_tensors, TT_INPUT, index)) < 0)
        goto out;
    st = ST_INVALID_OP;
    if (j->state != JOB_INIT && j->state != JOB_DONE) {
        LOG(LOG_ERR, "load tensor into job (0x%llx) in state %d", (unsigned long long)job,
            j->state);
        goto out;
    }
    memcpy(j->bufs[slot], data, j->tensors[slot].size);
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

API aipu_status_t aipu_get_tensor(const aipu_ctx_handle_t *ctx, uint64_t job, uint32_t type,
                                  uint32_t index, void *data)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;
    long slot;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = ST_NULL_PTR;
    if (data == NULL)
        goto out;
    st = ST_INVALID_OP; /* odd types give INVALID_OP here, not INVALID_TENSOR_TYPE */
    if (type == TT_INPUT || !count_type_supported(type))
        goto out;
    st = ST_INVALID_TENSOR_ID;
    if ((slot = tensor_slot(j->tensors, j->n_tensors, type, index)) < 0)
        goto out;
    st = ST_INVALID_OP;
    if (j->state != JOB_DONE) {
        LOG(LOG_ERR, "get tensor from job (0x%llx) in state %d", (unsigned long long)job,
            j->state);
        goto out;
    }
    memcpy(data, j->bufs[slot], j->tensors[slot].size);
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

#ifndef FAKE_OMIT_FINISH_JOB
API aipu_status_t aipu_finish_job(const aipu_ctx_handle_t *ctx, uint64_t job, int32_t time_out)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = job_schedule_locked(c, j);
    if (st != ST_SUCCESS)
        goto out;
    j->refs++;
    st = wait_locked(j, time_out);
    if (st == ST_TIMEOUT)
        LOG(LOG_ERR, "Job (0x%llx) timeout after %d ms", (unsigned long long)job, time_out);
    else if (j->state == JOB_EXCEPTION)
        st = ST_JOB_EXCEPTION;
    job_unref_locked(j);
out:
    unlock();
    return st;
}
#endif

API aipu_status_t aipu_flush_job(const aipu_ctx_handle_t *ctx, uint64_t job,
                                 aipu_job_callback_t callback)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;

    (void)callback; /* callbacks are not emulated; the binding always passes NULL */
    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = job_schedule_locked(c, j);
out:
    unlock();
    return st;
}

API aipu_status_t aipu_get_job_status(const aipu_ctx_handle_t *ctx, uint64_t job, int *status,
                                      int32_t timeout)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = ST_NULL_PTR;
    if (status == NULL)
        goto out;
    *status = JOB_NO_STATUS;
    st = ST_SUCCESS;
    if (timeout != 0) {
        /* Never flushed (or invisible to this thread) and timeout -1: waits forever, as the
           real poll loop spins. */
        j->refs++;
        st = wait_locked(j, timeout);
        job_unref_locked(j);
        if (st != ST_SUCCESS)
            goto out;
    }
    if (completion_visible(j))
        *status = j->state;
out:
    unlock();
    return st;
}

/* ---- optional symbols ---- */

#ifndef FAKE_NO_OPTIONAL
API aipu_status_t aipu_config_global(const aipu_ctx_handle_t *ctx, uint64_t types, void *config)
{
    fake_ctx_t *c;
    aipu_status_t st;
    const uint64_t known = CFG_SIMULATION | CFG_HW | CFG_DISABLE_VER | CFG_ENABLE_VER;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_CONFIG;
    if (types & ~known)
        goto out;
    st = ST_NULL_PTR;
    if ((types & (CFG_HW | CFG_SIMULATION)) && config == NULL)
        goto out;
    if (types & CFG_HW)
        g_poll_in_commit_thread = ((const bool *)config)[0];
    if (types & CFG_DISABLE_VER)
        c->ver_check = false;
    if (types & CFG_ENABLE_VER)
        c->ver_check = true;
    st = ST_SUCCESS;
out:
    unlock();
    return st;
}

API aipu_status_t aipu_config_job(const aipu_ctx_handle_t *ctx, uint64_t job, uint64_t types,
                                  void *config)
{
    fake_ctx_t *c;
    fake_job_t *j;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_JOB_ID;
    if (!job_id_valid(job) || (j = job_find(c, job)) == NULL)
        goto out;
    st = ST_INVALID_CONFIG;
    if (types == 0)
        goto out;
    if ((types & ~CFG_DUMP_MASK) == 0) {
        const aipu_job_config_dump_t *dump = config;
        st = ST_NULL_PTR;
        if (dump == NULL || dump->dump_dir == NULL)
            goto out;
        free(j->dump_dir);
        free(j->output_prefix);
        j->dump_dir = strdup(dump->dump_dir);
        j->output_prefix = dump->output_prefix ? strdup(dump->output_prefix) : NULL;
        j->dump_outputs = (types & CFG_DUMP_OUTPUT) != 0;
        st = ST_SUCCESS;
    } else if (types == CFG_SIMULATION || (CFG_DYNAMIC_PARAMS && types == CFG_DYNAMIC_PARAMS)) {
        st = config == NULL ? ST_NULL_PTR : ST_SUCCESS;
    }
out:
    unlock();
    return st;
}

API aipu_status_t aipu_get_partition_count(const aipu_ctx_handle_t *ctx, uint32_t *cnt)
{
    fake_ctx_t *c;
    aipu_status_t st;
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && cnt == NULL)
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS)
        *cnt = c->partitions;
    unlock();
    return st;
}

API aipu_status_t aipu_get_cluster_count(const aipu_ctx_handle_t *ctx, uint32_t partition,
                                         uint32_t *cnt)
{
    fake_ctx_t *c;
    aipu_status_t st;
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && cnt == NULL)
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS && partition >= c->partitions)
        st = ST_INVALID_OP;
    if (st == ST_SUCCESS)
        *cnt = 1;
    unlock();
    return st;
}

API aipu_status_t aipu_get_core_count(const aipu_ctx_handle_t *ctx, uint32_t partition,
                                      uint32_t cluster, uint32_t *cnt)
{
    fake_ctx_t *c;
    aipu_status_t st;
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && cnt == NULL)
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS && partition >= c->partitions)
        st = ST_INVALID_PARTITION_ID;
    if (st == ST_SUCCESS && cluster >= 1)
        st = ST_INVALID_CLUSTER_ID;
    if (st == ST_SUCCESS)
        *cnt = c->cores;
    unlock();
    return st;
}

API aipu_status_t aipu_get_target(const aipu_ctx_handle_t *ctx, char *target)
{
    fake_ctx_t *c;
    aipu_status_t st;
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && target == NULL)
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS)
        memcpy(target, c->target, strlen(c->target)); /* not terminated, like strncpy */
    unlock();
    return st;
}

API aipu_status_t aipu_get_device_status(const aipu_ctx_handle_t *ctx, int *status)
{
    fake_ctx_t *c;
    aipu_status_t st;
    const char *v;
    lock();
    st = ctx_check(ctx, &c);
    if (st == ST_SUCCESS && status == NULL)
        st = ST_NULL_PTR;
    if (st == ST_SUCCESS) {
        v = getenv("FAKE_AIPU_DEVICE_STATUS");
        *status = DEV_IDLE;
        if (v != NULL && strcmp(v, "busy") == 0)
            *status = DEV_BUSY;
        else if (v != NULL && strcmp(v, "exception") == 0)
            *status = DEV_EXCEPTION;
    }
    unlock();
    return st;
}

API aipu_status_t aipu_ioctl(aipu_ctx_handle_t *ctx, uint32_t cmd, void *arg)
{
    fake_ctx_t *c;
    fake_graph_t *g;
    aipu_status_t st;

    lock();
    st = ctx_check(ctx, &c);
    if (st != ST_SUCCESS)
        goto out;
    st = ST_INVALID_OP;
    if (cmd < 255 || cmd >= IOCTL_UMD_MAX)
        goto out;
    st = ST_NULL_PTR;
    if (arg == NULL && cmd < IOCTL_ABORT_CMDPOOL)
        goto out;
    st = ST_OP_NOT_SUPPORTED;
    if (cmd == IOCTL_GET_VERSION) {
        char *v = arg; /* char umd_version[16], kmd_version[16]; not terminated */
        memcpy(v, UMD_VERSION, strlen(UMD_VERSION));
        memcpy(v + 16, UMD_VERSION, strlen(UMD_VERSION));
        st = ST_SUCCESS;
    } else if (IOCTL_GET_BUILDVERSION != 0 && cmd == IOCTL_GET_BUILDVERSION) {
        unsigned char *bv = arg; /* u64 graph_id in, u32 aipubin_buildversion out at 8 */
        uint64_t graph;
        memcpy(&graph, bv, sizeof graph);
        st = ST_INVALID_GRAPH_ID;
        if (graph_id_valid(graph) && (g = graph_find(c, graph & ~0xFFFFFFFFULL)) != NULL) {
            memcpy(bv + 8, &g->build_version, sizeof g->build_version);
            st = ST_SUCCESS;
        }
    }
out:
    unlock();
    return st;
}
#endif /* FAKE_NO_OPTIONAL */

#ifdef FAKE_PYTHON_API
API void *PyInit_libaipudrv(void)
{
    return NULL;
}
#endif
