/* module.c - edgetrain._C: creates the module, the exception classes and
 * the shared helpers of common.h, then lets each bind_*.c file register
 * its functions (tensor storage, offload queue, accelerator products, CPU
 * kernels). */
#define ET_PY_MODULE_C
#include "common.h"

#include <string.h>

#include "../backends/backend.h"
#include "../core/threads.h"

PyObject *et_py_EdgetrainError;
PyObject *et_py_ValueError;
PyObject *et_py_TypeError;
PyObject *et_py_NotImplemented;
PyObject *et_py_BackendError;

PyObject *et_py_raise(et_status st, const char *fallback)
{
    const char *msg = et_error_message();
    if (!msg || !msg[0]) msg = fallback ? fallback : et_status_name(st);
    PyObject *cls;
    switch (st) {
    case ET_ERR_VALUE: cls = et_py_ValueError; break;
    case ET_ERR_TYPE: cls = et_py_TypeError; break;
    case ET_ERR_UNSUPPORTED: cls = et_py_NotImplemented; break;
    case ET_ERR_NOMEM: cls = PyExc_MemoryError; break;
    case ET_ERR_BACKEND: case ET_ERR_CANCELLED: cls = et_py_BackendError; break;
    default: cls = PyExc_RuntimeError; break;
    }
    PyErr_SetString(cls, msg);
    et_error_clear();
    return NULL;
}

int et_py_npy_type(et_dtype dt)
{
    switch (dt) {
    case ET_F32: return NPY_FLOAT32;
    case ET_F16: return NPY_FLOAT16;
    case ET_BF16: return NPY_UINT16;
    case ET_S8: return NPY_INT8;
    case ET_U8: return NPY_UINT8;
    case ET_S32: return NPY_INT32;
    case ET_S64: return NPY_INT64;
    default: return -1;
    }
}

static int npy_matches(int npy, et_dtype dt)
{
    /* NPY_INT64 and NPY_LONG / NPY_LONGLONG alias on LP64 */
    if (dt == ET_S64) return npy == NPY_INT64 || npy == NPY_LONGLONG || npy == NPY_LONG;
    if (dt == ET_S32) return npy == NPY_INT32 || npy == NPY_INT;
    return npy == et_py_npy_type(dt);
}

static int tensor_arg(PyObject *obj, const char *op, const char *arg, int ndim,
                      et_dtype dtype, et_tensor *out)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(et_py_TypeError, "%s: %s must be a numpy array, got %s",
                     op, arg, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int nd = PyArray_NDIM(a);
    npy_intp *dims = PyArray_DIMS(a);
    if (ndim >= 0 && nd != ndim) {
        PyObject *shape = PyObject_GetAttrString(obj, "shape");
        PyErr_Format(et_py_ValueError, "%s: %s must be %dD, got %dD tensor of shape %R",
                     op, arg, ndim, nd, shape);
        Py_XDECREF(shape);
        return -1;
    }
    if (nd > ET_MAX_DIMS) {
        PyErr_Format(et_py_ValueError, "%s: %s has %d dims, at most %d supported",
                     op, arg, nd, ET_MAX_DIMS);
        return -1;
    }
    if (!npy_matches(PyArray_TYPE(a), dtype)) {
        PyErr_Format(et_py_TypeError, "%s: %s must have dtype %s, got %s",
                     op, arg, et_dtype_name(dtype), PyArray_DESCR(a)->typeobj->tp_name);
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(et_py_ValueError, "%s: %s must be a C-contiguous, aligned array "
                     "(call numpy.ascontiguousarray first)", op, arg);
        return -1;
    }
    int64_t shape[ET_MAX_DIMS];
    for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
    et_status st = et_tensor_view(out, PyArray_DATA(a), dtype, nd, shape);
    if (st != ET_OK) { et_py_raise(st, NULL); return -1; }
    return 0;
}

int et_py_tensor_arg(PyObject *obj, const char *op, const char *arg, int ndim,
                     et_dtype dtype, et_tensor *out)
{
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(et_py_TypeError, "%s: %s is required", op, arg);
        return -1;
    }
    return tensor_arg(obj, op, arg, ndim, dtype, out);
}

int et_py_tensor_arg_opt(PyObject *obj, const char *op, const char *arg, int ndim,
                         et_dtype dtype, et_tensor *out)
{
    if (obj == NULL || obj == Py_None) {
        memset(out, 0, sizeof *out);
        out->dtype = dtype;
        return 0;
    }
    return tensor_arg(obj, op, arg, ndim, dtype, out);
}

int et_py_int_tuple(PyObject *obj, const char *op, const char *arg, int n, int64_t *out)
{
    if (PyLong_Check(obj)) {
        long long v = PyLong_AsLongLong(obj);
        if (v == -1 && PyErr_Occurred()) return -1;
        for (int i = 0; i < n; i++) out[i] = v;
        return 0;
    }
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(et_py_TypeError, "%s: %s must be an int or a sequence of %d ints",
                     op, arg, n);
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(et_py_ValueError, "%s: %s must have %d values, got %zd",
                     op, arg, n, PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(et_py_TypeError, "%s: %s must contain ints", op, arg);
            Py_DECREF(seq);
            return -1;
        }
        out[i] = v;
    }
    Py_DECREF(seq);
    return 0;
}

/* float32 array argument (None allowed when optional), one message for a
 * wrong dtype that names the op, the argument and its shape. */
int et_py_f32_arg(PyObject *obj, const char *op, const char *name, et_tensor *out, int optional)
{
    if (optional && (obj == NULL || obj == Py_None))
        return et_py_tensor_arg_opt(obj, op, name, -1, ET_F32, out);
    if (obj && PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32) {
        PyObject *shape = PyObject_GetAttrString(obj, "shape");
        PyErr_Format(et_py_TypeError, "%s: %s must be float32, got %s array of shape %R", op,
                     name, PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name, shape);
        Py_XDECREF(shape);
        return -1;
    }
    return et_py_tensor_arg(obj, op, name, -1, ET_F32, out);
}

/* Backend by name; ShapeError (ValueError) listing the available ones. */
const et_backend *et_py_backend_arg(const char *name)
{
    const et_backend *b = et_backend_find(name);
    if (!b) et_py_raise(ET_ERR_VALUE, NULL);
    return b;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "edgetrain._C",
    "edgetrain's C core: tensors, backends, offload queue, CPU kernels.",
    -1, NULL, NULL, NULL, NULL, NULL};

static PyObject *new_exc(PyObject *m, const char *name, PyObject *bases)
{
    char full[128];
    snprintf(full, sizeof full, "edgetrain.%s", name);
    PyObject *cls = PyErr_NewException(full, bases, NULL);
    if (!cls) return NULL;
    if (PyModule_AddObjectRef(m, name, cls) < 0) { Py_DECREF(cls); return NULL; }
    return cls;
}

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    et_threads_respect_limit();   /* the CPU kernels' OpenMP teams run on this thread */
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    PyObject *bases = NULL;
    if (!(et_py_EdgetrainError = new_exc(m, "EdgetrainError", PyExc_Exception))) goto fail;
#define SUB(var, name, pyexc) \
    bases = PyTuple_Pack(2, et_py_EdgetrainError, pyexc); \
    if (!bases) goto fail; \
    var = new_exc(m, name, bases); Py_CLEAR(bases); if (!var) goto fail;
    SUB(et_py_ValueError, "ShapeError", PyExc_ValueError)
    SUB(et_py_TypeError, "DtypeError", PyExc_TypeError)
    SUB(et_py_NotImplemented, "UnsupportedError", PyExc_NotImplementedError)
    SUB(et_py_BackendError, "BackendError", PyExc_RuntimeError)
#undef SUB
    if (et_py_init_tensor(m) < 0) goto fail;
    if (et_py_init_queue(m) < 0) goto fail;
    if (et_py_init_accel(m) < 0) goto fail;
    if (et_py_init_kernels(m) < 0) goto fail;
    if (et_py_init_quant(m) < 0) goto fail;
    if (et_py_init_lowp(m) < 0) goto fail;
    return m;
fail:
    Py_XDECREF(bases);
    Py_DECREF(m);
    return NULL;
}
