/* common.h - the Python boundary shared by every bind_*.c file.
 *
 * Why: only the files in csrc/python include Python.h; the core knows
 * nothing of Python. This header gives the binding files one way to
 *   - turn a failing et_status into a Python exception (ET_PY_RAISE),
 *   - borrow a NumPy array as an et_tensor view (et_py_tensor_arg), and
 *   - make a new NumPy array whose bytes are 64-byte-aligned core storage
 *     (et_py_empty): the array's base object owns one storage reference.
 * NPY_NO_DEFINE / PY_ARRAY_UNIQUE_SYMBOL let several files share the NumPy
 * C-API table that module.c imports.
 */
#ifndef ET_PY_COMMON_H
#define ET_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL edgetrain_ARRAY_API
#ifndef ET_PY_MODULE_C
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../core/status.h"
#include "../core/tensor.h"

/* Exception classes created in module.c (edgetrain._C.EdgetrainError, ...). */
extern PyObject *et_py_EdgetrainError;   /* base, subclass of Exception     */
extern PyObject *et_py_ValueError;       /* EdgetrainError + ValueError     */
extern PyObject *et_py_TypeError;        /* EdgetrainError + TypeError      */
extern PyObject *et_py_NotImplemented;   /* EdgetrainError + NotImplementedError */
extern PyObject *et_py_BackendError;     /* EdgetrainError + RuntimeError   */

/* Sets the Python exception matching `st` with this thread's core message
 * (or `fallback` when the core left none). Returns NULL for `return`. */
PyObject *et_py_raise(et_status st, const char *fallback);

/* Raise the matching exception and jump to `fail` when st != ET_OK. */
#define ET_PY_CHECK(expr) do { et_status et_py_st_ = (expr); \
    if (et_py_st_ != ET_OK) { et_py_raise(et_py_st_, NULL); goto fail; } } while (0)

/* Borrows `obj` (must be a NumPy array) as a view: checks ndim (-1: any),
 * dtype, C-contiguity and alignment; messages name `op` and `arg`. The view
 * has no storage (the caller keeps `obj` alive). Returns 0 on success, -1
 * with a Python exception set. */
int et_py_tensor_arg(PyObject *obj, const char *op, const char *arg, int ndim,
                     et_dtype dtype, et_tensor *out);

/* Same, but `obj` may be None (out->data = NULL then). */
int et_py_tensor_arg_opt(PyObject *obj, const char *op, const char *arg, int ndim,
                         et_dtype dtype, et_tensor *out);

/* New C-contiguous NumPy array backed by fresh aligned core storage;
 * `view` (may be NULL) receives a borrowed descriptor of it. zero: fill 0. */
PyObject *et_py_empty(int ndim, const int64_t *shape, et_dtype dtype, int zero,
                      et_tensor *view);

/* Parses a Python int or a sequence of `n` ints into out[]. */
int et_py_int_tuple(PyObject *obj, const char *op, const char *arg, int n, int64_t *out);

/* A float32 array argument (`optional`: None gives a view with data NULL);
 * 0, or -1 with a Python exception naming op, argument, dtype and shape. */
int et_py_f32_arg(PyObject *obj, const char *op, const char *name, et_tensor *out, int optional);

/* The backend called `name`, or NULL with ShapeError listing the available ones. */
struct et_backend;
const struct et_backend *et_py_backend_arg(const char *name);

/* NumPy type number of an edgetrain dtype (bf16 -> uint16 storage). */
int et_py_npy_type(et_dtype dt);

/* Registration hooks, one per bind_*.c file, called by module.c. Each adds
 * its functions/types to the module and returns 0, or -1 with an exception. */
int et_py_init_tensor(PyObject *m);
int et_py_init_queue(PyObject *m);
int et_py_init_accel(PyObject *m);
int et_py_init_kernels(PyObject *m);
int et_py_init_quant(PyObject *m);
int et_py_init_lowp(PyObject *m);

#endif
