/* bind_kernels.c - edgetrain._C's CPU-side kernels (csrc/kernels): relu,
 * pooling, batch norm, log_softmax + nll_loss, SGD / Adam steps.
 *
 * Each wrapper checks its arguments (type, dtype, ndim, consistent shapes;
 * errors name the function, the argument and the shapes), allocates the
 * outputs on aligned core storage (et_py_empty), releases the GIL around the
 * kernel, and turns a failing et_status into the matching exception. The
 * kernels never touch Python. im2col/col2im are bound elsewhere.
 */
#include "common.h"

#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>   /* mallopt */
#endif

#include "../kernels/activation.h"
#include "../kernels/batchnorm.h"
#include "../kernels/optim.h"
#include "../kernels/pooling.h"
#include "../kernels/softmax.h"

#define KW_FN(f) (PyCFunction)(void (*)(void))(f)

/* Runs `call` (an et_status expression) without the GIL; on failure raises
 * and jumps to `fail`. */
#define ET_PY_RUN(call) do { et_status st_ = ET_OK; \
    Py_BEGIN_ALLOW_THREADS st_ = (call); Py_END_ALLOW_THREADS \
    if (st_ != ET_OK) { et_py_raise(st_, NULL); goto fail; } } while (0)

static const char *shp(const et_tensor *t, char *buf)
{
    return et_shape_str(t, buf, 128);
}

static int same_shape(const et_tensor *a, const et_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* Requires b to have a's shape; names both. */
static int check_same(const char *op, const char *an, const et_tensor *a,
                      const char *bn, const et_tensor *b)
{
    if (same_shape(a, b)) return 0;
    char s1[128], s2[128];
    PyErr_Format(et_py_ValueError, "%s: %s shape %s must match %s shape %s",
                 op, bn, shp(b, s2), an, shp(a, s1));
    return -1;
}

static int check_writeable(PyObject *obj, const char *op, const char *arg)
{
    if (!PyArray_ISWRITEABLE((PyArrayObject *)obj)) {
        PyErr_Format(et_py_ValueError, "%s: %s is updated in place and must be writeable",
                     op, arg);
        return -1;
    }
    return 0;
}

/* A pooling input: (N, C, H, W) or (C, H, W) (then N = 1), as PyTorch. */
static int pool_input(const et_tensor *x, const char *op, const char *arg, int64_t xs[4])
{
    char s[128];
    if (x->ndim == 4) { memcpy(xs, x->shape, 4 * sizeof(int64_t)); return 0; }
    if (x->ndim == 3) { xs[0] = 1; xs[1] = x->shape[0]; xs[2] = x->shape[1]; xs[3] = x->shape[2]; return 0; }
    PyErr_Format(et_py_ValueError, "%s: %s must be 3D (C, H, W) or 4D (N, C, H, W), got "
                 "shape %s", op, arg, shp(x, s));
    return -1;
}

/* x_shape argument: a sequence of 3 or 4 non-negative ints. */
static int parse_x_shape(PyObject *obj, const char *op, int *ndim, int64_t xs[4])
{
    Py_ssize_t n = PySequence_Check(obj) ? PySequence_Size(obj) : -1;
    if (n != 3 && n != 4) {
        PyErr_Clear();
        PyErr_Format(et_py_ValueError, "%s: x_shape must be a sequence of 3 or 4 ints, got %R",
                     op, obj);
        return -1;
    }
    int64_t v[4];
    if (et_py_int_tuple(obj, op, "x_shape", (int)n, v) < 0) return -1;
    for (int i = 0; i < n; i++)
        if (v[i] < 0) {
            PyErr_Format(et_py_ValueError, "%s: x_shape %R has a negative size", op, obj);
            return -1;
        }
    *ndim = (int)n;
    if (n == 4) memcpy(xs, v, sizeof v);
    else { xs[0] = 1; xs[1] = v[0]; xs[2] = v[1]; xs[3] = v[2]; }
    return 0;
}

/* Output shape of a pooling op: input's leading dims, then (oh, ow). */
static void pool_out_shape(int ndim, const int64_t xs[4], int64_t oh, int64_t ow, int64_t *out)
{
    if (ndim == 4) { out[0] = xs[0]; out[1] = xs[1]; out[2] = oh; out[3] = ow; }
    else { out[0] = xs[1]; out[1] = oh; out[2] = ow; }
}

static int parse_pool(const char *op, PyObject *k, PyObject *s, PyObject *p, PyObject *d,
                      int ceil_mode, et_pool2d_params *out)
{
    if (et_py_int_tuple(k, op, "kernel_size", 2, out->kernel) < 0) return -1;
    if (s == NULL || s == Py_None) {   /* PyTorch: stride defaults to kernel_size */
        out->stride[0] = out->kernel[0]; out->stride[1] = out->kernel[1];
    } else if (et_py_int_tuple(s, op, "stride", 2, out->stride) < 0) return -1;
    if (et_py_int_tuple(p, op, "padding", 2, out->padding) < 0) return -1;
    if (d == NULL) { out->dilation[0] = out->dilation[1] = 1; }
    else if (et_py_int_tuple(d, op, "dilation", 2, out->dilation) < 0) return -1;
    out->ceil_mode = ceil_mode;
    return 0;
}

/* ------------------------------------------------------------- malloc */

/* set_mmap_threshold(nbytes) -> bool: glibc's M_MMAP_THRESHOLD (mallopt), so
 * that every allocation of >= nbytes is its own mapping, unmapped (returned to
 * the OS) when freed. Setting it also turns off glibc's dynamic threshold,
 * which otherwise rises to the largest block freed so far (up to 32 MiB): after
 * one training step every activation buffer below that comes from the brk heap,
 * which keeps its high-water mark resident (and fragments), so the next step's
 * peak RSS is this step's heap plus its own large buffers. False where it is not
 * glibc or glibc refuses the value. */
static PyObject *py_set_mmap_threshold(PyObject *self, PyObject *args)
{
    long long n;
    if (!PyArg_ParseTuple(args, "L:set_mmap_threshold", &n)) return NULL;
    if (n < 0 || n > INT32_MAX) {
        PyErr_Format(et_py_ValueError, "set_mmap_threshold: nbytes must be in [0, 2^31), got %lld", n);
        return NULL;
    }
#if defined(__GLIBC__)
    return PyBool_FromLong(mallopt(M_MMAP_THRESHOLD, (int)n) == 1);
#else
    Py_RETURN_FALSE;
#endif
}

/* ---------------------------------------------------------------- relu */

static PyObject *py_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", NULL};
    PyObject *xo, *y = NULL;
    et_tensor x, yt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:relu_forward", kwlist, &xo)) return NULL;
    if (et_py_tensor_arg(xo, "relu_forward", "x", -1, ET_F32, &x) < 0) return NULL;
    if (!(y = et_py_empty(x.ndim, x.shape, ET_F32, 0, &yt))) return NULL;
    ET_PY_RUN(et_relu_forward(x.data, yt.data, et_tensor_numel(&x)));
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "y", NULL};
    PyObject *dyo, *yo, *dx = NULL;
    et_tensor dy, y, dxt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:relu_backward", kwlist, &dyo, &yo)) return NULL;
    if (et_py_tensor_arg(dyo, "relu_backward", "dy", -1, ET_F32, &dy) < 0) return NULL;
    if (et_py_tensor_arg(yo, "relu_backward", "y", -1, ET_F32, &y) < 0) return NULL;
    if (check_same("relu_backward", "dy", &dy, "y", &y) < 0) return NULL;
    if (!(dx = et_py_empty(dy.ndim, dy.shape, ET_F32, 0, &dxt))) return NULL;
    ET_PY_RUN(et_relu_backward(dy.data, y.data, dxt.data, et_tensor_numel(&dy)));
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

/* relu_forward_mask(x) -> (y, mask): mask is uint8 (ceil(numel / 8),), bit i % 8
 * of byte i / 8 set iff y.flat[i] > 0 (what relu's backward needs, 1 bit per
 * element instead of a saved float32 y). */
static PyObject *py_relu_forward_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", NULL};
    PyObject *xo, *y = NULL, *m = NULL;
    et_tensor x, yt, mt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:relu_forward_mask", kwlist, &xo)) return NULL;
    if (et_py_tensor_arg(xo, "relu_forward_mask", "x", -1, ET_F32, &x) < 0) return NULL;
    int64_t n = et_tensor_numel(&x), nb = (n + 7) / 8;
    if (!(y = et_py_empty(x.ndim, x.shape, ET_F32, 0, &yt))) return NULL;
    if (!(m = et_py_empty(1, &nb, ET_U8, 0, &mt))) goto fail;
    ET_PY_RUN(et_relu_forward_mask(x.data, yt.data, mt.data, n));
    return Py_BuildValue("NN", y, m);
fail:
    Py_XDECREF(y);
    Py_XDECREF(m);
    return NULL;
}

/* relu_backward_mask(dy, mask, inplace=False) -> dx = dy where the mask bit is set, else 0;
 * inplace: dx written over dy (and dy returned) */
static PyObject *py_relu_backward_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "mask", "inplace", NULL};
    const char *op = "relu_backward_mask";
    PyObject *dyo, *mo, *dx = NULL;
    int inplace = 0;
    et_tensor dy, m, dxt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p:relu_backward_mask", kwlist, &dyo, &mo,
                                     &inplace))
        return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", -1, ET_F32, &dy) < 0) return NULL;
    if (et_py_tensor_arg(mo, op, "mask", 1, ET_U8, &m) < 0) return NULL;
    int64_t n = et_tensor_numel(&dy);
    if (m.shape[0] != (n + 7) / 8) {
        char s[128];
        PyErr_Format(et_py_ValueError, "%s: mask must have (numel(dy) + 7) // 8 = %lld bytes "
                     "for dy of shape %s, got %lld", op, (long long)((n + 7) / 8), shp(&dy, s),
                     (long long)m.shape[0]);
        return NULL;
    }
    if (inplace) {
        /* dx written over dy (element i read, then written): no second buffer */
        if (check_writeable(dyo, op, "dy") < 0) return NULL;
        Py_INCREF(dyo);
        dx = dyo;
        dxt = dy;
    } else if (!(dx = et_py_empty(dy.ndim, dy.shape, ET_F32, 0, &dxt))) return NULL;
    ET_PY_RUN(et_relu_backward_mask(dy.data, m.data, dxt.data, n));
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

/* ------------------------------------------------------------- max pool */

static PyObject *py_max_pool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                             "return_indices", NULL};
    const char *op = "max_pool2d_forward";
    PyObject *xo, *ko, *so = Py_None, *po = NULL, *d_o = NULL, *y = NULL, *ind = NULL;
    int ceil_mode = 0, want_ind = 1;
    et_tensor x, yt, it;
    et_pool2d_params p;
    int64_t xs[4], oh, ow, os[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOpp:max_pool2d_forward", kwlist, &xo, &ko,
                                     &so, &po, &d_o, &ceil_mode, &want_ind)) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero) return NULL;
    int r = parse_pool(op, ko, so, po ? po : zero, d_o, ceil_mode, &p);
    Py_DECREF(zero);
    if (r < 0) return NULL;
    if (et_py_tensor_arg(xo, op, "x", -1, ET_F32, &x) < 0) return NULL;
    if (pool_input(&x, op, "x", xs) < 0) return NULL;
    ET_PY_CHECK(et_pool2d_output_size(op, xs, &p, &oh, &ow));
    pool_out_shape(x.ndim, xs, oh, ow, os);
    if (!(y = et_py_empty(x.ndim, os, ET_F32, 0, &yt))) goto fail;
    /* return_indices=False (no backward will run): no int64 argmax written,
     * (y, None) returned */
    if (want_ind) {
        if (!(ind = et_py_empty(x.ndim, os, ET_S64, 0, &it))) goto fail;
    } else {
        Py_INCREF(Py_None);
        ind = Py_None;
        it.data = NULL;
    }
    ET_PY_RUN(et_max_pool2d_forward(x.data, xs, &p, yt.data, it.data, oh, ow));
    return Py_BuildValue("(NN)", y, ind);
fail:
    Py_XDECREF(y);
    Py_XDECREF(ind);
    return NULL;
}

static PyObject *py_max_pool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "indices", "x_shape", NULL};
    const char *op = "max_pool2d_backward";
    PyObject *dyo, *io, *xso, *dx = NULL;
    et_tensor dy, ind, dxt;
    int xnd;
    int64_t xs[4], ds[4], xshape[4];
    char s1[128];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:max_pool2d_backward", kwlist, &dyo, &io, &xso))
        return NULL;
    if (parse_x_shape(xso, op, &xnd, xs) < 0) return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", xnd, ET_F32, &dy) < 0) return NULL;
    /* indices: int64 (the forward's), or int32 (what autograd's max_pool2d node
     * saves: half the bytes), widened below a chunk of planes at a time */
    int narrow = PyArray_Check(io) && PyArray_TYPE((PyArrayObject *)io) == NPY_INT32;
    if (et_py_tensor_arg(io, op, "indices", xnd, narrow ? ET_S32 : ET_S64, &ind) < 0) return NULL;
    if (check_same(op, "dy", &dy, "indices", &ind) < 0) return NULL;
    if (pool_input(&dy, op, "dy", ds) < 0) return NULL;
    if (ds[0] != xs[0] || ds[1] != xs[1]) {
        PyErr_Format(et_py_ValueError, "%s: dy shape %s does not match x_shape %R in batch/"
                     "channels", op, shp(&dy, s1), xso);
        return NULL;
    }
    pool_out_shape(xnd, xs, xs[2], xs[3], xshape);
    if (!(dx = et_py_empty(xnd, xshape, ET_F32, 0, &dxt))) return NULL;
    if (!narrow) {
        ET_PY_RUN(et_max_pool2d_backward(dy.data, ind.data, xs[0] * xs[1], ds[2] * ds[3],
                                         dxt.data, xs[2] * xs[3]));
        return dx;
    }
    {
        /* planes are independent: widen ET_MP_CHUNK planes of int32 indices into
         * an int64 scratch and run the kernel on them (a few MiB, not a whole
         * int64 copy of the indices) */
        enum { ET_MP_CHUNK = 64 };
        const int64_t planes = xs[0] * xs[1], out_plane = ds[2] * ds[3], in_plane = xs[2] * xs[3];
        const int32_t *i32 = ind.data;
        const float *dyp = dy.data;
        float *dxp = dxt.data;
        int64_t cap = (planes < ET_MP_CHUNK ? planes : ET_MP_CHUNK) * out_plane;
        int64_t *scratch = malloc((size_t)(cap > 0 ? cap : 1) * sizeof(int64_t));
        if (!scratch) { PyErr_NoMemory(); goto fail; }
        et_status st = ET_OK;
        Py_BEGIN_ALLOW_THREADS
        for (int64_t p0 = 0; p0 < planes && st == ET_OK; p0 += ET_MP_CHUNK) {
            int64_t np_ = planes - p0 < ET_MP_CHUNK ? planes - p0 : ET_MP_CHUNK;
            int64_t cnt = np_ * out_plane;
            for (int64_t t = 0; t < cnt; t++) scratch[t] = i32[p0 * out_plane + t];
            st = et_max_pool2d_backward(dyp + p0 * out_plane, scratch, np_, out_plane,
                                        dxp + p0 * in_plane, in_plane);
        }
        Py_END_ALLOW_THREADS
        free(scratch);
        if (st != ET_OK) { et_py_raise(st, NULL); goto fail; }
    }
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

/* ------------------------------------------------------------- avg pool */

static PyObject *py_avg_pool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "kernel_size", "stride", "padding", "ceil_mode",
                             "count_include_pad", NULL};
    const char *op = "avg_pool2d_forward";
    PyObject *xo, *ko, *so = Py_None, *po = NULL, *y = NULL;
    int ceil_mode = 0, cip = 1;
    et_tensor x, yt;
    et_pool2d_params p;
    int64_t xs[4], oh, ow, os[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOpp:avg_pool2d_forward", kwlist, &xo, &ko,
                                     &so, &po, &ceil_mode, &cip)) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero) return NULL;
    int r = parse_pool(op, ko, so, po ? po : zero, NULL, ceil_mode, &p);
    Py_DECREF(zero);
    if (r < 0) return NULL;
    if (et_py_tensor_arg(xo, op, "x", -1, ET_F32, &x) < 0) return NULL;
    if (pool_input(&x, op, "x", xs) < 0) return NULL;
    ET_PY_CHECK(et_pool2d_output_size(op, xs, &p, &oh, &ow));
    pool_out_shape(x.ndim, xs, oh, ow, os);
    if (!(y = et_py_empty(x.ndim, os, ET_F32, 0, &yt))) goto fail;
    ET_PY_RUN(et_avg_pool2d_forward(x.data, xs, &p, cip, yt.data, oh, ow));
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_avg_pool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "x_shape", "kernel_size", "stride", "padding", "ceil_mode",
                             "count_include_pad", NULL};
    const char *op = "avg_pool2d_backward";
    PyObject *dyo, *xso, *ko, *so = Py_None, *po = NULL, *dx = NULL;
    int ceil_mode = 0, cip = 1, xnd;
    et_tensor dy, dxt;
    et_pool2d_params p;
    int64_t xs[4], oh, ow, os[4], xshape[4];
    char s1[128];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OOpp:avg_pool2d_backward", kwlist, &dyo,
                                     &xso, &ko, &so, &po, &ceil_mode, &cip)) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    if (!zero) return NULL;
    int r = parse_pool(op, ko, so, po ? po : zero, NULL, ceil_mode, &p);
    Py_DECREF(zero);
    if (r < 0) return NULL;
    if (parse_x_shape(xso, op, &xnd, xs) < 0) return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", xnd, ET_F32, &dy) < 0) return NULL;
    ET_PY_CHECK(et_pool2d_output_size(op, xs, &p, &oh, &ow));
    pool_out_shape(xnd, xs, oh, ow, os);
    for (int i = 0; i < xnd; i++)
        if (dy.shape[i] != os[i]) {
            et_tensor e;
            et_tensor_view(&e, NULL, ET_F32, xnd, os);
            char s2[128];
            PyErr_Format(et_py_ValueError, "%s: dy shape %s != expected output shape %s for "
                         "x_shape %R", op, shp(&dy, s1), shp(&e, s2), xso);
            return NULL;
        }
    pool_out_shape(xnd, xs, xs[2], xs[3], xshape);
    if (!(dx = et_py_empty(xnd, xshape, ET_F32, 0, &dxt))) return NULL;
    ET_PY_RUN(et_avg_pool2d_backward(dy.data, xs, &p, cip, dxt.data, oh, ow));
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

/* ---------------------------------------------------- adaptive avg pool */

static PyObject *py_adaptive_avg_pool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "output_size", NULL};
    const char *op = "adaptive_avg_pool2d_forward";
    PyObject *xo, *oso, *y = NULL;
    et_tensor x, yt;
    int64_t xs[4], o[2], os[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:adaptive_avg_pool2d_forward", kwlist, &xo, &oso))
        return NULL;
    if (et_py_int_tuple(oso, op, "output_size", 2, o) < 0) return NULL;
    if (et_py_tensor_arg(xo, op, "x", -1, ET_F32, &x) < 0) return NULL;
    if (pool_input(&x, op, "x", xs) < 0) return NULL;
    if (o[0] < 1 || o[1] < 1 || o[0] > INT32_MAX || o[1] > INT32_MAX) {
        char s1[128];
        PyErr_Format(et_py_ValueError, "%s: output_size (%lld, %lld) must be in [1, 2^31) "
                     "(x shape %s)",
                     op, (long long)o[0], (long long)o[1], shp(&x, s1));
        return NULL;
    }
    pool_out_shape(x.ndim, xs, o[0], o[1], os);
    if (!(y = et_py_empty(x.ndim, os, ET_F32, 0, &yt))) return NULL;
    ET_PY_RUN(et_adaptive_avg_pool2d_forward(x.data, xs, yt.data, o[0], o[1]));
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_adaptive_avg_pool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "x_shape", NULL};
    const char *op = "adaptive_avg_pool2d_backward";
    PyObject *dyo, *xso, *dx = NULL;
    et_tensor dy, dxt;
    int xnd;
    int64_t xs[4], ds[4], xshape[4];
    char s1[128];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:adaptive_avg_pool2d_backward", kwlist, &dyo, &xso))
        return NULL;
    if (parse_x_shape(xso, op, &xnd, xs) < 0) return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", xnd, ET_F32, &dy) < 0) return NULL;
    if (pool_input(&dy, op, "dy", ds) < 0) return NULL;
    if (ds[0] != xs[0] || ds[1] != xs[1]) {
        PyErr_Format(et_py_ValueError, "%s: dy shape %s does not match x_shape %R in batch/"
                     "channels", op, shp(&dy, s1), xso);
        return NULL;
    }
    pool_out_shape(xnd, xs, xs[2], xs[3], xshape);
    if (!(dx = et_py_empty(xnd, xshape, ET_F32, 0, &dxt))) return NULL;
    ET_PY_RUN(et_adaptive_avg_pool2d_backward(dy.data, xs, dxt.data, ds[2], ds[3]));
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

/* ----------------------------------------------------------- batch norm */

/* x: (N, C, *spatial) with ndim >= 2; returns 0 and N, C, HW. */
static int bn_input(const et_tensor *x, const char *op, const char *arg,
                    int64_t *N, int64_t *C, int64_t *HW)
{
    if (x->ndim < 2) {
        char s[128];
        PyErr_Format(et_py_ValueError, "%s: %s must be (N, C) or (N, C, H, W), got shape %s",
                     op, arg, shp(x, s));
        return -1;
    }
    *N = x->shape[0];
    *C = x->shape[1];
    *HW = 1;
    for (int i = 2; i < x->ndim; i++) *HW *= x->shape[i];
    return 0;
}

/* Optional (C,) float32 parameter. */
static int bn_param(PyObject *obj, const char *op, const char *arg, int64_t C,
                    const et_tensor *x, int writeable, et_tensor *out)
{
    if (et_py_tensor_arg_opt(obj, op, arg, 1, ET_F32, out) < 0) return -1;
    if (!out->data) return 0;
    if (out->shape[0] != C) {
        char s1[128], s2[128];
        PyErr_Format(et_py_ValueError, "%s: %s shape %s must be (%lld,) for x of shape %s",
                     op, arg, shp(out, s1), (long long)C, shp(x, s2));
        return -1;
    }
    if (writeable && check_writeable(obj, op, arg) < 0) return -1;
    return 0;
}

static PyObject *py_batch_norm_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", "weight", "bias", "running_mean", "running_var", "training",
                             "momentum", "eps", "save_xhat", NULL};
    const char *op = "batch_norm_forward";
    PyObject *xo, *wo = Py_None, *bo = Py_None, *rmo = Py_None, *rvo = Py_None;
    PyObject *y = NULL, *sm = NULL, *si = NULL, *xh = NULL;
    int training = 0, save_xhat = 0;
    double momentum = 0.1, eps = 1e-5;
    et_tensor x, w, b, rm, rv, yt, smt, sit, xht;
    int64_t N, C, HW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOOpddp:batch_norm_forward", kwlist, &xo, &wo,
                                     &bo, &rmo, &rvo, &training, &momentum, &eps, &save_xhat))
        return NULL;
    if (et_py_tensor_arg(xo, op, "x", -1, ET_F32, &x) < 0) return NULL;
    if (bn_input(&x, op, "x", &N, &C, &HW) < 0) return NULL;
    if (bn_param(wo, op, "weight", C, &x, 0, &w) < 0) return NULL;
    if (bn_param(bo, op, "bias", C, &x, 0, &b) < 0) return NULL;
    if (bn_param(rmo, op, "running_mean", C, &x, training, &rm) < 0) return NULL;
    if (bn_param(rvo, op, "running_var", C, &x, training, &rv) < 0) return NULL;
    int64_t cs[1] = {C};
    if (!(y = et_py_empty(x.ndim, x.shape, ET_F32, 0, &yt))) goto fail;
    if (!(sm = et_py_empty(1, cs, ET_F32, 0, &smt))) goto fail;
    if (!(si = et_py_empty(1, cs, ET_F32, 0, &sit))) goto fail;
    if (save_xhat) {
        /* (y, mean, invstd, xhat): xhat bf16 bits (numpy uint16), x's shape */
        if (!(xh = et_py_empty(x.ndim, x.shape, ET_BF16, 0, &xht))) goto fail;
        ET_PY_RUN(et_batch_norm_forward_xhat(x.data, N, C, HW, w.data, b.data, rm.data, rv.data,
                                             training, momentum, eps, yt.data, smt.data,
                                             sit.data, xht.data));
        return Py_BuildValue("(NNNN)", y, sm, si, xh);
    }
    ET_PY_RUN(et_batch_norm_forward(x.data, N, C, HW, w.data, b.data, rm.data, rv.data,
                                    training, momentum, eps, yt.data, smt.data, sit.data));
    return Py_BuildValue("(NNN)", y, sm, si);
fail:
    Py_XDECREF(y);
    Py_XDECREF(sm);
    Py_XDECREF(si);
    Py_XDECREF(xh);
    return NULL;
}

static PyObject *py_batch_norm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "x", "weight", "save_mean", "save_invstd", "training", NULL};
    const char *op = "batch_norm_backward";
    PyObject *dyo, *xo, *wo, *smo, *sio, *dx = NULL, *dw = NULL, *db = NULL;
    int training = 1;
    et_tensor dy, x, w, sm, si, dxt, dwt, dbt;
    int64_t N, C, HW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|p:batch_norm_backward", kwlist, &dyo, &xo,
                                     &wo, &smo, &sio, &training)) return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", -1, ET_F32, &dy) < 0) return NULL;
    if (et_py_tensor_arg(xo, op, "x", -1, ET_F32, &x) < 0) return NULL;
    if (check_same(op, "x", &x, "dy", &dy) < 0) return NULL;
    if (bn_input(&x, op, "x", &N, &C, &HW) < 0) return NULL;
    if (bn_param(wo, op, "weight", C, &x, 0, &w) < 0) return NULL;
    if (smo == Py_None || sio == Py_None) {
        PyErr_Format(et_py_TypeError, "%s: save_mean and save_invstd are required", op);
        return NULL;
    }
    if (bn_param(smo, op, "save_mean", C, &x, 0, &sm) < 0) return NULL;
    if (bn_param(sio, op, "save_invstd", C, &x, 0, &si) < 0) return NULL;
    int64_t cs[1] = {C};
    float *dwp = NULL, *dbp = NULL;
    if (!(dx = et_py_empty(x.ndim, x.shape, ET_F32, 0, &dxt))) goto fail;
    /* dbias does not depend on the weight: F.batch_norm(weight=None, bias=b)
     * still trains b, as in PyTorch. dweight only exists with a weight. */
    if (!(db = et_py_empty(1, cs, ET_F32, 0, &dbt))) goto fail;
    dbp = dbt.data;
    if (w.data) {
        if (!(dw = et_py_empty(1, cs, ET_F32, 0, &dwt))) goto fail;
        dwp = dwt.data;
    }
    ET_PY_RUN(et_batch_norm_backward(dy.data, x.data, N, C, HW, w.data, sm.data, si.data,
                                     training, dxt.data, dwp, dbp));
    if (!dw) { Py_INCREF(Py_None); dw = Py_None; }
    return Py_BuildValue("(NNN)", dx, dw, db);
fail:
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return NULL;
}

/* batch_norm_backward_xhat(dy, xhat, weight, save_invstd, training=True) -> (dx, dw, db):
 * batch_norm_backward from the bf16 xhat of batch_norm_forward(save_xhat=True)
 * instead of x (and the mean, which xhat already has subtracted). */
static PyObject *py_batch_norm_backward_xhat(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "xhat", "weight", "save_invstd", "training", "inplace", NULL};
    const char *op = "batch_norm_backward_xhat";
    PyObject *dyo, *xo, *wo, *sio, *dx = NULL, *dw = NULL, *db = NULL;
    int training = 1, inplace = 0;
    et_tensor dy, x, w, si, dxt, dwt, dbt;
    int64_t N, C, HW;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|pp:batch_norm_backward_xhat", kwlist, &dyo,
                                     &xo, &wo, &sio, &training, &inplace)) return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", -1, ET_F32, &dy) < 0) return NULL;
    if (et_py_tensor_arg(xo, op, "xhat", -1, ET_BF16, &x) < 0) return NULL;
    if (check_same(op, "xhat", &x, "dy", &dy) < 0) return NULL;
    if (bn_input(&x, op, "xhat", &N, &C, &HW) < 0) return NULL;
    if (bn_param(wo, op, "weight", C, &x, 0, &w) < 0) return NULL;
    if (sio == Py_None) {
        PyErr_Format(et_py_TypeError, "%s: save_invstd is required", op);
        return NULL;
    }
    if (bn_param(sio, op, "save_invstd", C, &x, 0, &si) < 0) return NULL;
    int64_t cs[1] = {C};
    float *dwp = NULL, *dbp = NULL;
    if (inplace) {
        /* dx written over dy: per channel, the sums read dy first, then element k
         * of dx is computed from element k of dy only */
        if (check_writeable(dyo, op, "dy") < 0) return NULL;
        Py_INCREF(dyo);
        dx = dyo;
        dxt = dy;
    } else if (!(dx = et_py_empty(x.ndim, x.shape, ET_F32, 0, &dxt))) goto fail;
    if (!(db = et_py_empty(1, cs, ET_F32, 0, &dbt))) goto fail;
    dbp = dbt.data;
    if (w.data) {
        if (!(dw = et_py_empty(1, cs, ET_F32, 0, &dwt))) goto fail;
        dwp = dwt.data;
    }
    ET_PY_RUN(et_batch_norm_backward_xhat(dy.data, x.data, N, C, HW, w.data, si.data,
                                          training, dxt.data, dwp, dbp));
    if (!dw) { Py_INCREF(Py_None); dw = Py_None; }
    return Py_BuildValue("(NNN)", dx, dw, db);
fail:
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return NULL;
}

/* ---------------------------------------------- log_softmax / nll_loss */

static PyObject *py_log_softmax_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"x", NULL};
    PyObject *xo, *y = NULL;
    et_tensor x, yt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:log_softmax_forward", kwlist, &xo)) return NULL;
    if (et_py_tensor_arg(xo, "log_softmax_forward", "x", 2, ET_F32, &x) < 0) return NULL;
    if (x.shape[1] < 1) {
        PyErr_Format(et_py_ValueError, "log_softmax_forward: x must have at least one class, "
                     "got shape (%lld, 0)", (long long)x.shape[0]);
        return NULL;
    }
    if (!(y = et_py_empty(2, x.shape, ET_F32, 0, &yt))) return NULL;
    ET_PY_RUN(et_log_softmax_forward(x.data, x.shape[0], x.shape[1], yt.data));
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_log_softmax_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dy", "y", NULL};
    const char *op = "log_softmax_backward";
    PyObject *dyo, *yo, *dx = NULL;
    et_tensor dy, y, dxt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:log_softmax_backward", kwlist, &dyo, &yo))
        return NULL;
    if (et_py_tensor_arg(dyo, op, "dy", 2, ET_F32, &dy) < 0) return NULL;
    if (et_py_tensor_arg(yo, op, "y", 2, ET_F32, &y) < 0) return NULL;
    if (check_same(op, "dy", &dy, "y", &y) < 0) return NULL;
    if (y.shape[1] < 1) {
        PyErr_Format(et_py_ValueError, "%s: y must have at least one class", op);
        return NULL;
    }
    if (!(dx = et_py_empty(2, dy.shape, ET_F32, 0, &dxt))) return NULL;
    ET_PY_RUN(et_log_softmax_backward(dy.data, y.data, y.shape[0], y.shape[1], dxt.data));
    return dx;
fail:
    Py_XDECREF(dx);
    return NULL;
}

static PyObject *py_nll_loss_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"logp", "target", NULL};
    const char *op = "nll_loss_forward";
    PyObject *lo, *to;
    et_tensor lp, t;
    float loss = 0.0f;
    char s1[128], s2[128];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:nll_loss_forward", kwlist, &lo, &to))
        return NULL;
    if (et_py_tensor_arg(lo, op, "logp", 2, ET_F32, &lp) < 0) return NULL;
    if (et_py_tensor_arg(to, op, "target", 1, ET_S64, &t) < 0) return NULL;
    if (t.shape[0] != lp.shape[0]) {
        PyErr_Format(et_py_ValueError, "%s: target shape %s must be (N,) = (%lld,) for logp of "
                     "shape %s", op, shp(&t, s1), (long long)lp.shape[0], shp(&lp, s2));
        return NULL;
    }
    if (lp.shape[1] < 1) {
        PyErr_Format(et_py_ValueError, "%s: logp must have at least one class, got shape %s",
                     op, shp(&lp, s2));
        return NULL;
    }
    ET_PY_RUN(et_nll_loss_forward(lp.data, t.data, lp.shape[0], lp.shape[1], &loss));
    return PyFloat_FromDouble((double)loss);
fail:
    return NULL;
}

static PyObject *py_nll_loss_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"target", "N", "C", "grad", NULL};
    const char *op = "nll_loss_backward";
    PyObject *to, *d = NULL;
    long long N, C;
    double grad = 1.0;
    et_tensor t, dt;
    char s1[128];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|d:nll_loss_backward", kwlist, &to, &N, &C,
                                     &grad)) return NULL;
    if (et_py_tensor_arg(to, op, "target", 1, ET_S64, &t) < 0) return NULL;
    if (N < 0 || C < 1 || t.shape[0] != N || (N > 0 && C > INT64_MAX / N)) {
        PyErr_Format(et_py_ValueError, "%s: N=%lld, C=%lld do not fit target of shape %s "
                     "(need N == len(target), C >= 1)", op, N, C, shp(&t, s1));
        return NULL;
    }
    int64_t ds[2] = {N, C};
    if (!(d = et_py_empty(2, ds, ET_F32, 1, &dt))) return NULL;
    ET_PY_RUN(et_nll_loss_backward(t.data, N, C, (float)grad, dt.data));
    return d;
fail:
    Py_XDECREF(d);
    return NULL;
}

/* ------------------------------------------------------------ optimizers */

static int opt_state(PyObject *obj, const char *op, const char *arg, const et_tensor *param,
                     et_tensor *out)
{
    if (et_py_tensor_arg(obj, op, arg, -1, ET_F32, out) < 0) return -1;
    if (check_same(op, "param", param, arg, out) < 0) return -1;
    return 0;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"param", "grad", "momentum_buffer", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "first", NULL};
    const char *op = "sgd_step";
    PyObject *po, *go, *bo = Py_None;
    double lr, momentum = 0.0, dampening = 0.0, wd = 0.0;
    int nesterov = 0, first = 0;
    et_tensor p, g, b;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd|dddpp:sgd_step", kwlist, &po, &go, &bo,
                                     &lr, &momentum, &dampening, &wd, &nesterov, &first))
        return NULL;
    if (et_py_tensor_arg(po, op, "param", -1, ET_F32, &p) < 0) return NULL;
    if (check_writeable(po, op, "param") < 0) return NULL;
    if (opt_state(go, op, "grad", &p, &g) < 0) return NULL;
    memset(&b, 0, sizeof b);
    if (bo != Py_None) {
        if (opt_state(bo, op, "momentum_buffer", &p, &b) < 0) return NULL;
        if (check_writeable(bo, op, "momentum_buffer") < 0) return NULL;
    }
    ET_PY_RUN(et_sgd_step(p.data, g.data, b.data, et_tensor_numel(&p), lr, momentum, dampening,
                          wd, nesterov, first));
    Py_RETURN_NONE;
fail:
    return NULL;
}

static PyObject *py_adam_step(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"param", "grad", "exp_avg", "exp_avg_sq", "step", "lr", "beta1",
                             "beta2", "eps", "weight_decay", NULL};
    const char *op = "adam_step";
    PyObject *po, *go, *mo, *vo;
    long long step;
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.0;
    et_tensor p, g, m, v;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOL|ddddd:adam_step", kwlist, &po, &go, &mo,
                                     &vo, &step, &lr, &beta1, &beta2, &eps, &wd)) return NULL;
    if (et_py_tensor_arg(po, op, "param", -1, ET_F32, &p) < 0) return NULL;
    if (check_writeable(po, op, "param") < 0) return NULL;
    if (opt_state(go, op, "grad", &p, &g) < 0) return NULL;
    if (opt_state(mo, op, "exp_avg", &p, &m) < 0) return NULL;
    if (check_writeable(mo, op, "exp_avg") < 0) return NULL;
    if (opt_state(vo, op, "exp_avg_sq", &p, &v) < 0) return NULL;
    if (check_writeable(vo, op, "exp_avg_sq") < 0) return NULL;
    ET_PY_RUN(et_adam_step(p.data, g.data, m.data, v.data, et_tensor_numel(&p), step, lr,
                           beta1, beta2, eps, wd));
    Py_RETURN_NONE;
fail:
    return NULL;
}

static PyMethodDef kernel_methods[] = {
    {"set_mmap_threshold", py_set_mmap_threshold, METH_VARARGS,
     "set_mmap_threshold(nbytes) -> bool: glibc mallopt(M_MMAP_THRESHOLD, nbytes) (False: "
     "not glibc, or refused)"},
    {"relu_forward", KW_FN(py_relu_forward), METH_VARARGS | METH_KEYWORDS,
     "relu_forward(x) -> y = max(x, 0)"},
    {"relu_backward", KW_FN(py_relu_backward), METH_VARARGS | METH_KEYWORDS,
     "relu_backward(dy, y) -> dx = dy where y > 0"},
    {"relu_forward_mask", KW_FN(py_relu_forward_mask), METH_VARARGS | METH_KEYWORDS,
     "relu_forward_mask(x) -> (y, mask): y = max(x, 0); mask uint8 (ceil(numel/8),), "
     "bit i%8 of byte i//8 set iff y.flat[i] > 0"},
    {"relu_backward_mask", KW_FN(py_relu_backward_mask), METH_VARARGS | METH_KEYWORDS,
     "relu_backward_mask(dy, mask, inplace=False) -> dx = dy where the mask bit is set, else 0 "
     "(inplace: written over dy)"},
    {"max_pool2d_forward", KW_FN(py_max_pool2d_forward), METH_VARARGS | METH_KEYWORDS,
     "max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, "
     "return_indices=True)"
     " -> (y, indices int64)"},
    {"max_pool2d_backward", KW_FN(py_max_pool2d_backward), METH_VARARGS | METH_KEYWORDS,
     "max_pool2d_backward(dy, indices, x_shape) -> dx (indices int64, or int32)"},
    {"avg_pool2d_forward", KW_FN(py_avg_pool2d_forward), METH_VARARGS | METH_KEYWORDS,
     "avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, "
     "count_include_pad=True) -> y"},
    {"avg_pool2d_backward", KW_FN(py_avg_pool2d_backward), METH_VARARGS | METH_KEYWORDS,
     "avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, "
     "count_include_pad=True) -> dx"},
    {"adaptive_avg_pool2d_forward", KW_FN(py_adaptive_avg_pool2d_forward),
     METH_VARARGS | METH_KEYWORDS, "adaptive_avg_pool2d_forward(x, output_size) -> y"},
    {"adaptive_avg_pool2d_backward", KW_FN(py_adaptive_avg_pool2d_backward),
     METH_VARARGS | METH_KEYWORDS, "adaptive_avg_pool2d_backward(dy, x_shape) -> dx"},
    {"batch_norm_forward", KW_FN(py_batch_norm_forward), METH_VARARGS | METH_KEYWORDS,
     "batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, "
     "save_xhat=False) -> (y, save_mean, save_invstd), plus xhat (bf16 bits, uint16) with "
     "save_xhat"},
    {"batch_norm_backward_xhat", KW_FN(py_batch_norm_backward_xhat), METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward_xhat(dy, xhat, weight, save_invstd, training=True, inplace=False) -> "
     "(dx, dweight, dbias): batch_norm_backward from the bf16 xhat of "
     "batch_norm_forward(save_xhat=True); inplace: dx written over dy"},
    {"batch_norm_backward", KW_FN(py_batch_norm_backward), METH_VARARGS | METH_KEYWORDS,
     "batch_norm_backward(dy, x, weight, save_mean, save_invstd, training) -> "
     "(dx, dweight|None, dbias)"},
    {"log_softmax_forward", KW_FN(py_log_softmax_forward), METH_VARARGS | METH_KEYWORDS,
     "log_softmax_forward(x) -> y (over dim 1 of (N, C))"},
    {"log_softmax_backward", KW_FN(py_log_softmax_backward), METH_VARARGS | METH_KEYWORDS,
     "log_softmax_backward(dy, y) -> dx"},
    {"nll_loss_forward", KW_FN(py_nll_loss_forward), METH_VARARGS | METH_KEYWORDS,
     "nll_loss_forward(logp, target) -> float (mean over N)"},
    {"nll_loss_backward", KW_FN(py_nll_loss_backward), METH_VARARGS | METH_KEYWORDS,
     "nll_loss_backward(target, N, C, grad=1.0) -> dlogp"},
    {"sgd_step", KW_FN(py_sgd_step), METH_VARARGS | METH_KEYWORDS,
     "sgd_step(param, grad, momentum_buffer, lr, momentum=0, dampening=0, weight_decay=0, "
     "nesterov=False, first=False): in place, torch.optim.SGD's rule"},
    {"adam_step", KW_FN(py_adam_step), METH_VARARGS | METH_KEYWORDS,
     "adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, beta1=0.9, beta2=0.999, "
     "eps=1e-8, weight_decay=0): in place, torch.optim.Adam's rule"},
    {NULL, NULL, 0, NULL}};

int et_py_init_kernels(PyObject *m)
{
    return PyModule_AddFunctions(m, kernel_methods);
}
