/* bind_quant.c - quantizers and 16-bit float conversions (quant/quantize.h, quant/convert.h).
 *
 * Thin wrappers: check the NumPy arguments (dtype, contiguity, shapes),
 * allocate the outputs on core storage, release the GIL around the C loop.
 * The numeric rules (scales, rounding, saturation, NaN/Inf errors) live in
 * quant/quantize.h and quant/convert.h; csrc/quant/README.md documents the
 * Python signatures.
 */
#include "common.h"

#include <math.h>
#include <string.h>

#include "../quant/convert.h"
#include "../quant/quantize.h"
#include "../quant/wcache.h"

/* float32 scalar argument: a Python float/int or NumPy scalar / 0-d array. */
static int float_arg(PyObject *obj, const char *op, const char *arg, float *out)
{
    double d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(et_py_TypeError, "%s: %s must be a float, got %s", op, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = (float)d;
    return 0;
}

static int64_t dims_product(const et_tensor *t, int from)
{
    int64_t p = 1;
    for (int i = from; i < t->ndim; i++) p *= t->shape[i];
    return p;
}

static PyObject *py_quantize_per_tensor(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"x", "dtype", "scale", "qmax", NULL};
    const char *op = "quantize_per_tensor";
    PyObject *x_obj, *scale_obj = Py_None, *q = NULL;
    const char *dtname = "int8";
    int qmax = 0;   /* 0: the dtype's full range */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|sOi:quantize_per_tensor", kwlist,
                                     &x_obj, &dtname, &scale_obj, &qmax))
        return NULL;
    et_dtype dt;
    if (strcmp(dtname, "int8") == 0 || strcmp(dtname, "s8") == 0) dt = ET_S8;
    else if (strcmp(dtname, "uint8") == 0 || strcmp(dtname, "u8") == 0) dt = ET_U8;
    else return PyErr_Format(et_py_ValueError, "%s: dtype must be \"int8\" or \"uint8\", got \"%s\"",
                             op, dtname);
    if (qmax == 0) qmax = dt == ET_S8 ? ET_QUANT_S8_QMAX : ET_QUANT_U8_QMAX;
    float given = 0.0f;
    int have_scale = scale_obj != Py_None;
    if (have_scale && qmax != (dt == ET_S8 ? ET_QUANT_S8_QMAX : ET_QUANT_U8_QMAX))
        return PyErr_Format(et_py_ValueError, "%s: qmax applies to a dynamic scale; pass scale "
                            "or qmax, not both", op);
    if (have_scale && float_arg(scale_obj, op, "scale", &given) < 0) return NULL;
    et_tensor x, qv;
    if (et_py_tensor_arg(x_obj, op, "x", -1, ET_F32, &x) < 0) return NULL;
    q = et_py_empty(x.ndim, x.shape, dt, 0, &qv);
    if (!q) return NULL;
    int64_t n = et_tensor_numel(&x);
    float scale = given;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    if (dt == ET_S8)
        st = have_scale ? et_quantize_s8(x.data, n, given, qv.data)
                        : et_quantize_per_tensor_s8_qmax(x.data, n, qmax, qv.data, &scale);
    else
        st = have_scale ? et_quantize_u8(x.data, n, given, qv.data)
                        : et_quantize_per_tensor_u8_qmax(x.data, n, qmax, qv.data, &scale);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return Py_BuildValue("(Nd)", q, (double)scale);
fail:
    Py_XDECREF(q);
    return NULL;
}

static PyObject *py_quantize_per_channel(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"w", NULL};
    const char *op = "quantize_per_channel";
    PyObject *w_obj, *q = NULL, *s = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:quantize_per_channel", kwlist, &w_obj))
        return NULL;
    et_tensor w, qv, sv;
    if (et_py_tensor_arg(w_obj, op, "w", -1, ET_F32, &w) < 0) return NULL;
    if (w.ndim < 1)
        return PyErr_Format(et_py_ValueError, "%s: w must have at least 1 dim (OC, ...), got a 0-d array", op);
    q = et_py_empty(w.ndim, w.shape, ET_S8, 0, &qv);
    if (!q) return NULL;
    s = et_py_empty(1, w.shape, ET_F32, 0, &sv);
    if (!s) goto fail;
    int64_t oc = w.shape[0], k = dims_product(&w, 1);
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = et_quantize_per_channel_s8(w.data, oc, k, qv.data, sv.data);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return Py_BuildValue("(NN)", q, s);
fail:
    Py_XDECREF(q);
    Py_XDECREF(s);
    return NULL;
}

static int u64_arg(PyObject *obj, const char *op, const char *arg, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLongMask(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(et_py_TypeError, "%s: %s must be an int, got %s", op, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *py_quantize_stochastic(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"x", "seed", "offset", "qmax", NULL};
    const char *op = "quantize_stochastic";
    PyObject *x_obj, *seed_obj, *offset_obj = NULL, *q = NULL;
    int qmax = ET_QUANT_S8_QMAX;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oi:quantize_stochastic", kwlist,
                                     &x_obj, &seed_obj, &offset_obj, &qmax))
        return NULL;
    uint64_t seed, offset = 0;
    if (u64_arg(seed_obj, op, "seed", &seed) < 0) return NULL;
    if (offset_obj && u64_arg(offset_obj, op, "offset", &offset) < 0) return NULL;
    et_tensor x, qv;
    if (et_py_tensor_arg(x_obj, op, "x", -1, ET_F32, &x) < 0) return NULL;
    q = et_py_empty(x.ndim, x.shape, ET_S8, 0, &qv);
    if (!q) return NULL;
    int64_t n = et_tensor_numel(&x);
    float scale = 1.0f;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = et_quantize_stochastic_s8_qmax(x.data, n, qmax, seed, offset, qv.data, &scale);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return Py_BuildValue("(Nd)", q, (double)scale);
fail:
    Py_XDECREF(q);
    return NULL;
}

/* Integer dtype of q for dequantize (int8, uint8, int32). */
static int int_dtype_of(PyObject *obj, const char *op, const char *arg,
                        const char *allowed, int allow_u8_s8, et_dtype *out)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be a numpy array, got %s", op, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int t = PyArray_TYPE((PyArrayObject *)obj);
    if (allow_u8_s8 && t == NPY_INT8) *out = ET_S8;
    else if (allow_u8_s8 && t == NPY_UINT8) *out = ET_U8;
    else if (t == NPY_INT32 || (t == NPY_INT && sizeof(int) == 4)) *out = ET_S32;
    else {
        PyErr_Format(et_py_TypeError, "%s: %s must have dtype %s, got %s", op, arg, allowed,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"q", "scale", NULL};
    const char *op = "dequantize";
    PyObject *q_obj, *s_obj, *y = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:dequantize", kwlist, &q_obj, &s_obj))
        return NULL;
    et_dtype dt;
    if (int_dtype_of(q_obj, op, "q", "int8, uint8 or int32", 1, &dt) < 0) return NULL;
    et_tensor q, sv, yv;
    if (et_py_tensor_arg(q_obj, op, "q", -1, dt, &q) < 0) return NULL;
    float s1 = 1.0f;
    const float *scales;
    int per_row = PyArray_Check(s_obj) && PyArray_NDIM((PyArrayObject *)s_obj) >= 1;
    if (per_row) {
        if (et_py_tensor_arg(s_obj, op, "scale", 1, ET_F32, &sv) < 0) return NULL;
        if (q.ndim < 1 || sv.shape[0] != q.shape[0]) {
            char qs[96];
            return PyErr_Format(et_py_ValueError,
                                "%s: per-channel scale has %lld entries but q has shape %s "
                                "(one scale per index of dim 0 expected)", op,
                                (long long)sv.shape[0], et_shape_str(&q, qs, sizeof qs));
        }
        scales = sv.data;
    } else {
        if (float_arg(s_obj, op, "scale", &s1) < 0) return NULL;
        scales = &s1;
    }
    y = et_py_empty(q.ndim, q.shape, ET_F32, 0, &yv);
    if (!y) return NULL;
    int64_t rows = per_row ? q.shape[0] : 1;
    int64_t k = per_row ? dims_product(&q, 1) : et_tensor_numel(&q);
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    if (dt == ET_S8) st = et_dequantize_s8(q.data, rows, k, scales, per_row, yv.data);
    else if (dt == ET_U8) st = et_dequantize_u8(q.data, rows, k, scales, per_row, yv.data);
    else st = et_dequantize_s32(q.data, rows, k, scales, per_row, yv.data);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

static PyObject *py_dequantize_accumulator(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"acc", "scale_a", "scales_w", "bias", "layout", NULL};
    const char *op = "dequantize_accumulator";
    PyObject *acc_obj, *sa_obj, *sw_obj, *bias_obj = Py_None, *y = NULL;
    const char *layout = "mn";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|Os:dequantize_accumulator", kwlist,
                                     &acc_obj, &sa_obj, &sw_obj, &bias_obj, &layout))
        return NULL;
    int nchw;
    if (strcmp(layout, "mn") == 0) nchw = 0;
    else if (strcmp(layout, "nchw") == 0) nchw = 1;
    else return PyErr_Format(et_py_ValueError, "%s: layout must be \"mn\" or \"nchw\", got \"%s\"",
                             op, layout);
    et_tensor acc, sw, bias, yv;
    if (et_py_tensor_arg(acc_obj, op, "acc", nchw ? -1 : 2, ET_S32, &acc) < 0) return NULL;
    char as[96];
    if (nchw && acc.ndim < 2)
        return PyErr_Format(et_py_ValueError, "%s: acc must be (N, OC, ...) for layout \"nchw\", "
                            "got shape %s", op, et_shape_str(&acc, as, sizeof as));
    float sa;
    if (float_arg(sa_obj, op, "scale_a", &sa) < 0) return NULL;
    int64_t outer = acc.shape[0], c = acc.shape[1];
    int64_t inner = nchw ? dims_product(&acc, 2) : 1;
    float sw1 = 1.0f;
    const float *swp;
    int sw_per_channel = PyArray_Check(sw_obj) && PyArray_NDIM((PyArrayObject *)sw_obj) >= 1;
    if (sw_per_channel) {
        if (et_py_tensor_arg(sw_obj, op, "scales_w", 1, ET_F32, &sw) < 0) return NULL;
        if (sw.shape[0] != c)
            return PyErr_Format(et_py_ValueError, "%s: scales_w has %lld entries, acc %s has "
                                "%lld channels (dim 1)", op, (long long)sw.shape[0],
                                et_shape_str(&acc, as, sizeof as), (long long)c);
        swp = sw.data;
    } else {
        if (float_arg(sw_obj, op, "scales_w", &sw1) < 0) return NULL;
        swp = &sw1;
    }
    if (et_py_tensor_arg_opt(bias_obj, op, "bias", 1, ET_F32, &bias) < 0) return NULL;
    if (bias.data && bias.shape[0] != c)
        return PyErr_Format(et_py_ValueError, "%s: bias has %lld entries, acc %s has %lld "
                            "channels (dim 1)", op, (long long)bias.shape[0],
                            et_shape_str(&acc, as, sizeof as), (long long)c);
    y = et_py_empty(acc.ndim, acc.shape, ET_F32, 0, &yv);
    if (!y) return NULL;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = et_dequantize_acc(acc.data, outer, c, inner, sa, swp, sw_per_channel,
                           bias.data, yv.data);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

/* One wrapper for the four conversions. */
typedef et_status (*convert_fn)(const void *in, void *out, int64_t n);

static PyObject *convert(PyObject *args, PyObject *kw, const char *op, const char *fmt,
                         et_dtype in_dt, et_dtype out_dt, convert_fn fast, convert_fn portable)
{
    static char *kwlist[] = {"x", "portable", NULL};
    PyObject *x_obj, *y = NULL;
    int use_portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &x_obj, &use_portable))
        return NULL;
    et_tensor x, yv;
    if (et_py_tensor_arg(x_obj, op, "x", -1, in_dt, &x) < 0) return NULL;
    y = et_py_empty(x.ndim, x.shape, out_dt, 0, &yv);
    if (!y) return NULL;
    int64_t n = et_tensor_numel(&x);
    convert_fn f = use_portable && portable ? portable : fast;
    et_status st;
    Py_BEGIN_ALLOW_THREADS
    st = f(x.data, yv.data, n);
    Py_END_ALLOW_THREADS
    ET_PY_CHECK(st);
    return y;
fail:
    Py_XDECREF(y);
    return NULL;
}

/* Adapters with one signature (no calls through cast function pointers). */
static et_status cv_f32_f16(const void *i, void *o, int64_t n) { return et_convert_f32_to_f16(i, o, n); }
static et_status cv_f32_f16_p(const void *i, void *o, int64_t n) { return et_convert_f32_to_f16_portable(i, o, n); }
static et_status cv_f16_f32(const void *i, void *o, int64_t n) { return et_convert_f16_to_f32(i, o, n); }
static et_status cv_f16_f32_p(const void *i, void *o, int64_t n) { return et_convert_f16_to_f32_portable(i, o, n); }
static et_status cv_f32_bf16(const void *i, void *o, int64_t n) { return et_convert_f32_to_bf16(i, o, n); }
static et_status cv_bf16_f32(const void *i, void *o, int64_t n) { return et_convert_bf16_to_f32(i, o, n); }

static PyObject *py_to_float16(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return convert(args, kw, "to_float16", "O|p:to_float16", ET_F32, ET_F16,
                   cv_f32_f16, cv_f32_f16_p);
}

static PyObject *py_from_float16(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return convert(args, kw, "from_float16", "O|p:from_float16", ET_F16, ET_F32,
                   cv_f16_f32, cv_f16_f32_p);
}

static PyObject *py_to_bfloat16(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return convert(args, kw, "to_bfloat16", "O|p:to_bfloat16", ET_F32, ET_BF16,
                   cv_f32_bf16, NULL);
}

static PyObject *py_from_bfloat16(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    return convert(args, kw, "from_bfloat16", "O|p:from_bfloat16", ET_BF16, ET_F32,
                   cv_bf16_f32, NULL);
}

static PyObject *py_have_f16c(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    return PyBool_FromLong(et_convert_have_f16c());
}

static PyObject *py_set_int8_reduce_range(PyObject *self, PyObject *arg)
{
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    et_quant_set_reduce_range(on);
    Py_RETURN_NONE;
}

static PyObject *py_int8_reduce_range(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    return PyBool_FromLong(et_quant_reduce_range());
}

/* ---- the prepacked int8 weight cache (csrc/quant/wcache.h) ---- */
static PyObject *py_weight_cache_stats(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    et_wcache_stats s;
    et_wcache_get_stats(&s);
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "hits", (long long)s.hits,
                         "misses", (long long)s.misses, "stale", (long long)s.stale,
                         "aux_hits", (long long)s.aux_hits, "evictions", (long long)s.evictions,
                         "entries", (long long)s.entries, "bytes", (long long)s.bytes,
                         "capacity", (long long)s.capacity);
}

static PyObject *py_set_weight_cache_capacity(PyObject *self, PyObject *arg)
{
    (void)self;
    long long b = PyLong_AsLongLong(arg);
    if (b == -1 && PyErr_Occurred()) return NULL;
    et_wcache_set_capacity((int64_t)b);
    Py_RETURN_NONE;
}

static PyObject *py_clear_weight_cache(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    et_wcache_clear();
    Py_RETURN_NONE;
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

static PyMethodDef quant_methods[] = {
    {"quantize_per_tensor", KW(py_quantize_per_tensor),
     "quantize_per_tensor(x, dtype='int8'|'uint8', scale=None, qmax=0) -> (q, scale): symmetric "
     "dynamic scale max|x|/qmax (qmax 0: 127 for int8, 255 for uint8), round half to even, "
     "saturate"},
    {"quantize_per_channel", KW(py_quantize_per_channel),
     "quantize_per_channel(w) -> (q int8, scales float32 (OC,)): one scale per index of dim 0"},
    {"quantize_stochastic", KW(py_quantize_stochastic),
     "quantize_stochastic(x, seed, offset=0, qmax=127) -> (q int8, scale): per-tensor int8 "
     "with stochastic rounding, reproducible for (seed, offset)"},
    {"set_int8_reduce_range", py_set_int8_reduce_range, METH_O,
     "set_int8_reduce_range(on): int8 activations / gradients of the low-precision ops use "
     "7 bits (u8 <= 127, s8 in [-63, 63]) when on (the default), 8 bits when off"},
    {"int8_reduce_range", py_int8_reduce_range, METH_NOARGS,
     "int8_reduce_range() -> bool: see set_int8_reduce_range"},
    {"dequantize", KW(py_dequantize),
     "dequantize(q, scale) -> float32: q int8/uint8/int32, scale float or float32 (q.shape[0],)"},
    {"dequantize_accumulator", KW(py_dequantize_accumulator),
     "dequantize_accumulator(acc int32, scale_a, scales_w, bias=None, layout='mn'|'nchw') -> "
     "float32: acc * (scale_a * scales_w[c]) + bias[c], c = dim 1"},
    {"to_float16", KW(py_to_float16), "to_float16(x float32, portable=False) -> float16"},
    {"from_float16", KW(py_from_float16), "from_float16(h float16, portable=False) -> float32"},
    {"to_bfloat16", KW(py_to_bfloat16), "to_bfloat16(x float32) -> bfloat16 bits (uint16)"},
    {"from_bfloat16", KW(py_from_bfloat16), "from_bfloat16(b uint16) -> float32"},
    {"weight_cache_stats", py_weight_cache_stats, METH_NOARGS,
     "weight_cache_stats() -> dict: the prepacked int8 weight cache (hits, misses, stale "
     "(weight changed: requantized), aux_hits (oneDNN blocked weights reused), evictions, "
     "entries, bytes, capacity)"},
    {"set_weight_cache_capacity", py_set_weight_cache_capacity, METH_O,
     "set_weight_cache_capacity(nbytes): bound of the prepacked weight cache; 0 disables it, "
     "< 0 restores the default (ET_WEIGHT_CACHE_MB, 256 MiB); evicts down to it"},
    {"clear_weight_cache", py_clear_weight_cache, METH_NOARGS,
     "clear_weight_cache(): frees every prepacked weight not in use"},
    {"have_f16c", py_have_f16c, METH_NOARGS,
     "have_f16c() -> bool: fp16 conversions use F16C instructions"},
    {NULL, NULL, 0, NULL}};

int et_py_init_quant(PyObject *m)
{
    return PyModule_AddFunctions(m, quant_methods);
}
