/* bind_lowp.c - _C's low-precision layer products (issue 3, section 4; see
 * csrc/BINDINGS.md): conv2d_forward_lowp / conv2d_backward_lowp /
 * linear_forward_lowp / linear_backward_lowp. Same pattern as bind_accel.c:
 * parse and borrow (GIL held), validate and allocate the outputs before
 * anything is submitted, release the GIL around quantize + submit + wait.
 */
#include "common.h"

#include "../backends/backend.h"
#include "../ops/conv2d_lowp.h"
#include "../ops/linear_lowp.h"
#include "../quant/wcache.h"



static int prec_arg(const char *op, const char *arg, const char *name, et_prec *out)
{
    et_status st = et_prec_from_name(op, arg, name, out);
    if (st != ET_OK) { et_py_raise(st, NULL); return -1; }
    return 0;
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

/* any Python int, taken mod 2^64 */
static int u64_arg(PyObject *obj, const char *op, const char *arg, uint64_t *out)
{
    if (!obj) return 0;
    if (!PyLong_Check(obj)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be an int, got %s", op, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLongMask(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* x_q as the forward kept it, or None: uint8/int8 with x_scale (an int8
 * forward's), or bf16 bits (numpy uint16) / float16 without one (a 16-bit
 * forward's). x may then be None (a shape-only f32 view of x_q's shape stands
 * for it). */
static int xq_args(const char *op, PyObject *oxq, PyObject *oxs, PyObject *ox, int ndim,
                   et_tensor *xq, float *xscale, et_tensor *x)
{
    memset(xq, 0, sizeof *xq);
    *xscale = 0.0f;
    int have = oxq && oxq != Py_None;
    if (!have) {
        if (!ox || ox == Py_None) {
            PyErr_Format(et_py_ValueError, "%s: x is None and no x_q was given", op);
            return -1;
        }
        return et_py_f32_arg(ox, op, "x", x, 0);
    }
    if (!PyArray_Check(oxq)) {
        PyErr_Format(et_py_TypeError, "%s: x_q must be a numpy array, got %s", op,
                     Py_TYPE(oxq)->tp_name);
        return -1;
    }
    int t = PyArray_TYPE((PyArrayObject *)oxq);
    et_dtype dt;
    switch (t) {
    case NPY_UINT8: dt = ET_U8; break;
    case NPY_INT8: dt = ET_S8; break;
    case NPY_UINT16: dt = ET_BF16; break;   /* bf16 bits */
    case NPY_FLOAT16: dt = ET_F16; break;
    default:
        PyErr_Format(et_py_TypeError, "%s: x_q must be uint8 or int8 (with x_scale), or bf16 "
                     "bits (uint16) or float16 (without), got %s", op,
                     PyArray_DESCR((PyArrayObject *)oxq)->typeobj->tp_name);
        return -1;
    }
    if (et_py_tensor_arg(oxq, op, "x_q", ndim, dt, xq) < 0) return -1;
    const int q8 = dt == ET_U8 || dt == ET_S8;
    const int has_scale = oxs && oxs != Py_None;
    if (q8 && !has_scale) {
        PyErr_Format(et_py_ValueError, "%s: x_q given without x_scale", op);
        return -1;
    }
    if (!q8 && has_scale) {
        PyErr_Format(et_py_ValueError, "%s: x_scale is for an int8 x_q; a %s x_q has none", op,
                     dt == ET_BF16 ? "bf16" : "float16");
        return -1;
    }
    if (q8) {
        double s = PyFloat_AsDouble(oxs);
        if (s == -1.0 && PyErr_Occurred()) return -1;
        *xscale = (float)s;
    }
    if (ox && ox != Py_None) {
        if (et_py_f32_arg(ox, op, "x", x, 0) < 0) return -1;
    } else if (et_tensor_view(x, NULL, ET_F32, xq->ndim, xq->shape) != ET_OK) {
        et_py_raise(ET_ERR_VALUE, NULL);
        return -1;
    }
    return 0;
}

/* The saved-x array a low-precision forward fills when asked (return_xq): x at
 * the forward's precision, u8/s8 for int8, bf16 bits / f16 for 16-bit (an fp32
 * forward has none: the caller keeps x itself). */
static PyObject *saved_x_array(int ndim, const int64_t *shape, et_prec prec, int x_nonneg,
                               et_tensor *xq)
{
    const et_dtype dt = prec == ET_PREC_INT8 ? (x_nonneg ? ET_U8 : ET_S8) : et_prec_dtype(prec);
    return et_py_empty(ndim, shape, dt, 0, xq);
}

/* ---- prepacked weights: an entry lives as long as its weight array --------
 * csrc/quant/wcache.h keeps the int8 quantization of a weight between calls
 * (checked against an exact copy, so never stale). When a call created an
 * entry, a weakref to the weight array passed in frees it when the array
 * dies, so dead models do not hold cache memory until LRU eviction. The
 * weakrefs live in wc_refs {owner id: weakref} until their callback runs. */
static PyObject *wc_refs;

static PyObject *wc_dead(PyObject *idobj, PyObject *ref)
{
    (void)ref;
    unsigned long long id = PyLong_AsUnsignedLongLong(idobj);
    if (!PyErr_Occurred()) et_wcache_drop((uint64_t)id);
    PyErr_Clear();
    if (wc_refs && PyDict_DelItem(wc_refs, idobj) < 0) PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef wc_dead_def = {"_weight_cache_drop", wc_dead, METH_O,
                                  "frees a prepacked weight whose array died"};

/* After a forward (GIL held): ties the entry it created (if any) to ow. */
static void wc_track(PyObject *ow)
{
    const uint64_t id = et_wcache_take_fresh();
    if (!id) return;
    PyObject *exc_t, *exc_v, *exc_tb;
    PyErr_Fetch(&exc_t, &exc_v, &exc_tb);   /* keep a pending error (none expected) intact */
    PyObject *idobj = PyLong_FromUnsignedLongLong((unsigned long long)id);
    PyObject *cb = idobj ? PyCFunction_New(&wc_dead_def, idobj) : NULL;
    PyObject *wr = cb ? PyWeakref_NewRef(ow, cb) : NULL;
    if (!wc_refs) wc_refs = PyDict_New();
    if (!wr || !wc_refs || PyDict_SetItem(wc_refs, idobj, wr) < 0) {
        /* not trackable (no weakref support): leave it to LRU eviction */
        PyErr_Clear();
    }
    Py_XDECREF(wr);
    Py_XDECREF(cb);
    Py_XDECREF(idobj);
    PyErr_Restore(exc_t, exc_v, exc_tb);
}

/* Builds y or (y, x_q, x_scale): x_scale None unless x_q is int8 */
static PyObject *fwd_result(PyObject *y, PyObject *oxq, float xs, int return_xq, et_prec prec)
{
    if (!return_xq) { Py_XDECREF(oxq); return y; }
    if (!oxq) { Py_INCREF(Py_None); oxq = Py_None; }
    PyObject *s = prec != ET_PREC_INT8 ? (Py_INCREF(Py_None), Py_None) : PyFloat_FromDouble((double)xs);
    if (!s) { Py_DECREF(y); Py_DECREF(oxq); return NULL; }
    return Py_BuildValue("(NNN)", y, oxq, s);
}

static PyObject *py_conv2d_forward_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "stride", "padding", "dilation", "groups",
                          "precision", "backend", "x_nonneg", "return_xq", "cache_weight", NULL};
    const char *op = "conv2d_forward_lowp";
    PyObject *ox, *ow, *obias = Py_None, *os = NULL, *opd = NULL, *od = NULL;
    long long groups = 1;
    const char *bname = "ref", *pname = "fp32";
    int x_nonneg = 0, return_xq = 0, cache_w = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOLssppp:conv2d_forward_lowp", kwl, &ox, &ow,
                                     &obias, &os, &opd, &od, &groups, &pname, &bname, &x_nonneg,
                                     &return_xq, &cache_w))
        return NULL;
    et_tensor x, w, bias, y, xq;
    et_conv2d_params p;
    et_prec prec;
    if (et_py_f32_arg(ox, op, "x", &x, 0) < 0 || et_py_f32_arg(ow, op, "w", &w, 0) < 0 ||
        et_py_f32_arg(obias, op, "bias", &bias, 1) < 0 || conv_params(op, os, opd, od, groups, &p) < 0 ||
        prec_arg(op, "precision", pname, &prec) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[4];
    et_status st = et_conv2d_shape(op, &x, &w, &bias, &p, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *out = et_py_empty(4, ys, ET_F32, 0, &y);
    if (!out) return NULL;
    PyObject *oxq = NULL;
    memset(&xq, 0, sizeof xq);
    if (return_xq && prec != ET_PREC_FP32) {
        oxq = saved_x_array(4, x.shape, prec, x_nonneg, &xq);
        if (!oxq) { Py_DECREF(out); return NULL; }
    }
    float xs = 0.0f;
    Py_BEGIN_ALLOW_THREADS
    st = et_conv2d_forward_lowp(be, &x, &w, &bias, &p, prec, x_nonneg, cache_w, &y, &xq, &xs);
    Py_END_ALLOW_THREADS
    wc_track(ow);
    if (st != ET_OK) { Py_DECREF(out); Py_XDECREF(oxq); return et_py_raise(st, NULL); }
    return fwd_result(out, oxq, xs, return_xq, prec);
}

static PyObject *py_conv2d_backward_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"dy", "x", "w", "stride", "padding", "dilation", "groups", "need_dx",
                          "need_dw", "need_db", "precision_dx", "precision_dw", "seed", "offset",
                          "backend", "x_nonneg", "x_q", "x_scale", NULL};
    const char *op = "conv2d_backward_lowp";
    PyObject *ody, *ox, *ow, *os = NULL, *opd = NULL, *od = NULL, *oseed = NULL, *ooff = NULL;
    PyObject *oxq = Py_None, *oxs = Py_None;
    long long groups = 1;
    int need_dx = 1, need_dw = 1, need_db = 1, x_nonneg = 0;
    const char *bname = "ref", *pdx = "fp32", *pdw = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOOLpppssOOspOO:conv2d_backward_lowp", kwl,
                                     &ody, &ox, &ow, &os, &opd, &od, &groups, &need_dx, &need_dw,
                                     &need_db, &pdx, &pdw, &oseed, &ooff, &bname, &x_nonneg,
                                     &oxq, &oxs))
        return NULL;
    et_tensor dy, x, w, dx, dw, db, xq;
    et_conv2d_params p;
    et_lowp_bwd_opts o;
    memset(&o, 0, sizeof o);
    o.x_nonneg = x_nonneg;
    if (et_py_f32_arg(ody, op, "dy", &dy, 0) < 0 ||
        xq_args(op, oxq, oxs, ox, 4, &xq, &o.x_scale, &x) < 0 ||
        et_py_f32_arg(ow, op, "w", &w, 0) < 0 || conv_params(op, os, opd, od, groups, &p) < 0 ||
        prec_arg(op, "precision_dx", pdx, &o.prec_dx) < 0 ||
        prec_arg(op, "precision_dw", pdw, &o.prec_dw) < 0 ||
        u64_arg(oseed, op, "seed", &o.seed) < 0 || u64_arg(ooff, op, "offset", &o.offset) < 0)
        return NULL;
    o.x_q = xq.data ? &xq : NULL;
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
    st = et_conv2d_backward_lowp(be, &dy, &x, &w, &p, &o, need_dx ? &dx : NULL,
                                 need_dw ? &dw : NULL, need_db ? &db : NULL);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { et_py_raise(st, NULL); goto fail; }
    return Py_BuildValue("(NNN)", odx, odw, odb);
fail:
    Py_XDECREF(odx); Py_XDECREF(odw); Py_XDECREF(odb);
    return NULL;
}

static PyObject *py_linear_forward_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"x", "w", "bias", "precision", "backend", "x_nonneg", "return_xq",
                          "cache_weight", NULL};
    const char *op = "linear_forward_lowp";
    PyObject *ox, *ow, *obias = Py_None;
    const char *bname = "ref", *pname = "fp32";
    int x_nonneg = 0, return_xq = 0, cache_w = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Ossppp:linear_forward_lowp", kwl, &ox, &ow,
                                     &obias, &pname, &bname, &x_nonneg, &return_xq, &cache_w))
        return NULL;
    et_tensor x, w, bias, y, xq;
    et_prec prec;
    if (et_py_f32_arg(ox, op, "x", &x, 0) < 0 || et_py_f32_arg(ow, op, "w", &w, 0) < 0 ||
        et_py_f32_arg(obias, op, "bias", &bias, 1) < 0 || prec_arg(op, "precision", pname, &prec) < 0)
        return NULL;
    const et_backend *be = et_py_backend_arg(bname);
    if (!be) return NULL;
    int64_t ys[2];
    et_status st = et_linear_shape(op, &x, &w, &bias, ys);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *out = et_py_empty(2, ys, ET_F32, 0, &y);
    if (!out) return NULL;
    PyObject *oxq = NULL;
    memset(&xq, 0, sizeof xq);
    if (return_xq && prec != ET_PREC_FP32) {
        oxq = saved_x_array(2, x.shape, prec, x_nonneg, &xq);
        if (!oxq) { Py_DECREF(out); return NULL; }
    }
    float xs = 0.0f;
    Py_BEGIN_ALLOW_THREADS
    st = et_linear_forward_lowp(be, &x, &w, &bias, prec, x_nonneg, cache_w, &y, &xq, &xs);
    Py_END_ALLOW_THREADS
    wc_track(ow);
    if (st != ET_OK) { Py_DECREF(out); Py_XDECREF(oxq); return et_py_raise(st, NULL); }
    return fwd_result(out, oxq, xs, return_xq, prec);
}

static PyObject *py_linear_backward_lowp(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwl[] = {"dy", "x", "w", "need_dx", "need_dw", "need_db", "precision_dx",
                          "precision_dw", "seed", "offset", "backend", "x_nonneg", "x_q",
                          "x_scale", NULL};
    const char *op = "linear_backward_lowp";
    PyObject *ody, *ox, *ow, *oseed = NULL, *ooff = NULL, *oxq = Py_None, *oxs = Py_None;
    int need_dx = 1, need_dw = 1, need_db = 1, x_nonneg = 0;
    const char *bname = "ref", *pdx = "fp32", *pdw = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pppssOOspOO:linear_backward_lowp", kwl, &ody,
                                     &ox, &ow, &need_dx, &need_dw, &need_db, &pdx, &pdw, &oseed,
                                     &ooff, &bname, &x_nonneg, &oxq, &oxs))
        return NULL;
    et_tensor dy, x, w, dx, dw, db, xq;
    et_lowp_bwd_opts o;
    memset(&o, 0, sizeof o);
    o.x_nonneg = x_nonneg;
    if (et_py_f32_arg(ody, op, "dy", &dy, 0) < 0 ||
        xq_args(op, oxq, oxs, ox, 2, &xq, &o.x_scale, &x) < 0 || et_py_f32_arg(ow, op, "w", &w, 0) < 0 ||
        prec_arg(op, "precision_dx", pdx, &o.prec_dx) < 0 ||
        prec_arg(op, "precision_dw", pdw, &o.prec_dw) < 0 ||
        u64_arg(oseed, op, "seed", &o.seed) < 0 || u64_arg(ooff, op, "offset", &o.offset) < 0)
        return NULL;
    o.x_q = xq.data ? &xq : NULL;
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
    st = et_linear_backward_lowp(be, &dy, &x, &w, &o, need_dx ? &dx : NULL, need_dw ? &dw : NULL,
                                 need_db ? &db : NULL);
    Py_END_ALLOW_THREADS
    if (st != ET_OK) { et_py_raise(st, NULL); goto fail; }
    return Py_BuildValue("(NNN)", odx, odw, odb);
fail:
    Py_XDECREF(odx); Py_XDECREF(odw); Py_XDECREF(odb);
    return NULL;
}

static PyMethodDef lowp_methods[] = {
    {"conv2d_forward_lowp", (PyCFunction)(void (*)(void))py_conv2d_forward_lowp,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward_lowp(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, "
     "precision='fp32', backend='ref', x_nonneg=False, return_xq=False, cache_weight=True) -> y | "
     "(y, x_q, x_scale): x_q is x at the forward's precision (int8: u8/s8 with x_scale; bf16: "
     "uint16 bits, fp16: float16, x_scale None; fp32: None)"},
    {"conv2d_backward_lowp", (PyCFunction)(void (*)(void))py_conv2d_backward_lowp,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_backward_lowp(dy, x, w, stride, padding, dilation, groups, need_dx, need_dw, need_db, "
     "precision_dx, precision_dw, seed, offset, backend, x_nonneg=False, x_q=None, x_scale=None) "
     "-> (dx, dw, db)"},
    {"linear_forward_lowp", (PyCFunction)(void (*)(void))py_linear_forward_lowp,
     METH_VARARGS | METH_KEYWORDS,
     "linear_forward_lowp(x, w, bias=None, precision='fp32', backend='ref', x_nonneg=False, "
     "return_xq=False, cache_weight=True) -> y | (y, x_q, x_scale), x_q as conv2d_forward_lowp's"},
    {"linear_backward_lowp", (PyCFunction)(void (*)(void))py_linear_backward_lowp,
     METH_VARARGS | METH_KEYWORDS,
     "linear_backward_lowp(dy, x, w, need_dx, need_dw, need_db, precision_dx, precision_dw, seed, "
     "offset, backend, x_nonneg=False, x_q=None, x_scale=None) -> (dx, dw, db)"},
    {NULL, NULL, 0, NULL}};

int et_py_init_lowp(PyObject *m)
{
    return PyModule_AddFunctions(m, lowp_methods);
}
