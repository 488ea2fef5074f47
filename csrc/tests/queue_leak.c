/* queue_leak.c - 1,000,000 offload-queue jobs under LeakSanitizer (issue 6.6),
 * run by `make test-asan` (built with -fsanitize=address,undefined; LSan is
 * part of ASan and checks at exit, detect_leaks=1). Not part of the extension.
 *
 * What runs: the jobs go through 1,000 queues of 1,000 jobs each (so queue
 * creation and every way of ending a queue are repeated too). Each job gets a
 * heap payload that the submitter owns, as the Python binding holds operands:
 * it stays alive until the job's ticket has been waited (or the queue has been
 * closed / freed), then the submitter frees it. The job writes into it (a
 * record) or fails with a message (every 50th job; its wait reports it). The
 * queues end in four ways, in turn:
 *   0. wait_all, then et_queue_free
 *   1. et_queue_free with jobs still pending (they are cancelled)
 *   2. et_queue_close, wait on every remaining ticket (ok or cancelled), free
 *   3. profiling on: jobs submitted with their info, records drained, free
 * Exit status: 0, or 1 when a check fails; LSan makes it non-zero on any leak.
 * It prints RSS after the warm-up (the first 10 queues) and at the end (under
 * ASan RSS includes the allocator's quarantine of freed blocks, 256 MiB by
 * default, so there it is printed, not judged).
 *
 * usage: queue_leak [--jobs N] [--max-rss-growth-mib M] [--plant-leak]
 *   --jobs N       total jobs (default 1000000), in queues of 1,000
 *   --max-rss-growth-mib M
 *                  fail (exit 1) if RSS grows by more than M MiB after the
 *                  warm-up: the Makefile runs an unsanitized build with this,
 *                  since LSan only reports memory nobody points to, not a
 *                  buffer that keeps growing while still referenced
 *   --plant-leak   close a queue without freeing it: the Makefile runs this to
 *                  show LeakSanitizer is live (it must fail)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../queue/queue.h"

#define JOBS_PER_QUEUE 1000

static int failures;

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "queue_leak: FAILED %s:%d: (%s) ", __func__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); \
    if (++failures > 20) exit(1); } } while (0)

typedef struct { unsigned char *payload; size_t size; int64_t value; } job_arg;

static et_status job_record(void *arg)
{
    job_arg *a = arg;
    memset(a->payload, (int)(a->value & 0xff), a->size);   /* touches every byte */
    return ET_OK;
}

static et_status job_fail(void *arg)
{
    job_arg *a = arg;
    return et_error(ET_ERR_BACKEND, "queue_leak: job %lld failed on purpose (%zu bytes)",
                    (long long)a->value, a->size);
}

static double rss_mib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

/* The payloads of tickets not yet waited, by ticket: payload[t - 1]. */
typedef struct {
    unsigned char *payload[JOBS_PER_QUEUE];
    int value_fail[JOBS_PER_QUEUE];   /* 1: the job fails */
} round_state;

static void wait_and_free(et_queue *q, round_state *rs, uint64_t t, int closed)
{
    et_status st = et_queue_wait(q, t);
    int fails = rs->value_fail[t - 1];
    if (closed)
        CHECK(st == ET_OK || st == ET_ERR_CANCELLED || (fails && st == ET_ERR_BACKEND),
              "ticket %llu: %s", (unsigned long long)t, et_status_name(st));
    else if (fails)
        CHECK(st == ET_ERR_BACKEND && strstr(et_error_message(), "failed on purpose"),
              "ticket %llu: %s '%s'", (unsigned long long)t, et_status_name(st),
              et_error_message());
    else
        CHECK(st == ET_OK, "ticket %llu: %s '%s'", (unsigned long long)t, et_status_name(st),
              et_error_message());
    free(rs->payload[t - 1]);
    rs->payload[t - 1] = NULL;
}

static int64_t run_queue(int round, round_state *rs)
{
    const int ending = round % 4;
    et_queue *q = NULL;
    if (et_queue_new(1 + round % 64, &q) != ET_OK) {
        fprintf(stderr, "queue_leak: et_queue_new: %s\n", et_error_message());
        exit(2);
    }
    if (ending == 3) CHECK(et_prof_enable(1 << 12) == ET_OK, "prof enable");
    const et_job_info info = {"leak.job", "fp32", "none", 1, 1};
    uint64_t waited = 0;   /* tickets 1..waited are waited and freed */
    for (int j = 0; j < JOBS_PER_QUEUE; j++) {
        job_arg a = {NULL, 16 + (size_t)((j * 37 + round) % 200), (int64_t)round * 1000 + j};
        a.payload = malloc(a.size);
        if (!a.payload) { fprintf(stderr, "queue_leak: out of memory\n"); exit(2); }
        const int fails = j % 50 == 49;
        uint64_t t = 0;
        et_status st = et_queue_submit_info(q, fails ? job_fail : job_record, &a, sizeof a,
                                            ending == 3 ? &info : NULL, &t);
        CHECK(st == ET_OK && t == (uint64_t)j + 1, "submit %d: %s", j, et_status_name(st));
        rs->payload[j] = a.payload;
        rs->value_fail[j] = fails;
        /* keep at most 96 payloads alive: wait on the oldest */
        while (t - waited > 96) wait_and_free(q, rs, ++waited, 0);
    }
    if (ending == 0) {
        /* the last 96 tickets were not waited; two of them (950, 1000) fail */
        CHECK(et_queue_wait_all(q) == ET_ERR_BACKEND, "wait_all must report the unwaited "
              "failures");
        for (uint64_t t = waited + 1; t <= JOBS_PER_QUEUE; t++) {
            free(rs->payload[t - 1]);   /* all ran: wait_all returned */
            rs->payload[t - 1] = NULL;
        }
        et_queue_free(q);
    } else if (ending == 1) {
        et_queue_free(q);   /* pending jobs cancelled; the worker is joined */
        for (uint64_t t = waited + 1; t <= JOBS_PER_QUEUE; t++) {
            free(rs->payload[t - 1]);
            rs->payload[t - 1] = NULL;
        }
    } else {
        if (ending == 2) et_queue_close(q);
        while (waited < JOBS_PER_QUEUE) wait_and_free(q, rs, ++waited, ending == 2);
        if (ending == 3) {
            et_prof_disable();
            et_prof_record *r;
            int64_t n, dropped;
            et_prof_drain(&r, &n, &dropped);
            int64_t jobs = 0;
            for (int64_t i = 0; i < n; i++) jobs += r[i].kind == ET_PROF_JOB;
            CHECK(jobs + dropped >= JOBS_PER_QUEUE, "%lld job records + %lld dropped",
                  (long long)jobs, (long long)dropped);
            free(r);
        }
        et_queue_free(q);
    }
    return JOBS_PER_QUEUE;
}

/* Closes a queue (its worker is joined) and forgets it without et_queue_free:
 * the queue and its slots are unreachable, which LSan must report. */
__attribute__((noinline)) static void leak_one_queue(void)
{
    et_queue *q = NULL;
    if (et_queue_new(8, &q) != ET_OK) exit(2);
    et_queue_close(q);
    q = NULL;
}

__attribute__((noinline)) static void scrub_stack(void)
{
    volatile unsigned char junk[16384];
    memset((void *)junk, 0, sizeof junk);   /* no stale copy of q left on the stack */
}

int main(int argc, char **argv)
{
    long long jobs = 1000000;
    double max_growth = -1;   /* MiB; < 0: not judged */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--max-rss-growth-mib") && i + 1 < argc)
            max_growth = atof(argv[++i]);
        else if (!strcmp(argv[i], "--plant-leak")) {
            leak_one_queue();
            scrub_stack();
            printf("queue_leak: leaked one closed queue on purpose; LSan should report it\n");
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--jobs N] [--max-rss-growth-mib M] [--plant-leak]\n",
                    argv[0]);
            return 2;
        }
    }
    static round_state rs;
    const int rounds = (int)((jobs + JOBS_PER_QUEUE - 1) / JOBS_PER_QUEUE);
    const int warmup = rounds < 20 ? rounds / 2 : 10;
    int64_t done = 0;
    double rss0 = rss_mib();
    for (int r = 0; r < rounds; r++) {
        if (r == warmup) rss0 = rss_mib();
        done += run_queue(r, &rs);
    }
    double rss1 = rss_mib();
    printf("queue_leak: %lld jobs through %d queues, RSS %.1f MiB after warm-up -> %.1f MiB "
           "at the end\n", (long long)done, rounds, rss0, rss1);
    /* one leaked malloc block per job (>= 32 bytes) would be > 30 MiB over 1,000,000 jobs */
    if (max_growth >= 0)
        CHECK(rss1 - rss0 <= max_growth, "RSS grew %.2f MiB after the warm-up (limit %.2f)",
              rss1 - rss0, max_growth);
    return failures ? 1 : 0;
}
