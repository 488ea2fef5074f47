/* queue.c - the accelerator offload queue; the contract is in queue.h.
 *
 * Layout: a fixed ring of `capacity` slots. Ticket t (1, 2, 3, ...) lives in
 * slot (t - 1) % capacity from submit until the worker has finished it, so
 *   jobs in flight = submitted - completed <= capacity
 * and the job the worker runs next is ticket completed + 1. The worker reads
 * the slot's function and argument bytes in place (the argument pointer it
 * passes to the job points into the slot), which is why a slot is only
 * reused once its job has completed. One mutex guards every counter; three
 * condition variables carry the hand-offs:
 *   not_empty: submitter -> worker   ("there is a job")
 *   not_full : worker    -> submitters ("a slot is free"), also shutdown
 *   done     : worker    -> waiters  ("completed moved"), also shutdown
 *
 * Errors outlive their slot (the slot is reused as soon as the job has run),
 * so failures are kept in a small table of ET_QUEUE_ERR_MAX entries
 * (ticket, status, message copied from the worker's thread-local buffer).
 * An entry leaves the table when it is reported: by wait(ticket), or by
 * wait_all (which reports the first and forgets every entry it covers).
 * Overflow (more than ET_QUEUE_ERR_MAX failed jobs that nobody waited for):
 * the table keeps the OLDEST failures (so wait_all's "first unreported
 * error" stays right) and only counts the newer ones; wait() on such a
 * ticket returns ET_OK (its error is lost), and wait_all reports
 * "queue: N job failures were not recorded ..." once the table itself has
 * nothing older to report. Training code waits on every ticket, so the
 * table holds at most a few entries in practice.
 *
 * Shutdown: cancelled jobs never ran; they are contiguous (every ticket
 * after the last one that ran), so instead of table entries each ring slot
 * has a `cancelled` flag (no new job ever reuses a slot after shutdown).
 * Cancelled jobs count as completed (resolved), so after shutdown
 * completed == submitted and every waiter's loop ends.
 *
 * et_queue_close (an addition to the contract, used by the Python binding):
 * shuts down like et_queue_free but keeps the memory, so wait() still
 * reports the recorded errors / cancellations afterwards. et_queue_free
 * waits until every thread still inside a call on q (a waiter woken by the
 * shutdown) has left before destroying the mutex.
 *
 * Profiling (core/profile.h): submit_info copies the job's info, its submit
 * time and the submitting thread into the slot (`prof` = 1); the worker
 * timestamps the job around its run, samples the cache counters, and
 * appends one record outside q->mu. wait / wait_all read the clock before
 * and after blocking when the flag is on. Off: one relaxed atomic load per
 * submit and per wait, nothing else.
 */
#include "queue.h"

#include "../core/threads.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ET_QUEUE_ERR_MAX 64
#define ET_QUEUE_CAPACITY_MAX (1 << 20)

typedef struct et_job_slot {
    /* the argument bytes first, 64-byte aligned, so a job may cast `arg` to
     * any struct (doubles, int64, even SIMD-aligned members) */
    _Alignas(64) unsigned char arg[ET_JOB_ARG_MAX];
    et_job_fn fn;
    unsigned char cancelled;   /* set at shutdown, cleared once reported */
    unsigned char prof;        /* 1: record this job (profiling was on at submit) */
    et_job_info info;          /* valid when prof */
    int64_t t_submit;          /* ns, valid when prof */
    int64_t submit_thread;     /* valid when prof */
} et_job_slot;

typedef struct et_job_error {
    uint64_t ticket;
    et_status status;
    char message[ET_ERRMSG_MAX];
} et_job_error;

enum { ET_QUEUE_OPEN = 0, ET_QUEUE_CLOSING, ET_QUEUE_CLOSED };

struct et_queue {
    pthread_mutex_t mu;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    pthread_cond_t done;
    pthread_t worker;
    uint64_t id;                 /* 1, 2, ... in creation order (profile records) */
    int capacity;
    int state;                   /* ET_QUEUE_OPEN / CLOSING / CLOSED */
    int inside;                  /* threads inside submit/wait/wait_all/close */
    uint64_t submitted;          /* tickets issued: last ticket */
    uint64_t completed;          /* resolved (ran or cancelled), in order */
    uint64_t cancel_first;       /* first cancelled ticket, 0: none */
    et_job_slot *slots;          /* (capacity,) 64-byte aligned */
    int n_errors;
    uint64_t errors_dropped;     /* failures not recorded: table was full */
    uint64_t first_dropped;      /* ticket of the first of them */
    et_job_error errors[ET_QUEUE_ERR_MAX];   /* unordered */
};

static et_job_slot *slot_of(et_queue *q, uint64_t ticket)
{
    return &q->slots[(ticket - 1) % (uint64_t)q->capacity];
}

/* Called with q->mu held on the way out of every public call. */
static void leave(et_queue *q)
{
    q->inside--;
    if (q->inside == 0 && q->state == ET_QUEUE_CLOSED) pthread_cond_broadcast(&q->done);
}

/* The worker (holds q->mu except while a job runs). */
static void record_error(et_queue *q, uint64_t ticket, et_status st, const char *msg)
{
    if (q->n_errors == ET_QUEUE_ERR_MAX) {
        if (q->errors_dropped++ == 0) q->first_dropped = ticket;
        return;
    }
    et_job_error *e = &q->errors[q->n_errors++];
    e->ticket = ticket;
    e->status = st;
    if (msg && msg[0])
        snprintf(e->message, sizeof e->message, "%s", msg);
    else
        snprintf(e->message, sizeof e->message, "queue: job %llu failed (%s)",
                 (unsigned long long)ticket, et_status_name(st));
}

/* The worker, unlocked, after a profiled job: one JOB record. The slot
 * stays valid until `completed` moves past it. */
static void record_job(et_queue *q, uint64_t ticket, const et_job_slot *s, et_status st,
                       int64_t t0, int64_t t1, const int64_t c0[3], const int64_t c1[3])
{
    et_prof_record r;
    memset(&r, 0, sizeof r);
    r.kind = ET_PROF_JOB;
    r.status = (int32_t)st;
    r.label = s->info.label;
    r.precision = s->info.precision;
    r.backend = s->info.backend;
    r.queue = q->id;
    r.ticket = ticket;
    r.thread = s->submit_thread;
    r.t_submit = s->t_submit;
    r.t_start = t0;
    r.t_end = t1;
    r.flops = s->info.flops;
    r.bytes = s->info.bytes;
    r.cache_hits = c1[0] - c0[0];
    r.cache_misses = c1[1] - c0[1];
    r.cache_evictions = c1[2] - c0[2];
    et_prof_add(&r);
}

static void *worker_main(void *arg)
{
    et_queue *q = arg;
    et_threads_respect_limit();   /* the backends' OpenMP teams run on this thread */
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->state == ET_QUEUE_OPEN && q->completed == q->submitted)
            pthread_cond_wait(&q->not_empty, &q->mu);
        if (q->state != ET_QUEUE_OPEN) break;   /* the rest is cancelled by close */
        uint64_t ticket = q->completed + 1;
        et_job_slot *s = slot_of(q, ticket);
        pthread_mutex_unlock(&q->mu);

        /* the job runs unlocked: submitters keep filling other slots */
        et_error_clear();
        int64_t t0 = 0, c0[3] = {0, 0, 0};
        if (s->prof) {
            et_prof_counters(c0);
            t0 = et_prof_now();
        }
        et_status st = s->fn(s->arg);
        if (s->prof) {
            int64_t t1 = et_prof_now(), c1[3];
            et_prof_counters(c1);
            record_job(q, ticket, s, st, t0, t1, c0, c1);
        }

        pthread_mutex_lock(&q->mu);
        if (st != ET_OK) record_error(q, ticket, st, et_error_message());
        q->completed = ticket;
        pthread_cond_broadcast(&q->done);
        pthread_cond_broadcast(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

et_status et_queue_new(int capacity, et_queue **out)
{
    if (!out) return et_error(ET_ERR_VALUE, "queue: out is NULL");
    *out = NULL;
    if (capacity < 1 || capacity > ET_QUEUE_CAPACITY_MAX)
        return et_error(ET_ERR_VALUE, "queue: capacity %d must be in [1, %d]",
                        capacity, ET_QUEUE_CAPACITY_MAX);
    et_queue *q = calloc(1, sizeof *q);
    if (!q) return et_error(ET_ERR_NOMEM, "queue: cannot allocate the queue (%zu bytes)",
                            sizeof *q);
    size_t nbytes = (size_t)capacity * sizeof(et_job_slot);
    /* sizeof(et_job_slot) is a multiple of 64: aligned_alloc's size rule holds */
    q->slots = aligned_alloc(64, nbytes);
    if (q->slots) memset(q->slots, 0, nbytes);
    if (!q->slots) {
        free(q);
        return et_error(ET_ERR_NOMEM, "queue: cannot allocate %d job slots (%zu bytes)",
                        capacity, nbytes);
    }
    static atomic_uint_fast64_t next_id;
    q->id = (uint64_t)atomic_fetch_add(&next_id, 1) + 1;
    q->capacity = capacity;
    int rc = pthread_mutex_init(&q->mu, NULL);
    if (rc == 0 && (rc = pthread_cond_init(&q->not_empty, NULL)) != 0)
        pthread_mutex_destroy(&q->mu);
    if (rc == 0 && (rc = pthread_cond_init(&q->not_full, NULL)) != 0) {
        pthread_cond_destroy(&q->not_empty);
        pthread_mutex_destroy(&q->mu);
    }
    if (rc == 0 && (rc = pthread_cond_init(&q->done, NULL)) != 0) {
        pthread_cond_destroy(&q->not_full);
        pthread_cond_destroy(&q->not_empty);
        pthread_mutex_destroy(&q->mu);
    }
    if (rc != 0) {
        free(q->slots);
        free(q);
        return et_error(ET_ERR_INTERNAL, "queue: cannot create its locks (%s)", strerror(rc));
    }
    /* The worker blocks every signal: asynchronous signals (SIGINT, ...) go
     * to the Python threads, whose handlers expect to run there. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&q->worker, NULL, worker_main, q);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&q->done);
        pthread_cond_destroy(&q->not_full);
        pthread_cond_destroy(&q->not_empty);
        pthread_mutex_destroy(&q->mu);
        free(q->slots);
        free(q);
        return et_error(ET_ERR_BACKEND, "queue: cannot start the worker thread (%s)",
                        strerror(rc));
    }
    *out = q;
    return ET_OK;
}

static int on_worker(et_queue *q)
{
    return pthread_equal(pthread_self(), q->worker);
}

void et_queue_close(et_queue *q)
{
    /* a job shutting down its own queue cannot join itself: no-op */
    if (!q || on_worker(q)) return;
    pthread_mutex_lock(&q->mu);
    q->inside++;
    if (q->state != ET_QUEUE_OPEN) {
        /* another thread shuts it down (or did): wait until it is done */
        while (q->state != ET_QUEUE_CLOSED) pthread_cond_wait(&q->done, &q->mu);
        leave(q);
        pthread_mutex_unlock(&q->mu);
        return;
    }
    q->state = ET_QUEUE_CLOSING;
    pthread_cond_broadcast(&q->not_empty);   /* worker: stop after the running job */
    pthread_cond_broadcast(&q->not_full);    /* blocked submitters: cancelled */
    pthread_mutex_unlock(&q->mu);

    pthread_join(q->worker, NULL);           /* the running job finishes */

    pthread_mutex_lock(&q->mu);
    if (q->completed < q->submitted) {
        q->cancel_first = q->completed + 1;
        for (uint64_t t = q->cancel_first; t <= q->submitted; t++)
            slot_of(q, t)->cancelled = 1;
        q->completed = q->submitted;
    }
    q->state = ET_QUEUE_CLOSED;
    pthread_cond_broadcast(&q->done);        /* every waiter: its job is resolved */
    leave(q);
    pthread_mutex_unlock(&q->mu);
}

void et_queue_free(et_queue *q)
{
    /* from a job of q itself: it cannot join itself nor free the memory it
     * runs from, so q is left alone (leaked) rather than crash */
    if (!q || on_worker(q)) return;
    et_queue_close(q);
    /* waiters woken by the shutdown may still be reading their status */
    pthread_mutex_lock(&q->mu);
    while (q->inside > 0) pthread_cond_wait(&q->done, &q->mu);
    pthread_mutex_unlock(&q->mu);
    pthread_cond_destroy(&q->done);
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->not_empty);
    pthread_mutex_destroy(&q->mu);
    free(q->slots);
    free(q);
}

et_status et_queue_submit(et_queue *q, et_job_fn fn, const void *arg, size_t arg_size,
                          uint64_t *ticket)
{
    static const et_job_info unlabelled = {NULL, NULL, NULL, -1, -1};
    return et_queue_submit_info(q, fn, arg, arg_size, et_prof_enabled() ? &unlabelled : NULL,
                                ticket);
}

et_status et_queue_submit_info(et_queue *q, et_job_fn fn, const void *arg, size_t arg_size,
                               const et_job_info *info, uint64_t *ticket)
{
    /* the submit time is the request's: back-pressure counts as queueing */
    const int64_t t_submit = info ? et_prof_now() : 0;
    if (!q || !fn || !ticket || (arg_size > 0 && !arg))
        return et_error(ET_ERR_VALUE, "queue: submit with a NULL queue, job, ticket or argument");
    if (arg_size > ET_JOB_ARG_MAX)
        return et_error(ET_ERR_VALUE, "queue: job argument of %zu bytes exceeds ET_JOB_ARG_MAX "
                        "(%d bytes)", arg_size, ET_JOB_ARG_MAX);
    pthread_mutex_lock(&q->mu);
    q->inside++;
    if (q->state == ET_QUEUE_OPEN && q->submitted - q->completed == (uint64_t)q->capacity
        && on_worker(q)) {
        leave(q);
        pthread_mutex_unlock(&q->mu);
        return et_error(ET_ERR_INTERNAL, "queue: a job submitted to its own full queue "
                        "(capacity %d): it would wait for itself", q->capacity);
    }
    while (q->state == ET_QUEUE_OPEN && q->submitted - q->completed == (uint64_t)q->capacity)
        pthread_cond_wait(&q->not_full, &q->mu);   /* back-pressure */
    if (q->state != ET_QUEUE_OPEN) {
        leave(q);
        pthread_mutex_unlock(&q->mu);
        return et_error(ET_ERR_CANCELLED, "queue: submit after shutdown (job cancelled)");
    }
    uint64_t t = q->submitted + 1;
    et_job_slot *s = slot_of(q, t);
    s->fn = fn;
    s->cancelled = 0;
    s->prof = info != NULL;
    if (info) {
        s->info = *info;
        s->t_submit = t_submit;
        s->submit_thread = et_prof_thread();
    }
    if (arg_size) memcpy(s->arg, arg, arg_size);
    q->submitted = t;
    pthread_cond_signal(&q->not_empty);
    leave(q);
    pthread_mutex_unlock(&q->mu);
    *ticket = t;
    return ET_OK;
}

/* With q->mu held, for a resolved ticket: its unreported status (removing
 * it), ET_OK if none. Message into msg[ET_ERRMSG_MAX]. */
static et_status take_status(et_queue *q, uint64_t t, char *msg)
{
    if (q->cancel_first && t >= q->cancel_first) {
        et_job_slot *s = slot_of(q, t);
        if (!s->cancelled) return ET_OK;
        s->cancelled = 0;
        snprintf(msg, ET_ERRMSG_MAX, "queue: job %llu cancelled by shutdown",
                 (unsigned long long)t);
        return ET_ERR_CANCELLED;
    }
    for (int i = 0; i < q->n_errors; i++) {
        if (q->errors[i].ticket != t) continue;
        et_status st = q->errors[i].status;
        memcpy(msg, q->errors[i].message, ET_ERRMSG_MAX);
        q->errors[i] = q->errors[--q->n_errors];
        return st;
    }
    return ET_OK;
}

/* A WAIT record: the calling thread was in wait / wait_all from t0 to now.
 * Takes the queue's id, not q: it runs after leave(), when et_queue_free may
 * already have freed q (found by ThreadSanitizer, csrc/tests/queue_stress.c
 * free_with_waiter: a read of q->id racing free(q)). */
static void record_wait(uint64_t queue_id, const char *label, uint64_t ticket, et_status st,
                        int64_t t0)
{
    et_prof_record r;
    memset(&r, 0, sizeof r);
    r.kind = ET_PROF_WAIT;
    r.status = (int32_t)st;
    r.label = label;
    r.queue = queue_id;
    r.ticket = ticket;
    r.thread = et_prof_thread();
    r.t_submit = r.t_start = t0;
    r.t_end = et_prof_now();
    r.flops = r.bytes = -1;
    et_prof_add(&r);
}

et_status et_queue_wait(et_queue *q, uint64_t ticket)
{
    if (!q) return et_error(ET_ERR_VALUE, "queue: wait on a NULL queue");
    const int64_t t0 = et_prof_begin();
    char msg[ET_ERRMSG_MAX];
    pthread_mutex_lock(&q->mu);
    if (ticket == 0 || ticket > q->submitted) {
        uint64_t issued = q->submitted;
        pthread_mutex_unlock(&q->mu);
        return et_error(ET_ERR_VALUE, "queue: wait on ticket %llu, which was never issued "
                        "(tickets 1..%llu issued)", (unsigned long long)ticket,
                        (unsigned long long)issued);
    }
    if (ticket > q->completed && on_worker(q)) {
        pthread_mutex_unlock(&q->mu);
        return et_error(ET_ERR_INTERNAL, "queue: a job waits on ticket %llu of its own queue: "
                        "it would wait for itself", (unsigned long long)ticket);
    }
    q->inside++;
    while (q->completed < ticket) pthread_cond_wait(&q->done, &q->mu);
    et_status st = take_status(q, ticket, msg);
    const uint64_t qid = q->id;   /* q may be freed once we have left */
    leave(q);
    pthread_mutex_unlock(&q->mu);
    if (t0) record_wait(qid, "queue.wait", ticket, st, t0);
    if (st != ET_OK) et_error_set_message(msg);
    return st;
}

et_status et_queue_wait_all(et_queue *q)
{
    if (!q) return et_error(ET_ERR_VALUE, "queue: wait_all on a NULL queue");
    const int64_t t0 = et_prof_begin();
    char msg[ET_ERRMSG_MAX];
    et_status st = ET_OK;
    pthread_mutex_lock(&q->mu);
    uint64_t upto = q->submitted;   /* "every job submitted so far" */
    if (upto > q->completed && on_worker(q)) {
        pthread_mutex_unlock(&q->mu);
        return et_error(ET_ERR_INTERNAL, "queue: a job calls wait_all on its own queue: "
                        "it would wait for itself");
    }
    q->inside++;
    while (q->completed < upto) pthread_cond_wait(&q->done, &q->mu);

    /* 1. the oldest recorded failure (they all precede any cancellation) */
    int first = -1;
    for (int i = 0; i < q->n_errors; i++)
        if (q->errors[i].ticket <= upto &&
            (first < 0 || q->errors[i].ticket < q->errors[first].ticket)) first = i;
    if (first >= 0) {
        st = q->errors[first].status;
        memcpy(msg, q->errors[first].message, ET_ERRMSG_MAX);
    }
    /* forget every failure up to `upto` */
    for (int i = 0; i < q->n_errors;)
        if (q->errors[i].ticket <= upto) q->errors[i] = q->errors[--q->n_errors];
        else i++;
    /* 2. failures that did not fit in the table (all newer than the kept ones) */
    if (q->errors_dropped && q->first_dropped <= upto) {
        if (st == ET_OK) {
            st = ET_ERR_BACKEND;
            snprintf(msg, sizeof msg, "queue: %llu job failures were not recorded, the first "
                     "in job %llu (more than %d failed jobs were not waited for)",
                     (unsigned long long)q->errors_dropped,
                     (unsigned long long)q->first_dropped, ET_QUEUE_ERR_MAX);
        }
        q->errors_dropped = 0;
    }
    /* 3. cancelled jobs */
    if (q->cancel_first) {
        for (uint64_t t = q->cancel_first; t <= upto; t++) {
            et_job_slot *s = slot_of(q, t);
            if (!s->cancelled) continue;
            s->cancelled = 0;
            if (st == ET_OK) {
                st = ET_ERR_CANCELLED;
                snprintf(msg, sizeof msg, "queue: job %llu cancelled by shutdown",
                         (unsigned long long)t);
            }
        }
    }
    const uint64_t qid = q->id;   /* q may be freed once we have left */
    leave(q);
    pthread_mutex_unlock(&q->mu);
    if (t0) record_wait(qid, "queue.wait_all", upto, st, t0);
    if (st != ET_OK) et_error_set_message(msg);
    return st;
}

uint64_t et_queue_submitted(et_queue *q)
{
    if (!q) return 0;
    pthread_mutex_lock(&q->mu);
    uint64_t v = q->submitted;
    pthread_mutex_unlock(&q->mu);
    return v;
}

uint64_t et_queue_completed(et_queue *q)
{
    if (!q) return 0;
    pthread_mutex_lock(&q->mu);
    uint64_t v = q->completed;
    pthread_mutex_unlock(&q->mu);
    return v;
}

int et_queue_capacity(et_queue *q)
{
    return q ? q->capacity : 0;
}

uint64_t et_queue_id(et_queue *q)
{
    return q ? q->id : 0;
}

/* The process-wide queue. It lives until the process exits: joining its
 * worker from an atexit handler could deadlock (a job may be running code
 * that is being torn down), and the OS reclaims it anyway. */
static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static et_queue *default_queue;
static et_status default_status;
static char default_message[ET_ERRMSG_MAX];

static void default_init(void)
{
    default_status = et_queue_new(64, &default_queue);
    if (default_status != ET_OK)
        snprintf(default_message, sizeof default_message, "%s", et_error_message());
}

et_queue *et_queue_default(void)
{
    pthread_once(&default_once, default_init);
    if (!default_queue) et_error_set_message(default_message);
    return default_queue;
}
