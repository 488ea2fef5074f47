/* status.h - every C function of the core returns an et_status.
 *
 * Why: the core is a library inside a Python process. It never calls
 * exit/abort/assert; a failure travels back as a status plus a message that
 * names the operation and the offending shapes/values. The message lives in
 * a thread-local buffer (each thread, including the accelerator worker, has
 * its own), so setting it is lock-free and never touches Python.
 */
#ifndef ET_STATUS_H
#define ET_STATUS_H

#include <stddef.h>

typedef enum et_status {
    ET_OK = 0,
    ET_ERR_VALUE,          /* bad shape / value from the caller  -> ValueError        */
    ET_ERR_TYPE,           /* wrong dtype                         -> TypeError         */
    ET_ERR_UNSUPPORTED,    /* valid but not implemented           -> NotImplementedError */
    ET_ERR_NOMEM,          /* allocation failed                   -> MemoryError       */
    ET_ERR_BACKEND,        /* backend / library failure           -> et.BackendError   */
    ET_ERR_CANCELLED,      /* job dropped by queue shutdown       -> et.BackendError   */
    ET_ERR_INTERNAL        /* broken invariant                    -> RuntimeError      */
} et_status;

#define ET_ERRMSG_MAX 512

/* Sets this thread's message (printf-style) and returns `st`, so callers can
 * write `return et_error(ET_ERR_VALUE, "conv2d: ...", ...);`. */
et_status et_error(et_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* This thread's last message ("" when none). */
const char *et_error_message(void);

/* Copies `msg` into this thread's message buffer (used to hand a worker
 * thread's message to the waiting thread). */
void et_error_set_message(const char *msg);

void et_error_clear(void);

const char *et_status_name(et_status st);

/* Propagate a failing status. */
#define ET_TRY(expr) do { et_status et_try_st_ = (expr); \
    if (et_try_st_ != ET_OK) return et_try_st_; } while (0)

#endif
