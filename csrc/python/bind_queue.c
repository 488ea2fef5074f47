/* bind_queue.c - _C.Queue (an offload queue of its own, for tests and tools)
 * and _C.default_queue_stats() (the process-wide queue every op uses).
 *
 * Why a Queue object holds references: the C queue never owns the memory a
 * job reads or writes (queue.h). So every array given to a submit_* method
 * is kept alive here, in a FIFO of (ticket, object) sorted by ticket, until
 * the job can no longer touch it: its ticket (or a later one; jobs run in
 * order) has been waited, or it has completed (completed entries are
 * dropped opportunistically on each submit). Python code may therefore drop
 * its arrays right after submit.
 *
 * The GIL is released while submit (back-pressure), wait, wait_all and
 * close block; the worker thread never touches Python.
 *
 * The Queue type is not GC-tracked on purpose: a cycle collector clearing
 * the held operands while a job still writes them would be a use-after-free.
 * tp_dealloc first shuts the queue down (joining the worker, GIL released),
 * then drops the references.
 *
 * Test job kinds (noop, sleep, fail, record) are the static job functions
 * below; submit_matmul queues et_matmul_job (backends/backend.h).
 */
#include "common.h"

#include <string.h>
#include <time.h>

#include "../backends/backend.h"
#include "../ops/offload.h"
#include "../queue/queue.h"

/* ---------------------------------------------------------------- jobs */

static et_status job_noop(void *arg)
{
    (void)arg;
    return ET_OK;
}

typedef struct { int64_t microseconds; } sleep_args;

static et_status job_sleep(void *arg)
{
    const sleep_args *a = arg;
    struct timespec ts = {(time_t)(a->microseconds / 1000000),
                          (long)(a->microseconds % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {}   /* EINTR: sleep the rest */
    return ET_OK;
}

typedef struct { char message[ET_ERRMSG_MAX]; } fail_args;

static et_status job_fail(void *arg)
{
    const fail_args *a = arg;
    return et_error(ET_ERR_BACKEND, "%s", a->message);
}

/* buf (len,) int64: buf[0] counts the records, buf[1 + buf[0]] gets value */
typedef struct { int64_t *buf; int64_t len; int64_t value; } record_args;

static et_status job_record(void *arg)
{
    const record_args *a = arg;
    int64_t n = a->buf[0];
    if (n < 0 || 1 + n >= a->len)
        return et_error(ET_ERR_VALUE, "record: buffer of %lld slots has no room for record "
                        "%lld (buf[0] = %lld)", (long long)a->len, (long long)n + 1,
                        (long long)n);
    a->buf[1 + n] = a->value;
    a->buf[0] = n + 1;
    return ET_OK;
}

/* --------------------------------------------------------- Queue type */

typedef struct {
    PyObject_HEAD
    et_queue *q;
    /* FIFO of held operands, sorted by ticket: entries [head, tail) of
     * objs/tickets (a list with a head index; compacted when it fills). */
    PyObject **objs;
    uint64_t *tickets;
    size_t head, tail, cap;
} QueueObject;

/* Drops the operands of every ticket <= upto (GIL held). */
static void refs_drop_upto(QueueObject *self, uint64_t upto)
{
    while (self->head < self->tail && self->tickets[self->head] <= upto) {
        PyObject *o = self->objs[self->head];
        self->objs[self->head] = NULL;
        self->head++;
        Py_DECREF(o);   /* may run arbitrary code: the FIFO is consistent */
    }
    if (self->head == self->tail) self->head = self->tail = 0;
}

/* Holds a new reference to `o` for `ticket`. Keeps the FIFO sorted even if
 * Python threads sharing this Queue push their tickets out of order. */
static int refs_push(QueueObject *self, uint64_t ticket, PyObject *o)
{
    if (self->tail == self->cap) {
        if (self->head > 0) {   /* compact */
            size_t n = self->tail - self->head;
            memmove(self->objs, self->objs + self->head, n * sizeof *self->objs);
            memmove(self->tickets, self->tickets + self->head, n * sizeof *self->tickets);
            self->head = 0;
            self->tail = n;
        } else {
            size_t ncap = self->cap ? 2 * self->cap : 16;
            PyObject **no = PyMem_Realloc(self->objs, ncap * sizeof *no);
            if (!no) { PyErr_NoMemory(); return -1; }
            self->objs = no;
            uint64_t *nt = PyMem_Realloc(self->tickets, ncap * sizeof *nt);
            if (!nt) { PyErr_NoMemory(); return -1; }
            self->tickets = nt;
            self->cap = ncap;
        }
    }
    size_t i = self->tail++;
    while (i > self->head && self->tickets[i - 1] > ticket) {
        self->objs[i] = self->objs[i - 1];
        self->tickets[i] = self->tickets[i - 1];
        i--;
    }
    Py_INCREF(o);
    self->objs[i] = o;
    self->tickets[i] = ticket;
    return 0;
}

static int check_open(QueueObject *self)
{
    if (!self->q) {
        PyErr_SetString(et_py_BackendError, "Queue: not initialised");
        return -1;
    }
    return 0;
}

static PyObject *queue_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    QueueObject *self = (QueueObject *)type->tp_alloc(type, 0);
    return (PyObject *)self;   /* fields zeroed; __init__ creates the queue */
}

static int queue_init(QueueObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"capacity", NULL};
    int capacity = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:Queue", kwlist, &capacity)) return -1;
    if (self->q) {
        PyErr_SetString(et_py_ValueError, "Queue: already initialised");
        return -1;
    }
    et_status st = et_queue_new(capacity, &self->q);
    if (st != ET_OK) { et_py_raise(st, NULL); return -1; }
    return 0;
}

static void queue_dealloc(QueueObject *self)
{
    if (self->q) {
        et_queue *q = self->q;
        self->q = NULL;
        /* cancels pending jobs, waits for the running one: only then may
         * the operands go */
        Py_BEGIN_ALLOW_THREADS
        et_queue_free(q);
        Py_END_ALLOW_THREADS
    }
    refs_drop_upto(self, UINT64_MAX);
    PyMem_Free(self->objs);
    PyMem_Free(self->tickets);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Submits (GIL released while blocked) and holds `objs`; returns the ticket.
 * info: the profiler's description (NULL: an unlabelled "job" when profiling). */
static PyObject *submit_info(QueueObject *self, et_job_fn fn, const void *arg, size_t size,
                             const et_job_info *info, PyObject **objs, int nobjs)
{
    if (check_open(self) < 0) return NULL;
    refs_drop_upto(self, et_queue_completed(self->q));   /* opportunistic */
    uint64_t ticket = 0;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = info ? et_queue_submit_info(self->q, fn, arg, size, info, &ticket)
              : et_queue_submit(self->q, fn, arg, size, &ticket);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) return et_py_raise(st, NULL);
    /* the caller's references keep objs alive until here */
    for (int i = 0; i < nobjs; i++) {
        if (refs_push(self, ticket, objs[i]) < 0) {
            /* cannot hold it: wait for the job so nothing dangles */
            Py_BEGIN_ALLOW_THREADS
            et_queue_wait(self->q, ticket);
            Py_END_ALLOW_THREADS
            et_error_clear();
            return NULL;
        }
    }
    return PyLong_FromUnsignedLongLong(ticket);
}

static PyObject *submit(QueueObject *self, et_job_fn fn, const void *arg, size_t size,
                        PyObject **objs, int nobjs)
{
    return submit_info(self, fn, arg, size, NULL, objs, nobjs);
}

static PyObject *queue_submit_noop(QueueObject *self, PyObject *unused)
{
    return submit(self, job_noop, NULL, 0, NULL, 0);
}

static PyObject *queue_submit_sleep(QueueObject *self, PyObject *arg)
{
    long long us = PyLong_AsLongLong(arg);
    if (us == -1 && PyErr_Occurred()) return NULL;
    if (us < 0)
        return PyErr_Format(et_py_ValueError, "submit_sleep: microseconds must be >= 0, got %lld",
                            us);
    sleep_args a = {us};
    return submit(self, job_sleep, &a, sizeof a, NULL, 0);
}

static PyObject *queue_submit_fail(QueueObject *self, PyObject *arg)
{
    const char *msg = PyUnicode_AsUTF8(arg);
    if (!msg) return NULL;
    fail_args a;
    snprintf(a.message, sizeof a.message, "%s", msg);
    return submit(self, job_fail, &a, sizeof a, NULL, 0);
}

static PyObject *queue_submit_record(QueueObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buf", "value", NULL};
    PyObject *buf;
    long long value;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL:submit_record", kwlist, &buf, &value))
        return NULL;
    et_tensor t;
    if (et_py_tensor_arg(buf, "submit_record", "buf", 1, ET_S64, &t) < 0) return NULL;
    if (!PyArray_ISWRITEABLE((PyArrayObject *)buf))
        return PyErr_Format(et_py_ValueError, "submit_record: buf must be writeable");
    if (t.shape[0] < 1)
        return PyErr_Format(et_py_ValueError, "submit_record: buf must have at least 1 slot "
                            "(the count), got shape (%lld,)", (long long)t.shape[0]);
    record_args a = {(int64_t *)t.data, t.shape[0], value};
    return submit(self, job_record, &a, sizeof a, &buf, 1);
}

/* out(M,N) = op(a)(M,K) @ op(b)(K,N) on `backend`, in place; a, b, out are
 * held until the ticket is waited. Shapes/dtypes/backend are checked here,
 * before anything is queued (the job checks again). */
static PyObject *queue_submit_matmul(QueueObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "b", "out", "trans_a", "trans_b", "backend", NULL};
    PyObject *a, *b, *out;
    int trans_a = 0, trans_b = 0;
    const char *backend = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pps:submit_matmul", kwlist, &a, &b, &out,
                                     &trans_a, &trans_b, &backend))
        return NULL;
    et_matmul_args m;
    memset(&m, 0, sizeof m);
    if (et_py_tensor_arg(a, "submit_matmul", "a", 2, ET_F32, &m.a) < 0) return NULL;
    if (et_py_tensor_arg(b, "submit_matmul", "b", 2, ET_F32, &m.b) < 0) return NULL;
    if (et_py_tensor_arg(out, "submit_matmul", "out", 2, ET_F32, &m.y) < 0) return NULL;
    if (et_py_tensor_arg_opt(NULL, "submit_matmul", "bias", 1, ET_F32, &m.bias) < 0) return NULL;
    if (!PyArray_ISWRITEABLE((PyArrayObject *)out))
        return PyErr_Format(et_py_ValueError, "submit_matmul: out must be writeable");
    m.backend = et_backend_find(backend);
    if (!m.backend) return et_py_raise(ET_ERR_VALUE, "submit_matmul: unknown backend");
    m.trans_a = trans_a;
    m.trans_b = trans_b;
    et_status st = et_matmul_check("submit_matmul", &m);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *objs[3] = {a, b, out};
    et_job_info info, *ip = NULL;
    if (et_prof_enabled()) {
        et_job_info_matmul(&info, "matmul", &m, -1);
        ip = &info;
    }
    return submit_info(self, et_matmul_job, &m, sizeof m, ip, objs, 3);
}

/* 0, or -1 with ValueError/TypeError for what can never be a ticket. */
static int parse_ticket(PyObject *arg, uint64_t *out)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(et_py_TypeError, "Queue.wait: ticket must be an int, got %s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v <= 0) {
        PyObject *r = PyObject_Repr(arg);
        PyErr_Format(et_py_ValueError, "Queue.wait: ticket %s was never issued (tickets are "
                     "1, 2, 3, ...)", r ? PyUnicode_AsUTF8(r) : "?");
        Py_XDECREF(r);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *queue_wait(QueueObject *self, PyObject *arg)
{
    if (check_open(self) < 0) return NULL;
    uint64_t ticket;
    if (parse_ticket(arg, &ticket) < 0) return NULL;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = et_queue_wait(self->q, ticket);
    Py_END_ALLOW_THREADS
    if (st == ET_ERR_VALUE && ticket > et_queue_submitted(self->q))
        return et_py_raise(st, NULL);   /* never issued: nothing to drop */
    refs_drop_upto(self, ticket);       /* in order: every earlier job is done */
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *queue_wait_all(QueueObject *self, PyObject *unused)
{
    if (check_open(self) < 0) return NULL;
    et_status st;
    uint64_t upto = et_queue_submitted(self->q);
    Py_BEGIN_ALLOW_THREADS
    st = et_queue_wait_all(self->q);
    Py_END_ALLOW_THREADS
    refs_drop_upto(self, upto);
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *queue_close(QueueObject *self, PyObject *unused)
{
    if (check_open(self) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    et_queue_close(self->q);
    Py_END_ALLOW_THREADS
    /* nothing runs any more: every operand may go */
    refs_drop_upto(self, UINT64_MAX);
    Py_RETURN_NONE;
}

static PyObject *queue_enter(QueueObject *self, PyObject *unused)
{
    if (check_open(self) < 0) return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

/* Leaving `with` normally runs every submitted job (raising the first
 * unreported error, as wait_all) and then closes; leaving on an exception
 * closes at once, cancelling pending jobs, and lets the exception go on. */
static PyObject *queue_exit(QueueObject *self, PyObject *args)
{
    PyObject *exc_type = Py_None, *exc = Py_None, *tb = Py_None;
    if (!PyArg_UnpackTuple(args, "__exit__", 0, 3, &exc_type, &exc, &tb)) return NULL;
    if (check_open(self) < 0) return NULL;
    et_status st = ET_OK;
    Py_BEGIN_ALLOW_THREADS
    if (exc_type == Py_None) st = et_queue_wait_all(self->q);
    et_queue_close(self->q);
    Py_END_ALLOW_THREADS
    refs_drop_upto(self, UINT64_MAX);
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_FALSE;
}

static PyObject *queue_get_submitted(QueueObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(et_queue_submitted(self->q));
}

static PyObject *queue_get_completed(QueueObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(et_queue_completed(self->q));
}

static PyObject *queue_get_capacity(QueueObject *self, void *c)
{
    return PyLong_FromLong(et_queue_capacity(self->q));
}

static PyObject *queue_get_id(QueueObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(et_queue_id(self->q));
}

static PyObject *queue_get_pending_refs(QueueObject *self, void *c)
{
    return PyLong_FromSize_t(self->tail - self->head);
}

static PyObject *queue_repr(QueueObject *self)
{
    if (!self->q) return PyUnicode_FromString("<edgetrain._C.Queue (uninitialised)>");
    return PyUnicode_FromFormat("<edgetrain._C.Queue capacity=%d submitted=%llu completed=%llu>",
                                et_queue_capacity(self->q),
                                (unsigned long long)et_queue_submitted(self->q),
                                (unsigned long long)et_queue_completed(self->q));
}

static PyMethodDef queue_methods[] = {
    {"submit_noop", (PyCFunction)queue_submit_noop, METH_NOARGS,
     "submit_noop() -> ticket: a job that does nothing"},
    {"submit_sleep", (PyCFunction)queue_submit_sleep, METH_O,
     "submit_sleep(microseconds) -> ticket: a job that sleeps"},
    {"submit_fail", (PyCFunction)queue_submit_fail, METH_O,
     "submit_fail(message) -> ticket: a job that fails with BackendError(message)"},
    {"submit_record", (PyCFunction)(void (*)(void))queue_submit_record,
     METH_VARARGS | METH_KEYWORDS,
     "submit_record(buf, value) -> ticket: the job writes value at buf[1 + buf[0]] and "
     "increments buf[0] (buf: int64 array, held until waited)"},
    {"submit_matmul", (PyCFunction)(void (*)(void))queue_submit_matmul,
     METH_VARARGS | METH_KEYWORDS,
     "submit_matmul(a, b, out, trans_a=False, trans_b=False, backend='ref') -> ticket: "
     "out = op(a) @ op(b), in place (a, b, out float32, held until waited)"},
    {"wait", (PyCFunction)queue_wait, METH_O,
     "wait(ticket): blocks until the job has run; raises its error (once)"},
    {"wait_all", (PyCFunction)queue_wait_all, METH_NOARGS,
     "wait_all(): blocks until every submitted job has run; raises the first unreported error"},
    {"close", (PyCFunction)queue_close, METH_NOARGS,
     "close(): cancels pending jobs (waiting on them raises BackendError 'cancelled'), "
     "lets the running one finish, stops the worker"},
    {"__enter__", (PyCFunction)queue_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)queue_exit, METH_VARARGS,
     "normal exit: wait_all() then close(); on an exception: close() (cancels pending jobs)"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef queue_getset[] = {
    {"submitted", (getter)queue_get_submitted, NULL, "tickets issued so far", NULL},
    {"completed", (getter)queue_get_completed, NULL,
     "jobs finished, in order (jobs cancelled by close count too)", NULL},
    {"capacity", (getter)queue_get_capacity, NULL, "ring slots", NULL},
    {"id", (getter)queue_get_id, NULL, "the queue's id in profile records (1, 2, ...)", NULL},
    {"pending_refs", (getter)queue_get_pending_refs, NULL,
     "operand references still held for jobs not yet waited", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgetrain._C.Queue",
    .tp_basicsize = sizeof(QueueObject),
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_repr = (reprfunc)queue_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Queue(capacity=64): an accelerator offload queue with one worker thread; "
              "jobs run in submission order.",
    .tp_methods = queue_methods,
    .tp_getset = queue_getset,
    .tp_init = (initproc)queue_init,
    .tp_new = queue_new,
};

/* ------------------------------------------------------ default queue */

static PyObject *py_default_queue_stats(PyObject *self, PyObject *unused)
{
    et_queue *q = et_queue_default();
    if (!q) return et_py_raise(ET_ERR_BACKEND, "default queue: cannot be created");
    return Py_BuildValue("{s:K,s:K}", "submitted",
                         (unsigned long long)et_queue_submitted(q), "completed",
                         (unsigned long long)et_queue_completed(q));
}

static PyObject *py_default_queue_id(PyObject *self, PyObject *unused)
{
    et_queue *q = et_queue_default();
    if (!q) return et_py_raise(ET_ERR_BACKEND, "default queue: cannot be created");
    return PyLong_FromUnsignedLongLong(et_queue_id(q));
}

/* ------------------------------------------------------------ profiler */

/* The counters sampled around each profiled job: the onednn primitive cache
 * (zeros when onednn is not built). Runs on the worker thread: no Python. */
static void cache_counters(int64_t out[3])
{
    et_cache_stats c;
    if (et_onednn_cache_stats(&c) != ET_OK) {
        et_error_clear();
        out[0] = out[1] = out[2] = 0;
        return;
    }
    out[0] = c.hits;
    out[1] = c.misses;
    out[2] = c.evictions;
}

static PyObject *py_profiler_enable(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"max_records", NULL};
    long long max_records = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|L:profiler_enable", kwlist, &max_records))
        return NULL;
    et_prof_set_counter_source(cache_counters);
    et_status st = et_prof_enable(max_records);
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_profiler_disable(PyObject *self, PyObject *unused)
{
    et_prof_disable();
    Py_RETURN_NONE;
}

static PyObject *py_profiler_enabled(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(et_prof_enabled());
}

static PyObject *py_profiler_clock_ns(PyObject *self, PyObject *unused)
{
    return PyLong_FromLongLong(et_prof_now());
}

static PyObject *py_profiler_thread_id(PyObject *self, PyObject *unused)
{
    return PyLong_FromLongLong(et_prof_thread());
}

static PyObject *str_or_none(const char *s)
{
    if (s) return PyUnicode_InternFromString(s);
    Py_RETURN_NONE;
}

static const char *kind_name(int32_t k)
{
    switch (k) {
    case ET_PROF_JOB: return "job";
    case ET_PROF_WAIT: return "wait";
    case ET_PROF_CPU: return "cpu";
    }
    return "?";
}

/* -> (records, dropped); a record is the tuple of PROFILE_FIELDS. */
static PyObject *py_profiler_drain(PyObject *self, PyObject *unused)
{
    et_prof_record *r = NULL;
    int64_t n = 0, dropped = 0;
    et_prof_drain(&r, &n, &dropped);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) { free(r); return NULL; }
    for (int64_t i = 0; i < n; i++) {
        const et_prof_record *e = &r[i];
        PyObject *t = Py_BuildValue(
            "(NNNNsKKLLLLLLLLL)", str_or_none(kind_name(e->kind)), str_or_none(e->label),
            str_or_none(e->precision), str_or_none(e->backend), et_status_name(e->status),
            (unsigned long long)e->queue, (unsigned long long)e->ticket, (long long)e->thread,
            (long long)e->t_submit, (long long)e->t_start, (long long)e->t_end,
            (long long)e->flops, (long long)e->bytes, (long long)e->cache_hits,
            (long long)e->cache_misses, (long long)e->cache_evictions);
        if (!t) { Py_DECREF(list); free(r); return NULL; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    free(r);
    return Py_BuildValue("(NL)", list, (long long)dropped);
}

static PyMethodDef queue_functions[] = {
    {"default_queue_stats", (PyCFunction)py_default_queue_stats, METH_NOARGS,
     "default_queue_stats() -> {'submitted': int, 'completed': int} of the process-wide "
     "accelerator queue"},
    {"default_queue_id", (PyCFunction)py_default_queue_id, METH_NOARGS,
     "default_queue_id() -> int: the process-wide queue's id in profile records"},
    {"profiler_enable", (PyCFunction)(void (*)(void))py_profiler_enable,
     METH_VARARGS | METH_KEYWORDS,
     "profiler_enable(max_records=1048576): start recording queue jobs, waits and C CPU "
     "ranges (records past max_records are dropped and counted)"},
    {"profiler_disable", (PyCFunction)py_profiler_disable, METH_NOARGS,
     "profiler_disable(): stop recording (records stay until drained)"},
    {"profiler_enabled", (PyCFunction)py_profiler_enabled, METH_NOARGS,
     "profiler_enabled() -> bool"},
    {"profiler_drain", (PyCFunction)py_profiler_drain, METH_NOARGS,
     "profiler_drain() -> (records, dropped): every record since the last drain, as tuples "
     "(kind, label, precision, backend, status, queue, ticket, thread, t_submit, t_start, "
     "t_end, flops, bytes, cache_hits, cache_misses, cache_evictions); the buffer empties"},
    {"profiler_clock_ns", (PyCFunction)py_profiler_clock_ns, METH_NOARGS,
     "profiler_clock_ns() -> int: the records' clock, CLOCK_MONOTONIC ns (time.monotonic_ns)"},
    {"profiler_thread_id", (PyCFunction)py_profiler_thread_id, METH_NOARGS,
     "profiler_thread_id() -> int: this thread's id in records (threading.get_ident())"},
    {NULL, NULL, 0, NULL}};

int et_py_init_queue(PyObject *m)
{
    if (PyType_Ready(&QueueType) < 0) return -1;
    Py_INCREF(&QueueType);
    if (PyModule_AddObject(m, "Queue", (PyObject *)&QueueType) < 0) {
        Py_DECREF(&QueueType);
        return -1;
    }
    return PyModule_AddFunctions(m, queue_functions);
}
