/* profile.h - the C half of the profiler (edgetrain/profiler.py is the other).
 *
 * Why: the accelerator (the queue's worker thread) and the blocking waits of
 * the CPU are invisible to Python, so the C core records them itself into one
 * process-wide buffer that Python drains after a profile:
 *   ET_PROF_JOB  one queue job: submit / start / end, label ("conv2d.fwd",
 *                "conv2d.bwd_data", ...), precision, backend, FLOPs, bytes,
 *                and the primitive-cache hits / misses / evictions it caused
 *   ET_PROF_WAIT a CPU thread blocked in et_queue_wait / wait_all
 *   ET_PROF_CPU  a CPU range inside a C op (quantize, convert, dequantize)
 * Timestamps are CLOCK_MONOTONIC nanoseconds: Python's time.monotonic_ns()
 * reads the same clock on Linux, so CPU ranges recorded in Python line up.
 *
 * Off (the default) costs one relaxed atomic load per job / wait / range:
 * et_prof_enabled(). On, a record is appended under one mutex into a buffer
 * that grows by doubling up to `max_records` (et_prof_enable); beyond that,
 * or when an allocation fails, records are dropped and counted, never a
 * crash. Nothing here calls exit/abort/assert.
 */
#ifndef ET_PROFILE_H
#define ET_PROFILE_H

#include <stdatomic.h>
#include <stdint.h>

#include "status.h"

/* What a submitter tells the queue about a job (queue.h et_queue_submit_info).
 * Strings are static (never freed, never copied). */
typedef struct et_job_info {
    const char *label;       /* "conv2d.fwd", ...; NULL: "job" */
    const char *precision;   /* "fp32", "int8", "bf16", "fp16"; NULL: unknown */
    const char *backend;     /* the backend that runs it; NULL: unknown */
    int64_t flops;           /* useful FLOPs of the op pass it performs; -1 unknown */
    int64_t bytes;           /* bytes its operands read + write; -1 unknown */
} et_job_info;

typedef enum et_prof_kind { ET_PROF_JOB = 0, ET_PROF_WAIT = 1, ET_PROF_CPU = 2 } et_prof_kind;

typedef struct et_prof_record {
    int32_t kind;            /* et_prof_kind */
    int32_t status;          /* et_status of the job / wait; ET_OK for CPU ranges */
    const char *label, *precision, *backend;   /* static strings, may be NULL */
    uint64_t queue;          /* JOB / WAIT: the queue's id (1, 2, ...); CPU: 0 */
    uint64_t ticket;         /* JOB: its ticket; WAIT: the ticket waited for
                                (wait_all: the last ticket submitted then) */
    int64_t thread;          /* et_prof_thread(): JOB: the submitting thread;
                                WAIT / CPU: the thread that blocked / ran */
    int64_t t_submit, t_start, t_end;   /* ns; t_submit == t_start for WAIT / CPU */
    int64_t flops, bytes;    /* -1: unknown */
    int64_t cache_hits, cache_misses, cache_evictions;   /* JOB: deltas over the job */
} et_prof_record;

/* the flag; use et_prof_enabled() */
extern atomic_int et_prof_flag_;

static inline int et_prof_enabled(void)
{
    return atomic_load_explicit(&et_prof_flag_, memory_order_relaxed);
}

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t et_prof_now(void);

/* This thread's id: pthread_self(), which is what Python's
 * threading.get_ident() returns (no system call on either side). */
int64_t et_prof_thread(void);

/* Starts recording; the buffer grows up to max_records (>= 1) records.
 * Records already in the buffer are kept (drain them first to discard). */
et_status et_prof_enable(int64_t max_records);
void et_prof_disable(void);

/* Appends a copy of *r (drops and counts it when the buffer cannot hold it).
 * Appends even when disabled: a job submitted while on that ends after off
 * still belongs to the profile. */
void et_prof_add(const et_prof_record *r);

/* Copies the records out: *out (free() it; NULL when *n == 0), *n records in
 * the order appended, *dropped records lost since the last drain. The
 * buffer empties (it keeps its memory for the next profile). */
void et_prof_drain(et_prof_record **out, int64_t *n, int64_t *dropped);

/* Counters sampled around every profiled job: out = {hits, misses, evictions}
 * of the primitive cache. The queue does not know the backends, so whoever
 * enables profiling registers the source (bind_queue.c: the onednn cache).
 * NULL: zeros. */
typedef void (*et_prof_counter_fn)(int64_t out[3]);
void et_prof_set_counter_source(et_prof_counter_fn fn);
void et_prof_counters(int64_t out[3]);

/* A CPU range inside C:  int64_t t0 = et_prof_begin(); work;
 * et_prof_end(t0, "quantize.input", "int8", bytes);  -- both no-ops when off
 * (t0 == 0). */
static inline int64_t et_prof_begin(void)
{
    return et_prof_enabled() ? et_prof_now() : 0;
}
void et_prof_cpu_record(int64_t t0, const char *label, const char *precision, int64_t bytes);
static inline void et_prof_end(int64_t t0, const char *label, const char *precision,
                               int64_t bytes)
{
    if (t0) et_prof_cpu_record(t0, label, precision, bytes);
}

#endif
