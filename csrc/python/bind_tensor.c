/* bind_tensor.c - core storage as NumPy memory.
 *
 * _C.empty(shape, dtype="float32", zero=False) returns a NumPy array whose
 * bytes are a 64-byte-aligned et_storage; the array's base is a small
 * _C.Storage object holding one storage reference, released when NumPy
 * drops the array (zero-copy core -> NumPy). The other direction (NumPy ->
 * core) is et_py_tensor_arg in module.c: a borrowed view, no copy.
 */
#include "common.h"

typedef struct {
    PyObject_HEAD
    et_storage *storage;
} StorageObject;

static void storage_dealloc(StorageObject *self)
{
    et_storage_release(self->storage);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *storage_nbytes(StorageObject *self, void *c)
{
    (void)c;
    return PyLong_FromSize_t(self->storage ? self->storage->nbytes : 0);
}

static PyObject *storage_address(StorageObject *self, void *c)
{
    (void)c;
    return PyLong_FromVoidPtr(self->storage ? self->storage->data : NULL);
}

static PyObject *storage_refcount(StorageObject *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->storage ? __atomic_load_n(&self->storage->refcount,
                                                           __ATOMIC_RELAXED) : 0);
}

static PyGetSetDef storage_getset[] = {
    {"nbytes", (getter)storage_nbytes, NULL, "bytes held", NULL},
    {"address", (getter)storage_address, NULL, "address of the first byte", NULL},
    {"refcount", (getter)storage_refcount, NULL, "core references to the storage", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject StorageType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "edgetrain._C.Storage",
    .tp_basicsize = sizeof(StorageObject),
    .tp_dealloc = (destructor)storage_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "64-byte-aligned reference-counted core storage (base of NumPy arrays).",
    .tp_getset = storage_getset,
};

PyObject *et_py_empty(int ndim, const int64_t *shape, et_dtype dtype, int zero,
                      et_tensor *view)
{
    et_tensor t;
    et_status st = et_tensor_alloc(&t, dtype, ndim, shape, zero);
    if (st != ET_OK) return et_py_raise(st, NULL);
    StorageObject *so = PyObject_New(StorageObject, &StorageType);
    if (!so) { et_tensor_release(&t); return NULL; }
    so->storage = t.storage;            /* the Storage object owns the reference */
    npy_intp dims[ET_MAX_DIMS];
    for (int i = 0; i < ndim; i++) dims[i] = (npy_intp)shape[i];
    PyObject *arr = PyArray_SimpleNewFromData(ndim, dims, et_py_npy_type(dtype), t.data);
    if (!arr) { Py_DECREF(so); return NULL; }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)so) < 0) {
        Py_DECREF(arr);   /* so's reference was stolen even on failure */
        return NULL;
    }
    if (view) { *view = t; view->storage = NULL; }   /* borrowed */
    return arr;
}

static PyObject *py_empty(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"shape", "dtype", "zero", NULL};
    PyObject *shape_obj;
    const char *dtname = "float32";
    int zero = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|sp:empty", kwlist, &shape_obj, &dtname, &zero))
        return NULL;
    et_dtype dt;
    et_status st = et_dtype_from_name(dtname, &dt);
    if (st != ET_OK) return et_py_raise(st, NULL);
    PyObject *seq = PySequence_Fast(shape_obj, "empty: shape must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > ET_MAX_DIMS) {
        Py_DECREF(seq);
        return PyErr_Format(et_py_ValueError, "empty: %zd dims, at most %d", n, ET_MAX_DIMS);
    }
    int64_t shape[ET_MAX_DIMS];
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
        if (v < 0) {
            Py_DECREF(seq);
            return PyErr_Format(et_py_ValueError, "empty: negative size %lld in dim %zd", v, i);
        }
        shape[i] = v;
    }
    Py_DECREF(seq);
    return et_py_empty((int)n, shape, dt, zero, NULL);
}

static PyMethodDef tensor_methods[] = {
    {"empty", (PyCFunction)(void (*)(void))py_empty, METH_VARARGS | METH_KEYWORDS,
     "empty(shape, dtype='float32', zero=False) -> numpy array on 64-byte-aligned core storage"},
    {NULL, NULL, 0, NULL}};

int et_py_init_tensor(PyObject *m)
{
    if (PyType_Ready(&StorageType) < 0) return -1;
    Py_INCREF(&StorageType);
    if (PyModule_AddObject(m, "Storage", (PyObject *)&StorageType) < 0) {
        Py_DECREF(&StorageType);
        return -1;
    }
    return PyModule_AddFunctions(m, tensor_methods);
}
