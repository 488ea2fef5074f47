/* queue_stress.c - hammers the offload queue (csrc/queue/queue.c) from many
 * threads at once, for ThreadSanitizer (`make test-tsan`) and AddressSanitizer
 * (`make test-asan`). Not part of the extension (setup.py skips csrc/tests/).
 *
 * Why a C driver besides tests/test_queue.py: under Python the GIL serialises
 * the callers, so the queue only ever sees one Python thread inside submit /
 * wait at a time (the others are blocked on the GIL, not on q->mu). Here every
 * public call races every other one, the patterns of test_queue.py included:
 * ordering, error reporting (once), wait_all, back-pressure on tiny rings,
 * close() while producers submit and waiters wait, two closers at once,
 * et_queue_free while a waiter is still inside wait (profiling on), jobs that
 * call their own queue, the once-only default queue, the profiler buffer
 * drained while jobs append to it, and queues created / freed concurrently.
 * The job functions write plain (non-atomic) memory that the submitter reads
 * after its wait, so a missing happens-before edge in the queue is a data race
 * that TSan reports.
 *
 * Every check failure prints a line and makes the exit status 1; a sanitizer
 * report exits through the sanitizer (the Makefile sets halt_on_error).
 *
 * usage: queue_stress [--scale S] [--plant-race]
 *   --scale S      multiplies the iteration counts (default 1: ~10 s under TSan
 *                  on 2 busy cores)
 *   --plant-race   a job and the main thread touch one variable unsynchronised:
 *                  the Makefile runs this to show TSan is live (it must fail)
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../queue/queue.h"

static atomic_int failures;
static int scale = 1;

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "queue_stress: FAILED %s:%d: (%s) ", __func__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); \
    atomic_fetch_add(&failures, 1); } } while (0)

static void sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {}
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(t, NULL, fn, arg) != 0) {
        fprintf(stderr, "queue_stress: pthread_create failed\n");
        exit(2);
    }
}

static et_queue *new_queue(int capacity)
{
    et_queue *q = NULL;
    if (et_queue_new(capacity, &q) != ET_OK) {
        fprintf(stderr, "queue_stress: et_queue_new(%d): %s\n", capacity, et_error_message());
        exit(2);
    }
    return q;
}

/* ------------------------------------------------------------------ jobs */

static et_status job_noop(void *arg) { (void)arg; return ET_OK; }

typedef struct { int64_t us; } sleep_arg;
static et_status job_sleep(void *arg) { sleep_us(((sleep_arg *)arg)->us); return ET_OK; }

typedef struct { char message[96]; } fail_arg;
static et_status job_fail(void *arg)
{
    return et_error(ET_ERR_BACKEND, "%s", ((fail_arg *)arg)->message);
}

/* buf[0] counts the records, buf[1 + buf[0]] = value: plain memory that only
 * the worker writes and the submitter reads after waiting. */
typedef struct { int64_t *buf; int64_t value; } record_arg;
static et_status job_record(void *arg)
{
    record_arg *a = arg;
    a->buf[1 + a->buf[0]] = a->value;
    a->buf[0]++;
    return ET_OK;
}

static uint64_t submit(et_queue *q, et_job_fn fn, const void *arg, size_t size)
{
    uint64_t t = 0;
    et_status st = et_queue_submit(q, fn, arg, size, &t);
    CHECK(st == ET_OK, "submit: %s (%s)", et_status_name(st), et_error_message());
    return t;
}

static uint64_t submit_record(et_queue *q, int64_t *buf, int64_t value)
{
    record_arg a = {buf, value};
    return submit(q, job_record, &a, sizeof a);
}

/* buf[1 .. buf[0]] == 0, 1, 2, ... */
static int records_in_order(const int64_t *buf)
{
    for (int64_t i = 0; i < buf[0]; i++)
        if (buf[1 + i] != i) return 0;
    return 1;
}

/* ---------------------------------------- 1. order, errors, back-pressure */

enum { ORDER_PRODUCERS = 4, FAIL_PENDING_MAX = 8 };

typedef struct {
    et_queue *q;
    int k;
    atomic_int *stop;
} producer_ctx;

static void check_failed_wait(et_queue *q, uint64_t t, const char *want)
{
    et_status st = et_queue_wait(q, t);
    CHECK(st == ET_ERR_BACKEND && strcmp(et_error_message(), want) == 0,
          "wait(%llu) = %s '%s', want backend error '%s'", (unsigned long long)t,
          et_status_name(st), et_error_message(), want);
    st = et_queue_wait(q, t);   /* reported once */
    CHECK(st == ET_OK, "second wait(%llu) = %s", (unsigned long long)t, et_status_name(st));
}

static void *order_producer(void *p)
{
    producer_ctx *c = p;
    const int n = 2000 * scale;
    int64_t *buf = calloc((size_t)n + 1, sizeof *buf);
    uint64_t fail_t[FAIL_PENDING_MAX];
    char fail_msg[FAIL_PENDING_MAX][96];
    int nfail = 0;
    int64_t nrec = 0;
    uint64_t last_rec = 0;
    for (int j = 0; j < n; j++) {
        if (j % 7 == 3) {
            if (nfail == FAIL_PENDING_MAX) {   /* keep the error table below 64 */
                check_failed_wait(c->q, fail_t[0], fail_msg[0]);
                memmove(fail_t, fail_t + 1, (FAIL_PENDING_MAX - 1) * sizeof *fail_t);
                memmove(fail_msg, fail_msg + 1, (FAIL_PENDING_MAX - 1) * sizeof *fail_msg);
                nfail--;
            }
            fail_arg a;
            snprintf(a.message, sizeof a.message, "producer %d job %d on fire", c->k, j);
            snprintf(fail_msg[nfail], sizeof fail_msg[nfail], "%s", a.message);
            fail_t[nfail++] = submit(c->q, job_fail, &a, sizeof a);
        } else if (j % 11 == 5) {
            sleep_arg a = {20};
            submit(c->q, job_sleep, &a, sizeof a);
        } else {
            last_rec = submit_record(c->q, buf, nrec++);
        }
        if (j % 64 == 0 && last_rec) {
            et_status st = et_queue_wait(c->q, last_rec);
            CHECK(st == ET_OK, "wait(record) = %s", et_status_name(st));
            /* every record this producer submitted so far has run */
            CHECK(buf[0] == nrec, "producer %d: %lld records after wait, want %lld", c->k,
                  (long long)buf[0], (long long)nrec);
        }
    }
    for (int i = 0; i < nfail; i++) check_failed_wait(c->q, fail_t[i], fail_msg[i]);
    et_status st = et_queue_wait(c->q, last_rec);
    CHECK(st == ET_OK, "final wait = %s", et_status_name(st));
    CHECK(buf[0] == nrec && records_in_order(buf), "producer %d: records out of order or lost",
          c->k);
    free(buf);
    return NULL;
}

/* reads the counters while everyone else works: monotonic, completed <= submitted */
static void *observer(void *p)
{
    producer_ctx *c = p;
    uint64_t last_s = 0, last_c = 0;
    while (!atomic_load(c->stop)) {
        uint64_t done = et_queue_completed(c->q);   /* first: done <= submitted later */
        uint64_t sub = et_queue_submitted(c->q);
        CHECK(done <= sub && done >= last_c && sub >= last_s,
              "counters: completed %llu submitted %llu (before %llu, %llu)",
              (unsigned long long)done, (unsigned long long)sub, (unsigned long long)last_c,
              (unsigned long long)last_s);
        CHECK(et_queue_capacity(c->q) == 3, "capacity changed");
        last_s = sub;
        last_c = done;
    }
    return NULL;
}

static void scenario_order_and_errors(void)
{
    et_queue *q = new_queue(3);   /* tiny ring: producers block on back-pressure */
    atomic_int stop = 0;
    pthread_t th[ORDER_PRODUCERS], obs;
    producer_ctx ctx[ORDER_PRODUCERS], oc = {q, -1, &stop};
    start(&obs, observer, &oc);
    for (int k = 0; k < ORDER_PRODUCERS; k++) {
        ctx[k] = (producer_ctx){q, k, &stop};
        start(&th[k], order_producer, &ctx[k]);
    }
    for (int k = 0; k < ORDER_PRODUCERS; k++) pthread_join(th[k], NULL);
    atomic_store(&stop, 1);
    pthread_join(obs, NULL);
    CHECK(et_queue_wait_all(q) == ET_OK, "wait_all: %s", et_error_message());
    CHECK(et_queue_completed(q) == et_queue_submitted(q), "not all completed");
    et_queue_free(q);
}

/* ------------------------------------- 2. wait / wait_all from many threads */

static void *noop_producer(void *p)
{
    producer_ctx *c = p;
    int64_t *buf = calloc(1001, sizeof *buf);
    for (int round = 0; round < scale; round++) {
        buf[0] = 0;
        uint64_t t = 0;
        for (int i = 0; i < 1000; i++) {
            if (i % 3) submit(c->q, job_noop, NULL, 0);
            else t = submit_record(c->q, buf, i / 3);
        }
        CHECK(et_queue_wait(c->q, t) == ET_OK, "wait: %s", et_error_message());
        CHECK(buf[0] == 334 && records_in_order(buf), "producer %d: records", c->k);
    }
    free(buf);
    return NULL;
}

static void *all_waiter(void *p)
{
    producer_ctx *c = p;
    unsigned seed = (unsigned)c->k;
    while (!atomic_load(c->stop)) {
        et_status st = et_queue_wait_all(c->q);
        CHECK(st == ET_OK, "wait_all = %s", et_status_name(st));
        uint64_t sub = et_queue_submitted(c->q);
        if (sub) {
            uint64_t t = 1 + (uint64_t)rand_r(&seed) % sub;
            st = et_queue_wait(c->q, t);
            CHECK(st == ET_OK, "wait(%llu) = %s", (unsigned long long)t, et_status_name(st));
        }
    }
    return NULL;
}

static void scenario_concurrent_waits(void)
{
    et_queue *q = new_queue(5);
    atomic_int stop = 0;
    pthread_t prod[3], wait[2];
    producer_ctx pc[3], wc[2];
    for (int k = 0; k < 2; k++) {
        wc[k] = (producer_ctx){q, k, &stop};
        start(&wait[k], all_waiter, &wc[k]);
    }
    for (int k = 0; k < 3; k++) {
        pc[k] = (producer_ctx){q, k, &stop};
        start(&prod[k], noop_producer, &pc[k]);
    }
    for (int k = 0; k < 3; k++) pthread_join(prod[k], NULL);
    atomic_store(&stop, 1);
    for (int k = 0; k < 2; k++) pthread_join(wait[k], NULL);
    CHECK(et_queue_submitted(q) == (uint64_t)3 * 1000 * scale, "submitted %llu",
          (unsigned long long)et_queue_submitted(q));
    et_queue_free(q);
}

/* ------------------------------- 3. close while producers and waiters work */

typedef struct {
    et_queue *q;
    int k;
    int64_t *buf;   /* (1 + 100000,) */
    atomic_int *closed;
} close_ctx;

static void *close_producer(void *p)
{
    close_ctx *c = p;
    int64_t n = 0, nrec = 0;
    for (;;) {
        uint64_t t = 0;
        et_status st;
        if (n % 4 == 3) {
            sleep_arg a = {30};
            st = et_queue_submit(c->q, job_sleep, &a, sizeof a, &t);
        } else {
            record_arg a = {c->buf, nrec};
            st = et_queue_submit(c->q, job_record, &a, sizeof a, &t);
            if (st == ET_OK) nrec++;
        }
        if (st == ET_ERR_CANCELLED) {
            CHECK(strstr(et_error_message(), "after shutdown") != NULL, "submit: '%s'",
                  et_error_message());
            CHECK(atomic_load(c->closed), "cancelled before close");
            break;
        }
        CHECK(st == ET_OK, "submit = %s", et_status_name(st));
        n++;
        if (n >= 100000) break;
        if (n % 50 == 0) {
            st = et_queue_wait(c->q, t);
            CHECK(st == ET_OK || (st == ET_ERR_CANCELLED &&
                                  strstr(et_error_message(), "cancelled by shutdown")),
                  "wait = %s '%s'", et_status_name(st), et_error_message());
        }
    }
    return NULL;
}

static void *close_waiter(void *p)
{
    close_ctx *c = p;
    for (int i = 0; i < 1000000; i++) {
        int done = atomic_load(c->closed);
        uint64_t t = et_queue_submitted(c->q);
        if (t) {
            et_status st = et_queue_wait(c->q, t);
            CHECK(st == ET_OK || st == ET_ERR_CANCELLED, "wait = %s", et_status_name(st));
        }
        if (done) break;   /* one more wait after close: must not block */
    }
    return NULL;
}

static void *closer(void *p)
{
    close_ctx *c = p;
    atomic_store(c->closed, 1);
    et_queue_close(c->q);
    CHECK(et_queue_completed(c->q) == et_queue_submitted(c->q), "close left jobs unresolved");
    return NULL;
}

static void scenario_close_while_busy(void)
{
    for (int round = 0; round < 10 * scale; round++) {
        et_queue *q = new_queue(1 + round % 8);
        atomic_int closed = 0;
        pthread_t prod[3], wait[2], cl[2];
        close_ctx pc[3], wc[2], cc[2];
        for (int k = 0; k < 3; k++) {
            pc[k] = (close_ctx){q, k, calloc(100001, sizeof(int64_t)), &closed};
            start(&prod[k], close_producer, &pc[k]);
        }
        for (int k = 0; k < 2; k++) {
            wc[k] = (close_ctx){q, k, NULL, &closed};
            start(&wait[k], close_waiter, &wc[k]);
        }
        sleep_us(2000 + 500 * (round % 5));
        for (int k = 0; k < 2; k++) {   /* two closers at once */
            cc[k] = (close_ctx){q, k, NULL, &closed};
            start(&cl[k], closer, &cc[k]);
        }
        for (int k = 0; k < 2; k++) pthread_join(cl[k], NULL);
        for (int k = 0; k < 3; k++) pthread_join(prod[k], NULL);
        for (int k = 0; k < 2; k++) pthread_join(wait[k], NULL);
        uint64_t t;
        CHECK(et_queue_submit(q, job_noop, NULL, 0, &t) == ET_ERR_CANCELLED,
              "submit after close");
        et_status st = et_queue_wait_all(q);
        CHECK(st == ET_OK || st == ET_ERR_CANCELLED, "wait_all = %s", et_status_name(st));
        CHECK(et_queue_wait_all(q) == ET_OK, "second wait_all reports again");
        for (int k = 0; k < 3; k++) {
            CHECK(records_in_order(pc[k].buf), "round %d producer %d: records", round, k);
            free(pc[k].buf);
        }
        et_queue_free(q);
    }
}

/* ------------------- 4. free while a waiter is inside wait (profiling on) */

typedef struct {
    et_queue *q;
    uint64_t ticket;   /* 0: wait_all */
    atomic_int entered;
    et_status st;
} free_ctx;

static void *free_waiter(void *p)
{
    free_ctx *c = p;
    atomic_store(&c->entered, 1);
    c->st = c->ticket ? et_queue_wait(c->q, c->ticket) : et_queue_wait_all(c->q);
    return NULL;
}

static void scenario_free_with_waiter(void)
{
    CHECK(et_prof_enable(1 << 16) == ET_OK, "prof enable");
    for (int round = 0; round < 8 * scale; round++) {
        et_queue *q = new_queue(4);
        sleep_arg a = {20000};
        uint64_t t_sleep = 0, t_last = 0;
        et_queue_submit_info(q, job_sleep, &a, sizeof a,
                             &(et_job_info){"stress.sleep", NULL, NULL, -1, -1}, &t_sleep);
        t_last = submit(q, job_noop, NULL, 0);
        free_ctx c = {q, round % 2 ? t_last : 0, 0, ET_OK};
        pthread_t w;
        start(&w, free_waiter, &c);
        while (!atomic_load(&c.entered)) sleep_us(100);
        /* the waiter is (all but certainly) blocked inside wait: et_queue_free
         * must wait for it to leave before destroying q */
        sleep_us(5000);
        et_queue_free(q);
        pthread_join(w, NULL);
        CHECK(c.st == ET_ERR_CANCELLED || c.st == ET_OK, "waiter got %s",
              et_status_name(c.st));
    }
    et_prof_disable();
    et_prof_record *r;
    int64_t n, dropped;
    et_prof_drain(&r, &n, &dropped);
    free(r);
}

/* -------------------------------------- 5. jobs that call their own queue */

enum { SELF_SUBMIT_FULL, SELF_WAIT, SELF_WAIT_ALL, SELF_CLOSE, SELF_FREE };
typedef struct { et_queue *q; int mode; } self_arg;

static et_status job_self(void *arg)
{
    self_arg *a = arg;
    uint64_t t;
    et_status st = ET_OK;
    switch (a->mode) {
    case SELF_SUBMIT_FULL: st = et_queue_submit(a->q, job_noop, NULL, 0, &t); break;
    case SELF_WAIT: st = et_queue_wait(a->q, et_queue_submitted(a->q)); break;
    case SELF_WAIT_ALL: st = et_queue_wait_all(a->q); break;
    case SELF_CLOSE: et_queue_close(a->q); return ET_OK;   /* no-op on the worker */
    case SELF_FREE: et_queue_free(a->q); return ET_OK;
    }
    if (st != ET_ERR_INTERNAL)
        return et_error(ET_ERR_VALUE, "job_self mode %d: got %s, want internal error",
                        a->mode, et_status_name(st));
    return ET_OK;
}

static void scenario_self_calls(void)
{
    et_queue *q1 = new_queue(1);
    self_arg a = {q1, SELF_SUBMIT_FULL};
    uint64_t t = submit(q1, job_self, &a, sizeof a);
    CHECK(et_queue_wait(q1, t) == ET_OK, "%s", et_error_message());
    et_queue_free(q1);

    et_queue *q = new_queue(4);
    for (int mode = SELF_WAIT; mode <= SELF_FREE; mode++) {
        self_arg b = {q, mode};
        t = submit(q, job_self, &b, sizeof b);
        submit(q, job_noop, NULL, 0);   /* a later ticket, so SELF_WAIT waits ahead */
        CHECK(et_queue_wait_all(q) == ET_OK, "mode %d: %s", mode, et_error_message());
    }
    t = submit(q, job_noop, NULL, 0);   /* close / free from a job were no-ops */
    CHECK(et_queue_wait(q, t) == ET_OK, "queue dead after self close/free");
    et_queue_free(q);
}

/* ----------------------------------------------- 6. the default queue */

static et_queue *default_seen[8];

static void *default_user(void *p)
{
    int k = (int)(intptr_t)p;
    et_queue *q = et_queue_default();
    default_seen[k] = q;
    CHECK(q != NULL, "default queue: %s", et_error_message());
    if (!q) return NULL;
    int64_t buf[1 + 100] = {0};
    uint64_t t = 0;
    for (int i = 0; i < 100; i++) t = submit_record(q, buf, i);
    CHECK(et_queue_wait(q, t) == ET_OK, "wait");
    CHECK(buf[0] == 100 && records_in_order(buf), "default queue records");
    return NULL;
}

static void scenario_default_queue(void)
{
    pthread_t th[8];
    for (int k = 0; k < 8; k++) start(&th[k], default_user, (void *)(intptr_t)k);
    for (int k = 0; k < 8; k++) pthread_join(th[k], NULL);
    for (int k = 1; k < 8; k++) CHECK(default_seen[k] == default_seen[0], "two default queues");
}

/* ----------------------- 7. profiler records appended and drained at once */

typedef struct {
    et_queue *q;
    atomic_int *stop;
    int64_t jobs, waits;
} drain_ctx;

static void count_records(drain_ctx *c)
{
    et_prof_record *r;
    int64_t n, dropped;
    et_prof_drain(&r, &n, &dropped);
    CHECK(dropped == 0, "%lld records dropped", (long long)dropped);
    for (int64_t i = 0; i < n; i++) {
        if (r[i].kind == ET_PROF_JOB && r[i].label && !strcmp(r[i].label, "stress.job")) {
            CHECK(r[i].t_submit <= r[i].t_start && r[i].t_start <= r[i].t_end,
                  "job record times");
            c->jobs++;
        }
        if (r[i].kind == ET_PROF_WAIT) c->waits++;
    }
    free(r);
}

static void *drainer(void *p)
{
    drain_ctx *c = p;
    while (!atomic_load(c->stop)) {
        count_records(c);
        sleep_us(200);
    }
    return NULL;
}

static void *prof_producer(void *p)
{
    producer_ctx *c = p;
    const et_job_info info = {"stress.job", "fp32", "none", 10, 20};
    for (int i = 0; i < 1000 * scale; i++) {
        uint64_t t;
        CHECK(et_queue_submit_info(c->q, job_noop, NULL, 0, &info, &t) == ET_OK, "submit");
        if (i % 8 == 0) CHECK(et_queue_wait(c->q, t) == ET_OK, "wait");
    }
    return NULL;
}

static void scenario_profiler(void)
{
    CHECK(et_prof_enable(1 << 20) == ET_OK, "prof enable");
    et_queue *q = new_queue(16);
    atomic_int stop = 0;
    drain_ctx dc = {q, &stop, 0, 0};
    pthread_t d, prod[3];
    producer_ctx pc[3];
    start(&d, drainer, &dc);
    for (int k = 0; k < 3; k++) {
        pc[k] = (producer_ctx){q, k, &stop};
        start(&prod[k], prof_producer, &pc[k]);
    }
    for (int k = 0; k < 3; k++) pthread_join(prod[k], NULL);
    CHECK(et_queue_wait_all(q) == ET_OK, "wait_all");
    atomic_store(&stop, 1);
    pthread_join(d, NULL);
    et_prof_disable();
    count_records(&dc);
    CHECK(dc.jobs == 3 * 1000 * scale, "%lld job records, want %d", (long long)dc.jobs,
          3 * 1000 * scale);
    CHECK(dc.waits >= 3 * 125 * scale, "%lld wait records", (long long)dc.waits);
    et_queue_free(q);
}

/* -------------------------------- 8. queues created and freed concurrently */

static void *queue_churn(void *p)
{
    int k = (int)(intptr_t)p;
    int64_t buf[1 + 20];
    for (int i = 0; i < 40 * scale; i++) {
        et_queue *q = new_queue(1 + (i + k) % 8);
        buf[0] = 0;
        for (int j = 0; j < 20; j++) {
            if (j % 5 == 0) {
                sleep_arg a = {50};
                submit(q, job_sleep, &a, sizeof a);
            }
            submit_record(q, buf, j);
        }
        if (i % 2) {
            CHECK(et_queue_wait_all(q) == ET_OK, "wait_all");
            CHECK(buf[0] == 20, "churn records");
        }
        et_queue_free(q);   /* odd i: with jobs pending, cancelled */
        CHECK(records_in_order(buf), "churn order");   /* the worker is joined */
    }
    return NULL;
}

static void scenario_queue_churn(void)
{
    pthread_t th[4];
    for (int k = 0; k < 4; k++) start(&th[k], queue_churn, (void *)(intptr_t)k);
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
}

/* ----------------------------------------------------- planted data race */

/* The job writes `racy` and then raises `ran` through a relaxed atomic, which
 * orders nothing for TSan; the main thread spins on it, then writes `racy`
 * too. The two writes are unordered, and the race is there on every run:
 * with a plain "submit; racy++; wait" it was there only when the worker took
 * the job before the main thread reached wait (on a quiet machine the main
 * thread got there first, and the mutex hand-off inside wait ordered the two
 * writes: CI saw no report). */
static int64_t racy;
static atomic_int ran;
static et_status job_racy(void *arg)
{
    (void)arg;
    racy++;
    atomic_store_explicit(&ran, 1, memory_order_relaxed);
    return ET_OK;
}

static int plant_race(void)
{
    et_queue *q = new_queue(4);
    for (int i = 0; i < 10; i++) {
        atomic_store_explicit(&ran, 0, memory_order_relaxed);
        uint64_t t = submit(q, job_racy, NULL, 0);
        while (!atomic_load_explicit(&ran, memory_order_relaxed)) sched_yield();
        racy++;   /* after the job's write, but not ordered with it */
        et_queue_wait(q, t);
    }
    et_queue_free(q);
    printf("queue_stress: planted race ran (racy = %lld); TSan should have reported it\n",
           (long long)racy);
    return 0;
}

/* ------------------------------------------------------------------ main */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--scale") && i + 1 < argc) scale = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--plant-race")) return plant_race();
        else {
            fprintf(stderr, "usage: %s [--scale S] [--plant-race]\n", argv[0]);
            return 2;
        }
    }
    if (scale < 1) scale = 1;
    static const struct { const char *name; void (*fn)(void); } scenarios[] = {
        {"order_and_errors", scenario_order_and_errors},
        {"concurrent_waits", scenario_concurrent_waits},
        {"close_while_busy", scenario_close_while_busy},
        {"free_with_waiter", scenario_free_with_waiter},
        {"self_calls", scenario_self_calls},
        {"default_queue", scenario_default_queue},
        {"profiler", scenario_profiler},
        {"queue_churn", scenario_queue_churn},
    };
    for (size_t i = 0; i < sizeof scenarios / sizeof *scenarios; i++) {
        double t0 = now_s();
        int before = atomic_load(&failures);
        scenarios[i].fn();
        printf("queue_stress: %-18s %s (%.2f s)\n", scenarios[i].name,
               atomic_load(&failures) == before ? "ok" : "FAILED", now_s() - t0);
        fflush(stdout);
    }
    int f = atomic_load(&failures);
    if (f) fprintf(stderr, "queue_stress: %d check(s) failed\n", f);
    return f ? 1 : 0;
}
