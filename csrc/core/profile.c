/* profile.c - the process-wide profile record buffer; contract in profile.h. */
#include "profile.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ET_PROF_INITIAL 4096   /* records allocated by the first append */

atomic_int et_prof_flag_;

static pthread_mutex_t prof_mu = PTHREAD_MUTEX_INITIALIZER;
static et_prof_record *buf;    /* (cap,) the first n used; NULL when empty */
static int64_t n_rec, cap, max_rec = 1 << 20, dropped;
static _Atomic(et_prof_counter_fn) counter_fn;

static int reserve_one(void);

int64_t et_prof_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t et_prof_thread(void)
{
    return (int64_t)(uintptr_t)pthread_self();
}

et_status et_prof_enable(int64_t max_records)
{
    if (max_records < 1)
        return et_error(ET_ERR_VALUE, "profiler: max_records must be >= 1, got %lld",
                        (long long)max_records);
    pthread_mutex_lock(&prof_mu);
    max_rec = max_records;
    /* allocate (and fault in) the first block now, not while recording */
    if (!buf && reserve_one()) memset(buf, 0, (size_t)cap * sizeof *buf);
    pthread_mutex_unlock(&prof_mu);
    atomic_store_explicit(&et_prof_flag_, 1, memory_order_release);
    return ET_OK;
}

void et_prof_disable(void)
{
    atomic_store_explicit(&et_prof_flag_, 0, memory_order_release);
}

/* With prof_mu held: room for one more record? Grows by doubling up to max_rec. */
static int reserve_one(void)
{
    if (n_rec >= max_rec) return 0;   /* max_rec may be below a kept buffer's cap */
    if (n_rec < cap) return 1;
    int64_t ncap = cap ? 2 * cap : ET_PROF_INITIAL;
    if (ncap > max_rec) ncap = max_rec;
    et_prof_record *nb = realloc(buf, (size_t)ncap * sizeof *nb);
    if (!nb) return 0;   /* the old buffer stays valid */
    buf = nb;
    cap = ncap;
    return 1;
}

void et_prof_add(const et_prof_record *r)
{
    pthread_mutex_lock(&prof_mu);
    if (reserve_one())
        buf[n_rec++] = *r;
    else
        dropped++;
    pthread_mutex_unlock(&prof_mu);
}

void et_prof_drain(et_prof_record **out, int64_t *n, int64_t *ndropped)
{
    /* copied out: the buffer itself stays allocated, so a later profile does
     * not allocate (and fault in fresh pages) while it records */
    pthread_mutex_lock(&prof_mu);
    et_prof_record *copy = n_rec ? malloc((size_t)n_rec * sizeof *copy) : NULL;
    if (copy) memcpy(copy, buf, (size_t)n_rec * sizeof *copy);
    *out = copy;
    *n = copy ? n_rec : 0;
    *ndropped = dropped + (copy ? 0 : n_rec);   /* no memory for the copy: dropped */
    n_rec = dropped = 0;
    pthread_mutex_unlock(&prof_mu);
}

void et_prof_set_counter_source(et_prof_counter_fn fn)
{
    atomic_store(&counter_fn, fn);
}

void et_prof_counters(int64_t out[3])
{
    et_prof_counter_fn fn = atomic_load_explicit(&counter_fn, memory_order_acquire);
    if (fn) fn(out);
    else out[0] = out[1] = out[2] = 0;
}

void et_prof_cpu_record(int64_t t0, const char *label, const char *precision, int64_t bytes)
{
    et_prof_record r;
    memset(&r, 0, sizeof r);
    r.kind = ET_PROF_CPU;
    r.status = ET_OK;
    r.label = label;
    r.precision = precision;
    r.thread = et_prof_thread();
    r.t_submit = r.t_start = t0;
    r.t_end = et_prof_now();
    r.flops = -1;
    r.bytes = bytes;
    et_prof_add(&r);
}
