/* queue.h - the accelerator offload queue.
 *
 * Why: the accelerator runs in parallel with the CPU. Every heavy product
 * of training (conv2d / matmul, forward, backward-data, backward-weight) is
 * a job submitted here and executed, in submission order, by one worker
 * thread that stands for the accelerator. `submit` returns a ticket at once
 * (blocking only when the ring is full: back-pressure); `wait(ticket)`
 * blocks until that job is done and returns its status, with the job's
 * error message copied into the waiting thread's error buffer. Blocking
 * use = submit + wait (ggml's compute_async + synchronize).
 *
 * Jobs are copied by value into a fixed ring (no malloc per job): a job is a
 * function pointer plus up to ET_JOB_ARG_MAX bytes of argument. The queue
 * never owns the memory the job reads or writes: the submitter keeps the
 * operands alive until it has waited for the ticket (the Python binding
 * holds references until then). The worker never touches Python.
 *
 * Shutdown (et_queue_free) with jobs in flight: the running job finishes,
 * pending jobs are cancelled (their status becomes ET_ERR_CANCELLED for any
 * waiter), the worker is joined.
 */
#ifndef ET_QUEUE_H
#define ET_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/profile.h"
#include "../core/status.h"

#define ET_JOB_ARG_MAX 1024

typedef struct et_queue et_queue;

/* Runs on the worker thread. `arg` points to the queue's copy of the bytes
 * given to submit. On failure: return et_error(status, "message"). */
typedef et_status (*et_job_fn)(void *arg);

/* capacity: ring slots (jobs in flight before submit blocks), >= 1. */
et_status et_queue_new(int capacity, et_queue **out);

/* Cancels pending jobs, lets the running one finish, joins the worker,
 * wakes every waiter. NULL-safe. No call on q may start after this one. */
void et_queue_free(et_queue *q);

/* Shuts q down as et_queue_free does (pending jobs cancelled, running one
 * finishes, worker joined, waiters woken) but keeps q's memory: wait /
 * wait_all still report recorded errors and cancellations ("queue: job N
 * cancelled by shutdown"), submit returns ET_ERR_CANCELLED. Idempotent and
 * thread-safe; et_queue_free must still be called. (Used by the Python
 * binding's Queue.close().) */
void et_queue_close(et_queue *q);

/* Copies arg[0:arg_size] into the ring and returns its ticket (1, 2, 3, ...).
 * Blocks while the ring is full. ET_ERR_VALUE if arg_size > ET_JOB_ARG_MAX,
 * ET_ERR_CANCELLED if the queue is shutting down. */
et_status et_queue_submit(et_queue *q, et_job_fn fn, const void *arg, size_t arg_size,
                          uint64_t *ticket);

/* The same, telling the profiler what the job is (core/profile.h): when
 * `info` is non-NULL the job is recorded (submit / start / end timestamps,
 * info's label, precision, backend, FLOPs, bytes, the primitive-cache deltas
 * over the job). Callers pass info only when et_prof_enabled() (one relaxed
 * atomic load); et_queue_submit does that check itself and records an
 * unlabelled "job". */
et_status et_queue_submit_info(et_queue *q, et_job_fn fn, const void *arg, size_t arg_size,
                               const et_job_info *info, uint64_t *ticket);

/* Blocks until job `ticket` has run; returns its status (its message in this
 * thread's error buffer). A ticket's error is reported once: a second wait
 * returns ET_OK. ET_ERR_VALUE for a ticket never issued.
 * Failures wait in a table of 64 entries (queue.c); past 64 failed jobs
 * nobody waited for, newer failures are only counted: wait() on one of them
 * returns ET_OK and wait_all reports "queue: N job failures were not
 * recorded, the first in job T ...". Jobs must not wait on, close or free
 * their own queue (wait/submit-when-full return ET_ERR_INTERNAL instead of
 * deadlocking; close/free are no-ops there). */
et_status et_queue_wait(et_queue *q, uint64_t ticket);

/* Blocks until every job submitted so far has run; returns the first
 * not-yet-reported error among them (and forgets all of them). */
et_status et_queue_wait_all(et_queue *q);

uint64_t et_queue_submitted(et_queue *q);   /* tickets issued so far     */
uint64_t et_queue_completed(et_queue *q);   /* jobs finished (in order); jobs
                                               cancelled by shutdown count too */
int et_queue_capacity(et_queue *q);
/* The queue's id (1, 2, ... in creation order): profile records name it. */
uint64_t et_queue_id(et_queue *q);

/* The process-wide accelerator queue every op uses, created on first use
 * (thread-safe). NULL with an error message if it cannot be created. */
et_queue *et_queue_default(void);

#endif
