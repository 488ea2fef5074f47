/* tensor.c - storage and tensor descriptors; see tensor.h. */
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const size_t dtype_sizes[ET_DTYPE_COUNT] = {4, 2, 2, 1, 1, 4, 8};
static const char *dtype_names[ET_DTYPE_COUNT] = {
    "float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64"};
static const char *dtype_short[ET_DTYPE_COUNT] = {
    "f32", "f16", "bf16", "s8", "u8", "s32", "s64"};

size_t et_dtype_size(et_dtype dt)
{
    return (dt >= 0 && dt < ET_DTYPE_COUNT) ? dtype_sizes[dt] : 0;
}

const char *et_dtype_name(et_dtype dt)
{
    return (dt >= 0 && dt < ET_DTYPE_COUNT) ? dtype_names[dt] : "unknown";
}

et_status et_dtype_from_name(const char *name, et_dtype *out)
{
    for (int i = 0; i < ET_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_names[i]) == 0 || strcmp(name, dtype_short[i]) == 0) {
            *out = (et_dtype)i;
            return ET_OK;
        }
    }
    return et_error(ET_ERR_VALUE, "unknown dtype '%s' (expected one of float32, "
                    "float16, bfloat16, int8, uint8, int32, int64)", name);
}

void *et_aligned_alloc(size_t nbytes)
{
    void *p = NULL;
    if (nbytes == 0) nbytes = 1;
    /* round up: aligned_alloc wants a multiple of the alignment */
    size_t n = (nbytes + ET_ALIGN - 1) / ET_ALIGN * ET_ALIGN;
    if (n < nbytes) return NULL;   /* overflow */
    if (posix_memalign(&p, ET_ALIGN, n) != 0) return NULL;
    return p;
}

void et_aligned_free(void *p) { free(p); }

et_status et_storage_new(size_t nbytes, int zero, et_storage **out)
{
    *out = NULL;
    et_storage *s = malloc(sizeof *s);
    if (!s) return et_error(ET_ERR_NOMEM, "storage: cannot allocate descriptor");
    s->data = et_aligned_alloc(nbytes);
    if (!s->data) {
        free(s);
        return et_error(ET_ERR_NOMEM, "storage: cannot allocate %zu bytes", nbytes);
    }
    if (zero) memset(s->data, 0, nbytes ? nbytes : 1);
    s->nbytes = nbytes;
    s->refcount = 1;
    s->release = NULL;
    s->owner = NULL;
    *out = s;
    return ET_OK;
}

et_status et_storage_wrap(void *data, size_t nbytes, void (*release)(void *),
                          void *owner, et_storage **out)
{
    *out = NULL;
    et_storage *s = malloc(sizeof *s);
    if (!s) return et_error(ET_ERR_NOMEM, "storage: cannot allocate descriptor");
    s->data = data;
    s->nbytes = nbytes;
    s->refcount = 1;
    s->release = release;
    s->owner = owner;
    *out = s;
    return ET_OK;
}

void et_storage_retain(et_storage *s)
{
    if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void et_storage_release(et_storage *s)
{
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->release) s->release(s->owner);
    else et_aligned_free(s->data);
    free(s);
}

static et_status fill_shape(et_tensor *t, et_dtype dt, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > ET_MAX_DIMS)
        return et_error(ET_ERR_VALUE, "tensor: ndim %d outside [0, %d]", ndim, ET_MAX_DIMS);
    if (dt < 0 || dt >= ET_DTYPE_COUNT)
        return et_error(ET_ERR_TYPE, "tensor: unknown dtype %d", (int)dt);
    t->dtype = dt;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] < 0)
            return et_error(ET_ERR_VALUE, "tensor: negative size %lld in dim %d",
                            (long long)shape[i], i);
        t->shape[i] = shape[i];
        t->strides[i] = stride;
        stride *= shape[i] ? shape[i] : 1;
    }
    return ET_OK;
}

et_status et_tensor_view(et_tensor *t, void *data, et_dtype dt, int ndim,
                         const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    ET_TRY(fill_shape(t, dt, ndim, shape));
    t->data = data;
    return ET_OK;
}

et_status et_tensor_alloc(et_tensor *t, et_dtype dt, int ndim,
                          const int64_t *shape, int zero)
{
    memset(t, 0, sizeof *t);
    ET_TRY(fill_shape(t, dt, ndim, shape));
    int64_t n = et_tensor_numel(t);
    if (n > 0 && (uint64_t)n > SIZE_MAX / et_dtype_size(dt))
        return et_error(ET_ERR_NOMEM, "tensor: %lld elements overflow size_t", (long long)n);
    ET_TRY(et_storage_new((size_t)n * et_dtype_size(dt), zero, &t->storage));
    t->data = t->storage->data;
    return ET_OK;
}

void et_tensor_release(et_tensor *t)
{
    if (!t) return;
    et_storage_release(t->storage);
    t->storage = NULL;
    t->data = NULL;
}

int64_t et_tensor_numel(const et_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int et_tensor_is_contiguous(const et_tensor *t)
{
    int64_t stride = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != stride) return 0;
        stride *= t->shape[i];
    }
    return 1;
}

const char *et_shape_str(const et_tensor *t, char *buf, size_t n)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "(");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld",
                                (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, t->ndim == 1 ? ",)" : ")");
    return buf;
}
