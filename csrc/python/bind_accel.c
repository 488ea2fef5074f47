/* bind_accel.c - _C's accelerator products (see csrc/BINDINGS.md):
 * backends(), matmul, conv2d_primitive, conv2d_forward / conv2d_backward
 * (and its halves conv2d_backward_data / conv2d_backward_weight),
 * linear_forward / linear_backward, the onednn primitive-cache controls,
 * and the im2col / col2im kernels.
 *
 * Pattern of every product: parse and borrow the arrays (GIL held), resolve
 * the backend, validate the shapes and allocate the outputs (still before
 * anything is submitted, so a bad call raises without touching the queue),
 * then release the GIL around submit + wait (ops/{conv2d,linear}.c). The caller's arrays
 * stay alive for the whole call because the call holds its arguments.
 */
#include "common.h"

#include "../backends/backend.h"
#include "../kernels/im2col.h"
#include "../ops/conv2d.h"
#include "../ops/linear.h"
#include "../ops/offload.h"

/* Borrows a float32 array; a wrong dtype raises DtypeError naming the shape. */


static PyObject *py_backends(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    int n = et_backend_count();
    PyObject *l = PyList_New(n);
    if (!l) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(et_backend_at(i)->name);
        if (!s) { Py_DECREF(l); return NULL; }
        PyList_SET_ITEM(l, i, s);
    }
    return l;
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"a", "b", "trans_a", "trans_b", "bias", "backend", NULL};
    PyObject *oa, *ob, *obias = Py_None;
    int ta = 0, tb = 0;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ppOs:matmul", kwl, &oa, &ob, &ta, &tb,
                                     &obias, &bname))
        return NULL;
    et_matmul_args m;
    memset(&m, 0, sizeof m);
    if (et_py_f32_arg(oa, "matmul", "a", &m.a, 0) < 0 || et_py_f32_arg(ob, "matmul", "b", &m.b, 0) < 0 ||
        et_py_f32_arg(obias, "matmul", "bias", &m.bias, 1) < 0)
        return NULL;
    if (!(m.backend = et_py_backend_arg(bname))) return NULL;
    m.trans_a = ta;
    m.trans_b = tb;
    if (m.a.ndim != 2 || m.b.ndim != 2) {
        char s1[96], s2[96];
        return et_py_raise(et_error(ET_ERR_VALUE, "matmul: a %s and b %s must be 2D",
                                    et_shape_str(&m.a, s1, sizeof s1), et_shape_str(&m.b, s2, sizeof s2)), NULL);
    }
    int64_t ys[2] = {ta ? m.a.shape[1] : m.a.shape[0], tb ? m.b.shape[0] : m.b.shape[1]};
    PyObject *y = et_py_empty(2, ys, ET_F32, 0, &m.y);
    if (!y) return NULL;
    et_status st = et_matmul_check("matmul", &m);
    if (st == ET_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = et_offload_matmul("matmul", -1, &m);
        Py_END_ALLOW_THREADS
    }
    if (st != ET_OK) { Py_DECREF(y); return et_py_raise(st, NULL); }
    return y;
}

/* The shared end of conv2d_primitive and conv2d_primitive_lowp: geometry
 * arguments, backend, output allocation (dtype ydt), checks, one queued job. */
static PyObject *conv_primitive_run(const char *op, et_conv2d_args *pa, et_dtype ydt,
                                    PyObject *os, PyObject *opl, PyObject *oph, PyObject *od,
                                    long long groups, const char *bname)
{
    if ((os && et_py_int_tuple(os, op, "stride", 2, pa->stride) < 0) ||
        (opl && et_py_int_tuple(opl, op, "pad_lo", 2, pa->pad_lo) < 0) ||
        (oph && et_py_int_tuple(oph, op, "pad_hi", 2, pa->pad_hi) < 0) ||
        (od && et_py_int_tuple(od, op, "dilation", 2, pa->dilation) < 0))
        return NULL;
    pa->groups = groups;
    if (!(pa->backend = et_py_backend_arg(bname))) return NULL;
    char sx[96], sw[96];
    if (pa->x.ndim != 4 || pa->w.ndim != 4)
        return et_py_raise(et_error(ET_ERR_VALUE, "%s: x %s and w %s must be 4D", op,
                                    et_shape_str(&pa->x, sx, sizeof sx),
                                    et_shape_str(&pa->w, sw, sizeof sw)), NULL);
    int64_t ys[4] = {pa->x.shape[0], pa->w.shape[0],
                     et_conv_out_size(pa->x.shape[2], pa->w.shape[2], pa->stride[0], pa->pad_lo[0],
                                      pa->pad_hi[0], pa->dilation[0]),
                     et_conv_out_size(pa->x.shape[3], pa->w.shape[3], pa->stride[1], pa->pad_lo[1],
                                      pa->pad_hi[1], pa->dilation[1])};
    if (ys[2] < 0) ys[2] = 0;
    if (ys[3] < 0) ys[3] = 0;
    PyObject *y = et_py_empty(4, ys, ydt, 0, &pa->y);
    if (!y) return NULL;
    et_status st = et_conv2d_check(op, pa);
    if (st == ET_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = et_offload_conv2d("conv2d.primitive", -1, pa);
        Py_END_ALLOW_THREADS
    }
    if (st != ET_OK) { Py_DECREF(y); return et_py_raise(st, NULL); }
    return y;
}

static PyObject *py_conv2d_primitive(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "stride", "pad_lo", "pad_hi", "dilation", "groups",
                          "backend", NULL};
    const char *op = "conv2d_primitive";
    PyObject *ox, *ow, *obias = Py_None, *os = NULL, *opl = NULL, *oph = NULL, *od = NULL;
    long long groups = 1;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOOLs:conv2d_primitive", kwl, &ox, &ow,
                                     &obias, &os, &opl, &oph, &od, &groups, &bname))
        return NULL;
    et_conv2d_args a;
    memset(&a, 0, sizeof a);
    a.stride[0] = a.stride[1] = a.dilation[0] = a.dilation[1] = 1;
    if (et_py_f32_arg(ox, op, "x", &a.x, 0) < 0 || et_py_f32_arg(ow, op, "w", &a.w, 0) < 0 ||
        et_py_f32_arg(obias, op, "bias", &a.bias, 1) < 0)
        return NULL;
    return conv_primitive_run(op, &a, ET_F32, os, opl, oph, od, groups, bname);
}

static int conv_params(const char *op, PyObject *os, PyObject *op_, PyObject *od,
                       long long groups, et_conv2d_params *p)
{
    p->stride[0] = p->stride[1] = p->dilation[0] = p->dilation[1] = 1;
    p->padding[0] = p->padding[1] = 0;
    p->groups = groups;
    if ((os && et_py_int_tuple(os, op, "stride", 2, p->stride) < 0) ||
        (op_ && et_py_int_tuple(op_, op, "padding", 2, p->padding) < 0) ||
        (od && et_py_int_tuple(od, op, "dilation", 2, p->dilation) < 0))
        return -1;
    return 0;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "stride", "padding", "dilation", "groups", "backend", NULL};
    const char *op = "conv2d_forward";
    PyObject *ox, *ow, *obias = Py_None, *os = NULL, *opd = NULL, *od = NULL;
    long long groups = 1;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOLs:conv2d_forward", kwl, &ox, &ow, &obias,
                                     &os, &opd, &od, &groups, &bname))
        return NULL;
    et_tensor x, w, bias, y;
    et_conv2d_params p;
    if (et_py_f32_arg(ox, op, "x", &x, 0) < 0 || et_py_f32_arg(ow, op, "w", &w, 0) < 0 ||
        et_py_f32_arg(obias, op, "bias", &bias, 1) < 0 || conv_params(op, os, opd, od, groups, &p) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[4];
    et_status st = et_conv2d_shape(op, &x, &w, &bias, &p, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *out = et_py_empty(4, ys, ET_F32, 0, &y);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = et_conv2d_forward(be, &x, &w, &bias, &p, &y);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { Py_DECREF(out); return et_py_raise(st, NULL); }
    return out;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"dy", "x", "w", "stride", "padding", "dilation", "groups", "need_dx",
                          "need_dw", "need_db", "backend", NULL};
    const char *op = "conv2d_backward";
    PyObject *ody, *ox, *ow, *os = NULL, *opd = NULL, *od = NULL;
    long long groups = 1;
    int need_dx = 1, need_dw = 1, need_db = 1;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOOLppps:conv2d_backward", kwl, &ody, &ox,
                                     &ow, &os, &opd, &od, &groups, &need_dx, &need_dw, &need_db,
                                     &bname))
        return NULL;
    et_tensor dy, x, w, dx, dw, db;
    et_conv2d_params p;
    if (et_py_f32_arg(ody, op, "dy", &dy, 0) < 0 || et_py_f32_arg(ox, op, "x", &x, 0) < 0 ||
        et_py_f32_arg(ow, op, "w", &w, 0) < 0 || conv_params(op, os, opd, od, groups, &p) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[4];
    et_status st = et_conv2d_shape(op, &x, &w, NULL, &p, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *odx = Py_None, *odw = Py_None, *odb = Py_None;
    Py_INCREF(Py_None); Py_INCREF(Py_None); Py_INCREF(Py_None);
    if (need_dx) { Py_DECREF(Py_None); if (!(odx = et_py_empty(4, x.shape, ET_F32, 0, &dx))) goto fail; }
    if (need_dw) { Py_DECREF(Py_None); if (!(odw = et_py_empty(4, w.shape, ET_F32, 0, &dw))) goto fail; }
    if (need_db) { Py_DECREF(Py_None); if (!(odb = et_py_empty(1, w.shape, ET_F32, 0, &db))) goto fail; }
    Py_BEGIN_ALLOW_THREADS
    st = et_conv2d_backward(be, &dy, &x, &w, &p, need_dx ? &dx : NULL, need_dw ? &dw : NULL,
                            need_db ? &db : NULL);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { et_py_raise(st, NULL); goto fail; }
    return Py_BuildValue("(NNN)", odx, odw, odb);
fail:
    Py_XDECREF(odx); Py_XDECREF(odw); Py_XDECREF(odb);
    return NULL;
}

/* conv2d_backward_data(dy, w, x_shape, ...) / conv2d_backward_weight(dy, x, w_shape, ...):
 * one product each (the C functions of the same names). */
static PyObject *conv2d_backward_one(PyObject *args, PyObject *kw, int data)
{
    static char *kwl_d[] = {"dy", "w", "x_shape", "stride", "padding", "dilation", "groups",
                            "backend", NULL};
    static char *kwl_w[] = {"dy", "x", "w_shape", "stride", "padding", "dilation", "groups",
                            "backend", NULL};
    const char *op = data ? "conv2d_backward_data" : "conv2d_backward_weight";
    PyObject *ody, *oop, *oshape, *os = NULL, *opd = NULL, *od = NULL;
    long long groups = 1;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, data ? "OOO|OOOLs:conv2d_backward_data"
                                                    : "OOO|OOOLs:conv2d_backward_weight",
                                     data ? kwl_d : kwl_w, &ody, &oop, &oshape, &os, &opd, &od,
                                     &groups, &bname))
        return NULL;
    et_tensor dy, operand, out;
    et_conv2d_params p;
    int64_t shape[4];
    if (et_py_f32_arg(ody, op, "dy", &dy, 0) < 0 || et_py_f32_arg(oop, op, data ? "w" : "x", &operand, 0) < 0 ||
        et_py_int_tuple(oshape, op, data ? "x_shape" : "w_shape", 4, shape) < 0 ||
        conv_params(op, os, opd, od, groups, &p) < 0)
        return NULL;
    for (int i = 0; i < 4; i++)
        if (shape[i] < 0)
            return et_py_raise(et_error(ET_ERR_VALUE, "%s: negative size in %s (%lld, %lld, %lld, %lld)",
                                        op, data ? "x_shape" : "w_shape", (long long)shape[0],
                                        (long long)shape[1], (long long)shape[2],
                                        (long long)shape[3]), NULL);
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    PyObject *res = et_py_empty(4, shape, ET_F32, 0, &out);
    if (!res) return NULL;
    /* validate with the shapes the products imply before anything is submitted */
    int64_t ys[4];
    et_status st = data ? et_conv2d_shape(op, &out, &operand, NULL, &p, ys)
                        : et_conv2d_shape(op, &operand, &out, NULL, &p, ys);
    if (st == ET_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = data ? et_conv2d_backward_data(be, &dy, &operand, &p, &out)
                  : et_conv2d_backward_weight(be, &dy, &operand, &p, &out);
        Py_END_ALLOW_THREADS
    }
    if (st != ET_OK) { Py_DECREF(res); return et_py_raise(st, NULL); }
    return res;
}

static PyObject *py_conv2d_backward_data(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return conv2d_backward_one(args, kw, 1);
}

static PyObject *py_conv2d_backward_weight(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return conv2d_backward_one(args, kw, 0);
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "backend", NULL};
    const char *op = "linear_forward";
    PyObject *ox, *ow, *obias = Py_None;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Os:linear_forward", kwl, &ox, &ow, &obias, &bname))
        return NULL;
    et_tensor x, w, bias, y;
    if (et_py_f32_arg(ox, op, "x", &x, 0) < 0 || et_py_f32_arg(ow, op, "w", &w, 0) < 0 ||
        et_py_f32_arg(obias, op, "bias", &bias, 1) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[2];
    et_status st = et_linear_shape(op, &x, &w, &bias, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *out = et_py_empty(2, ys, ET_F32, 0, &y);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = et_linear_forward(be, &x, &w, &bias, &y);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { Py_DECREF(out); return et_py_raise(st, NULL); }
    return out;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"dy", "x", "w", "need_dx", "need_dw", "need_db", "backend", NULL};
    const char *op = "linear_backward";
    PyObject *ody, *ox, *ow;
    int need_dx = 1, need_dw = 1, need_db = 1;
    const char *bname = "ref";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|ppps:linear_backward", kwl, &ody, &ox, &ow,
                                     &need_dx, &need_dw, &need_db, &bname))
        return NULL;
    et_tensor dy, x, w, dx, dw, db;
    if (et_py_f32_arg(ody, op, "dy", &dy, 0) < 0 || et_py_f32_arg(ox, op, "x", &x, 0) < 0 ||
        et_py_f32_arg(ow, op, "w", &w, 0) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[2];
    et_status st = et_linear_shape(op, &x, &w, NULL, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *odx = Py_None, *odw = Py_None, *odb = Py_None;
    Py_INCREF(Py_None); Py_INCREF(Py_None); Py_INCREF(Py_None);
    if (need_dx) { Py_DECREF(Py_None); if (!(odx = et_py_empty(2, x.shape, ET_F32, 0, &dx))) goto fail; }
    if (need_dw) { Py_DECREF(Py_None); if (!(odw = et_py_empty(2, w.shape, ET_F32, 0, &dw))) goto fail; }
    if (need_db) { Py_DECREF(Py_None); if (!(odb = et_py_empty(1, w.shape, ET_F32, 0, &db))) goto fail; }
    Py_BEGIN_ALLOW_THREADS
    st = et_linear_backward(be, &dy, &x, &w, need_dx ? &dx : NULL, need_dw ? &dw : NULL,
                            need_db ? &db : NULL);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { et_py_raise(st, NULL); goto fail; }
    return Py_BuildValue("(NNN)", odx, odw, odb);
fail:
    Py_XDECREF(odx); Py_XDECREF(odw); Py_XDECREF(odb);
    return NULL;
}

static PyObject *py_cache_stats(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    et_cache_stats s;
    et_status st = et_onednn_cache_stats(&s);
    if (st != ET_OK) return et_py_raise(st, NULL);
    return Py_BuildValue("{sLsLsLsLsL}", "hits", (long long)s.hits, "misses", (long long)s.misses,
                         "evictions", (long long)s.evictions, "size", (long long)s.size,
                         "capacity", (long long)s.capacity);
}

static PyObject *py_set_cache_capacity(PyObject *self, PyObject *args)
{
    (void)self;
    long long n;
    if (!PyArg_ParseTuple(args, "L:set_cache_capacity", &n)) return NULL;
    et_status st = et_onednn_set_cache_capacity(n);
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_clear_cache(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    et_status st = et_onednn_clear_cache();
    if (st != ET_OK) return et_py_raise(st, NULL);
    Py_RETURN_NONE;
}

/* ---- im2col / col2im ------------------------------------------------------- */

typedef struct { int64_t k[2], s[2], pl[2], ph[2], d[2]; } unfold_params;

static int unfold_args(const char *op, PyObject *ok, PyObject *os, PyObject *opl, PyObject *oph,
                       PyObject *od, unfold_params *u)
{
    u->s[0] = u->s[1] = u->d[0] = u->d[1] = 1;
    u->pl[0] = u->pl[1] = u->ph[0] = u->ph[1] = 0;
    if (et_py_int_tuple(ok, op, "kernel_size", 2, u->k) < 0 ||
        (os && et_py_int_tuple(os, op, "stride", 2, u->s) < 0) ||
        (opl && et_py_int_tuple(opl, op, "pad_lo", 2, u->pl) < 0) ||
        (oph && et_py_int_tuple(oph, op, "pad_hi", 2, u->ph) < 0) ||
        (od && et_py_int_tuple(od, op, "dilation", 2, u->d) < 0))
        return -1;
    for (int i = 0; i < 2; i++)
        if (u->k[i] <= 0 || u->s[i] <= 0 || u->d[i] <= 0 || u->pl[i] < 0 || u->ph[i] < 0) {
            PyErr_Format(et_py_ValueError, "%s: kernel_size (%lld, %lld), stride (%lld, %lld), "
                         "dilation (%lld, %lld) must be positive and padding non-negative", op,
                         (long long)u->k[0], (long long)u->k[1], (long long)u->s[0],
                         (long long)u->s[1], (long long)u->d[0], (long long)u->d[1]);
            return -1;
        }
    /* as the pooling kernels: absurd parameters are refused before any index
     * arithmetic (padding 2^62 made the output width 2^61 + 1, whose product
     * with the height wrapped to a small column buffer: a segfault, found by
     * fuzz/fuzz_ops.py) */
    for (int i = 0; i < 2; i++)
        if (u->k[i] > INT32_MAX || u->s[i] > INT32_MAX || u->d[i] > INT32_MAX ||
            u->pl[i] > INT32_MAX || u->ph[i] > INT32_MAX) {
            PyErr_Format(et_py_ValueError, "%s: sizes and parameters must be <= 2147483647, got "
                         "kernel_size (%lld, %lld), stride (%lld, %lld), pad_lo (%lld, %lld), "
                         "pad_hi (%lld, %lld), dilation (%lld, %lld)", op,
                         (long long)u->k[0], (long long)u->k[1], (long long)u->s[0],
                         (long long)u->s[1], (long long)u->pl[0], (long long)u->pl[1],
                         (long long)u->ph[0], (long long)u->ph[1], (long long)u->d[0],
                         (long long)u->d[1]);
            return -1;
        }
    return 0;
}

/* R = C*KH*KW rows and L = OH*OW columns per image, and N*R*L, without int64
 * overflow: 0, or -1 with ShapeError (a wrapped product would size a small
 * buffer for loops over the true extent). */
static int unfold_sizes(const char *op, int64_t N, int64_t C, const unfold_params *u,
                        const int64_t o[2], int64_t *R, int64_t *L)
{
    int64_t r, l, t;
    if (__builtin_mul_overflow(C, u->k[0], &r) || __builtin_mul_overflow(r, u->k[1], &r) ||
        __builtin_mul_overflow(o[0], o[1], &l) || __builtin_mul_overflow(N, r, &t) ||
        __builtin_mul_overflow(t, l, &t)) {
        PyErr_Format(et_py_ValueError, "%s: the columns (%lld, %lld*%lld*%lld, %lld*%lld) "
                     "overflow 64-bit sizes", op, (long long)N, (long long)C, (long long)u->k[0],
                     (long long)u->k[1], (long long)o[0], (long long)o[1]);
        return -1;
    }
    *R = r;
    *L = l;
    return 0;
}

static int unfold_out(const char *op, const int64_t *xs, const unfold_params *u, int64_t o[2])
{
    for (int i = 0; i < 2; i++) {
        o[i] = et_conv_out_size(xs[2 + i], u->k[i], u->s[i], u->pl[i], u->ph[i], u->d[i]);
        if (o[i] <= 0) {
            PyErr_Format(et_py_ValueError, "%s: kernel (%lld, %lld) dilation (%lld, %lld) larger "
                         "than the padded input of (%lld, %lld, %lld, %lld)", op,
                         (long long)u->k[0], (long long)u->k[1], (long long)u->d[0],
                         (long long)u->d[1], (long long)xs[0], (long long)xs[1],
                         (long long)xs[2], (long long)xs[3]);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_im2col(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "kernel_size", "stride", "pad_lo", "pad_hi", "dilation", NULL};
    const char *op = "im2col";
    PyObject *ox, *ok, *os = NULL, *opl = NULL, *oph = NULL, *od = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOO:im2col", kwl, &ox, &ok, &os, &opl, &oph, &od))
        return NULL;
    et_tensor x, c;
    unfold_params u;
    if (et_py_f32_arg(ox, op, "x", &x, 0) < 0) return NULL;
    if (x.ndim != 4) {
        char s[96];
        return et_py_raise(et_error(ET_ERR_VALUE, "%s: x must be 4D (N, C, H, W), got %s", op,
                                    et_shape_str(&x, s, sizeof s)), NULL);
    }
    if (unfold_args(op, ok, os, opl, oph, od, &u) < 0) return NULL;
    int64_t o[2];
    if (unfold_out(op, x.shape, &u, o) < 0) return NULL;
    const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
    int64_t R, L;
    if (unfold_sizes(op, N, C, &u, o, &R, &L) < 0) return NULL;
    int64_t cs[3] = {N, R, L};
    PyObject *out = et_py_empty(3, cs, ET_F32, 0, &c);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t n = 0; n < N; n++)
        et_im2col_f32((const float *)x.data + n * C * H * W, C, H, W, u.k[0], u.k[1], u.s, u.pl,
                      u.d, o[0], o[1], (float *)c.data + n * cs[1] * cs[2]);
    Py_END_ALLOW_THREADS
    return out;
}

static PyObject *py_col2im(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"cols", "x_shape", "kernel_size", "stride", "pad_lo", "pad_hi",
                          "dilation", NULL};
    const char *op = "col2im";
    PyObject *oc, *oxs, *ok, *os = NULL, *opl = NULL, *oph = NULL, *od = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOOO:col2im", kwl, &oc, &oxs, &ok, &os, &opl,
                                     &oph, &od))
        return NULL;
    et_tensor c, x;
    unfold_params u;
    int64_t xs[4], o[2];
    if (et_py_f32_arg(oc, op, "cols", &c, 0) < 0 || et_py_int_tuple(oxs, op, "x_shape", 4, xs) < 0 ||
        unfold_args(op, ok, os, opl, oph, od, &u) < 0)
        return NULL;
    for (int i = 0; i < 4; i++)
        if (xs[i] <= 0 || xs[i] > INT32_MAX) {
            PyErr_Format(et_py_ValueError, "%s: x_shape must be in [1, 2^31), got (%lld, %lld, "
                         "%lld, %lld)", op, (long long)xs[0], (long long)xs[1], (long long)xs[2],
                         (long long)xs[3]);
            return NULL;
        }
    if (unfold_out(op, xs, &u, o) < 0) return NULL;
    const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
    int64_t R, L;
    if (unfold_sizes(op, N, C, &u, o, &R, &L) < 0) return NULL;
    if (c.ndim != 3 || c.shape[0] != N || c.shape[1] != R || c.shape[2] != L) {
        char s[96];
        return et_py_raise(et_error(ET_ERR_VALUE, "%s: cols %s must be (%lld, %lld, %lld) for "
                                    "x_shape (%lld, %lld, %lld, %lld)", op,
                                    et_shape_str(&c, s, sizeof s), (long long)N, (long long)R,
                                    (long long)L, (long long)N, (long long)C, (long long)H,
                                    (long long)W), NULL);
    }
    PyObject *out = et_py_empty(4, xs, ET_F32, 0, &x);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t n = 0; n < N; n++)
        et_col2im_f32((const float *)c.data + n * R * L, C, H, W, u.k[0], u.k[1], u.s, u.pl, u.d,
                      o[0], o[1], (float *)x.data + n * C * H * W);
    Py_END_ALLOW_THREADS
    return out;
}


/* ---- low-precision primitives (csrc/BINDINGS.md) ------------------------------------ */

/* The first operand's edgetrain dtype for the precision `prec` ("int8",
 * "bfloat16", "float16", "float32" or None = from the array's dtype).
 * bf16 arrays are numpy uint16 holding the bits, so uint16 needs
 * dtype="bfloat16". Returns 0, or -1 with DtypeError set. */
static int lowp_first_dtype(PyObject *obj, const char *op, const char *name, const char *prec,
                            et_dtype *out)
{
    if (!obj || !PyArray_Check(obj)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be a numpy array, got %s", op, name,
                     obj ? Py_TYPE(obj)->tp_name : "nothing");
        return -1;
    }
    const int t = PyArray_TYPE((PyArrayObject *)obj);
    const char *got = PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name;
    if (!prec) {
        switch (t) {
        case NPY_UINT8: *out = ET_U8; return 0;
        case NPY_INT8: *out = ET_S8; return 0;
        case NPY_FLOAT16: *out = ET_F16; return 0;
        case NPY_FLOAT32: *out = ET_F32; return 0;
        case NPY_UINT16:
            PyErr_Format(et_py_TypeError, "%s: %s is a uint16 array: pass dtype='bfloat16' to "
                         "run it as bfloat16 bits", op, name);
            return -1;
        default:
            PyErr_Format(et_py_TypeError, "%s: %s has dtype %s; low-precision primitives take "
                         "uint8/int8 (int8), uint16 bits (bfloat16), float16 or float32", op, name,
                         got);
            return -1;
        }
    }
    if (!strcmp(prec, "int8") || !strcmp(prec, "s8") || !strcmp(prec, "u8") || !strcmp(prec, "uint8")) {
        if (t == NPY_UINT8) { *out = ET_U8; return 0; }
        if (t == NPY_INT8) { *out = ET_S8; return 0; }
        PyErr_Format(et_py_TypeError, "%s: %s must be uint8 or int8 for dtype='int8', got %s",
                     op, name, got);
        return -1;
    }
    et_dtype dt;
    if (et_dtype_from_name(prec, &dt) != ET_OK || !(dt == ET_BF16 || dt == ET_F16 || dt == ET_F32)) {
        et_error_clear();
        PyErr_Format(et_py_TypeError, "%s: dtype must be 'int8', 'bfloat16', 'float16' or "
                     "'float32', got '%s'", op, prec);
        return -1;
    }
    if (t != et_py_npy_type(dt)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be %s for dtype='%s' (bfloat16: numpy uint16 "
                     "bits), got %s", op, name,
                     dt == ET_BF16 ? "uint16" : dt == ET_F16 ? "float16" : "float32", prec, got);
        return -1;
    }
    *out = dt;
    return 0;
}

/* Borrows the first operand as `dt`, the second as its combination's dtype
 * (int8: int8), the optional bias as float32; *ydt = the output dtype. */
static int lowp_args(const char *op, PyObject *o1, const char *n1, PyObject *o2, const char *n2,
                     PyObject *obias, const char *prec, et_tensor *t1, et_tensor *t2,
                     et_tensor *bias, et_dtype *ydt)
{
    et_dtype dt, wdt;
    int bias_ok;
    if (lowp_first_dtype(o1, op, n1, prec, &dt) < 0) return -1;
    et_combo(dt, &wdt, ydt, &bias_ok);
    if (o2 && PyArray_Check(o2) && PyArray_TYPE((PyArrayObject *)o2) != et_py_npy_type(wdt)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be %s%s when %s is %s (%s x %s -> %s), got %s",
                     op, n2, et_dtype_name(wdt), wdt == ET_BF16 ? " (numpy uint16 bits)" : "", n1,
                     et_dtype_name(dt), et_dtype_name(dt), et_dtype_name(wdt),
                     et_dtype_name(*ydt), PyArray_DESCR((PyArrayObject *)o2)->typeobj->tp_name);
        return -1;
    }
    if (et_py_tensor_arg(o1, op, n1, -1, dt, t1) < 0 || et_py_tensor_arg(o2, op, n2, -1, wdt, t2) < 0 ||
        et_py_tensor_arg_opt(obias, op, "bias", -1, ET_F32, bias) < 0)
        return -1;
    if (bias->data && !bias_ok) {
        PyErr_Format(et_py_NotImplemented, "%s: %s x %s -> %s products take no bias (the "
                     "dequantize epilogue adds it in float32)", op, et_dtype_name(dt),
                     et_dtype_name(wdt), et_dtype_name(*ydt));
        return -1;
    }
    return 0;
}

static PyObject *py_matmul_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"a", "b", "trans_a", "trans_b", "bias", "backend", "dtype", NULL};
    const char *op = "matmul_lowp";
    PyObject *oa, *ob, *obias = Py_None;
    int ta = 0, tb = 0;
    const char *bname = "ref", *prec = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ppOsz:matmul_lowp", kwl, &oa, &ob, &ta, &tb,
                                     &obias, &bname, &prec))
        return NULL;
    et_matmul_args m;
    memset(&m, 0, sizeof m);
    et_dtype ydt;
    if (lowp_args(op, oa, "a", ob, "b", obias, prec, &m.a, &m.b, &m.bias, &ydt) < 0) return NULL;
    if (!(m.backend = et_py_backend_arg(bname))) return NULL;
    m.trans_a = ta;
    m.trans_b = tb;
    if (m.a.ndim != 2 || m.b.ndim != 2) {
        char s1[96], s2[96];
        return et_py_raise(et_error(ET_ERR_VALUE, "%s: a %s and b %s must be 2D", op,
                                    et_shape_str(&m.a, s1, sizeof s1), et_shape_str(&m.b, s2, sizeof s2)), NULL);
    }
    int64_t ys[2] = {ta ? m.a.shape[1] : m.a.shape[0], tb ? m.b.shape[0] : m.b.shape[1]};
    PyObject *y = et_py_empty(2, ys, ydt, 0, &m.y);
    if (!y) return NULL;
    et_status st = et_matmul_check(op, &m);
    if (st == ET_OK) {
        Py_BEGIN_ALLOW_THREADS
        st = et_offload_matmul("matmul", -1, &m);
        Py_END_ALLOW_THREADS
    }
    if (st != ET_OK) { Py_DECREF(y); return et_py_raise(st, NULL); }
    return y;
}

static PyObject *py_conv2d_primitive_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "stride", "pad_lo", "pad_hi", "dilation", "groups",
                          "dtype", "backend", NULL};
    const char *op = "conv2d_primitive_lowp";
    PyObject *ox, *ow, *obias = Py_None, *os = NULL, *opl = NULL, *oph = NULL, *od = NULL;
    long long groups = 1;
    const char *bname = "ref", *prec = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOOLzs:conv2d_primitive_lowp", kwl, &ox, &ow,
                                     &obias, &os, &opl, &oph, &od, &groups, &prec, &bname))
        return NULL;
    et_conv2d_args a;
    memset(&a, 0, sizeof a);
    a.stride[0] = a.stride[1] = a.dilation[0] = a.dilation[1] = 1;
    et_dtype ydt;
    if (lowp_args(op, ox, "x", ow, "w", obias, prec, &a.x, &a.w, &a.bias, &ydt) < 0) return NULL;
    return conv_primitive_run(op, &a, ydt, os, opl, oph, od, groups, bname);
}

/* "blas/matmul/s8" */
static PyObject *fallback_key(const et_fallback_stat *e)
{
    return PyUnicode_FromFormat("%s/%s/%s", e->backend, et_op_name(e->op), et_dtype_short(e->dtype));
}

enum { FB_MAX = 256 };

static PyObject *py_fallback_stats(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"detail", NULL};
    int detail = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:fallback_stats", kwl, &detail)) return NULL;
    et_fallback_stat e[FB_MAX];
    int n = et_fallback_stats(e, FB_MAX);
    if (n > FB_MAX) n = FB_MAX;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *k = fallback_key(&e[i]);
        PyObject *v = detail ? Py_BuildValue("{sLsO}", "count", (long long)e[i].count, "warned",
                                             e[i].warned ? Py_True : Py_False)
                             : PyLong_FromLongLong(e[i].count);
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k); Py_XDECREF(v); Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k); Py_DECREF(v);
    }
    return d;
}

static PyObject *py_fallback_warnings(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    et_fallback_stat e[FB_MAX];
    int n = et_fallback_take_unwarned(e, FB_MAX);
    if (n > FB_MAX) n = FB_MAX;
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromFormat(
            "backend '%s' has no %s %s primitive: running it on 'ref' instead (%s/%s/%s, "
            "counted in edgetrain._C.fallback_stats())", e[i].backend, et_dtype_name(e[i].dtype),
            et_op_name(e[i].op), e[i].backend, et_op_name(e[i].op), et_dtype_short(e[i].dtype));
        if (!s || PyList_Append(l, s) < 0) { Py_XDECREF(s); Py_DECREF(l); return NULL; }
        Py_DECREF(s);
    }
    return l;
}

static PyObject *py_reset_fallback_stats(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    et_fallback_reset();
    Py_RETURN_NONE;
}

static PyObject *py_backend_supports(PyObject *self, PyObject *args)
{
    (void)self;
    const char *bname, *opn, *dtn;
    if (!PyArg_ParseTuple(args, "sss:backend_supports", &bname, &opn, &dtn)) return NULL;
    const et_backend *b = et_py_backend_arg(bname);
    if (!b) return NULL;
    et_op o;
    if (!strcmp(opn, "matmul")) o = ET_OP_MATMUL;
    else if (!strcmp(opn, "conv2d")) o = ET_OP_CONV2D;
    else {
        PyErr_Format(et_py_ValueError, "backend_supports: op must be 'matmul' or 'conv2d', got '%s'", opn);
        return NULL;
    }
    et_dtype dt;
    et_status st = et_dtype_from_name(dtn, &dt);
    if (st != ET_OK) return et_py_raise(st, NULL);
    return PyBool_FromLong(b->supports(o, dt));
}

static PyMethodDef accel_methods[] = {
    {"backends", py_backends, METH_NOARGS, "backends() -> names built and usable here, ref first"},
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "matmul(a, b, trans_a=False, trans_b=False, bias=None, backend='ref') -> y"},
    {"conv2d_primitive", (PyCFunction)(void (*)(void))py_conv2d_primitive, METH_VARARGS | METH_KEYWORDS,
     "conv2d_primitive(x, w, bias, stride, pad_lo, pad_hi, dilation, groups, backend) -> y"},
    {"conv2d_forward", (PyCFunction)(void (*)(void))py_conv2d_forward, METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward(x, w, bias, stride, padding, dilation, groups, backend='ref') -> y"},
    {"conv2d_backward", (PyCFunction)(void (*)(void))py_conv2d_backward, METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw, need_db, "
     "backend='ref') -> (dx|None, dw|None, db|None)"},
    {"conv2d_backward_data", (PyCFunction)(void (*)(void))py_conv2d_backward_data,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward_data(dy, w, x_shape, stride, padding, dilation, groups, backend='ref') -> dx"},
    {"conv2d_backward_weight", (PyCFunction)(void (*)(void))py_conv2d_backward_weight,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward_weight(dy, x, w_shape, stride, padding, dilation, groups, backend='ref') -> dw"},
    {"linear_forward", (PyCFunction)(void (*)(void))py_linear_forward, METH_VARARGS | METH_KEYWORDS,
     "linear_forward(x, w, bias, backend='ref') -> y = x @ w.T + bias"},
    {"linear_backward", (PyCFunction)(void (*)(void))py_linear_backward, METH_VARARGS | METH_KEYWORDS,
     "linear_backward(dy, x, w, need_dx, need_dw, need_db, backend='ref') -> (dx, dw, db)"},
    {"cache_stats", py_cache_stats, METH_NOARGS,
     "cache_stats() -> {hits, misses, evictions, size, capacity} of the onednn primitive cache"},
    {"set_cache_capacity", py_set_cache_capacity, METH_VARARGS,
     "set_cache_capacity(n): bound the onednn primitive cache (n >= 1, evicts LRU at once)"},
    {"clear_cache", py_clear_cache, METH_NOARGS, "clear_cache(): empty the onednn cache, zero counters"},
    {"im2col", (PyCFunction)(void (*)(void))py_im2col, METH_VARARGS | METH_KEYWORDS,
     "im2col(x, kernel_size, stride, pad_lo, pad_hi, dilation) -> cols (N, C*KH*KW, OH*OW)"},
    {"col2im", (PyCFunction)(void (*)(void))py_col2im, METH_VARARGS | METH_KEYWORDS,
     "col2im(cols, x_shape, kernel_size, stride, pad_lo, pad_hi, dilation) -> x (sums overlaps)"},
    {"matmul_lowp", (PyCFunction)(void (*)(void))py_matmul_lowp, METH_VARARGS | METH_KEYWORDS,
     "matmul_lowp(a, b, trans_a=False, trans_b=False, bias=None, backend='ref', dtype=None) -> y: "
     "u8|s8 x s8 -> int32 (no bias), bf16 (uint16 bits) or f16 x same -> float32"},
    {"conv2d_primitive_lowp", (PyCFunction)(void (*)(void))py_conv2d_primitive_lowp,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_primitive_lowp(x, w, bias, stride, pad_lo, pad_hi, dilation, groups, dtype, backend) -> y"},
    {"fallback_stats", (PyCFunction)(void (*)(void))py_fallback_stats, METH_VARARGS | METH_KEYWORDS,
     "fallback_stats(detail=False) -> {'blas/matmul/s8': count, ...} (detail: {count, warned})"},
    {"fallback_warnings", py_fallback_warnings, METH_NOARGS,
     "fallback_warnings() -> messages for fallbacks not warned yet (marks them warned: warn once)"},
    {"reset_fallback_stats", py_reset_fallback_stats, METH_NOARGS,
     "reset_fallback_stats(): zero the fallback counts and warned flags"},
    {"backend_supports", py_backend_supports, METH_VARARGS,
     "backend_supports(backend, op, dtype) -> bool: the backend runs it itself (else ref)"},
    {NULL, NULL, 0, NULL}};

int et_py_init_accel(PyObject *m)
{
    return PyModule_AddFunctions(m, accel_methods);
}
