/* tensor.h - dtypes, reference-counted 64-byte-aligned storage, strided views.
 *
 * Why: every kernel and backend works on raw pointers plus sizes (llm.c
 * style); et_tensor is the small descriptor that carries them, with the
 * dtype, shape and strides (in elements) needed to check arguments and to
 * describe memory to oneDNN. Storage is reference-counted so that a queue
 * job, a NumPy array and a Python tensor can share one buffer; storage made
 * by the core is 64-byte aligned (one cache line, one AVX-512 vector).
 * Storage that wraps foreign memory (a NumPy array passed in) carries a
 * release callback instead of owning the bytes; the core never knows who the
 * owner is (the Python binding sets the callback).
 */
#ifndef ET_TENSOR_H
#define ET_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define ET_MAX_DIMS 8
#define ET_ALIGN 64

typedef enum et_dtype {
    ET_F32 = 0,
    ET_F16,
    ET_BF16,
    ET_S8,
    ET_U8,
    ET_S32,
    ET_S64,
    ET_DTYPE_COUNT
} et_dtype;

size_t et_dtype_size(et_dtype dt);
/* "float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64" */
const char *et_dtype_name(et_dtype dt);
/* Accepts the names above and "f32", "f16", "bf16", "s8", "u8", "s32", "s64". */
et_status et_dtype_from_name(const char *name, et_dtype *out);

typedef struct et_storage {
    void *data;
    size_t nbytes;
    long refcount;                   /* atomic */
    void (*release)(void *owner);    /* NULL: data was made by et_storage_new */
    void *owner;                     /* argument of release */
} et_storage;

/* New storage of nbytes (>= 1 byte allocated), 64-byte aligned, zero-filled
 * when `zero` is set. *out is NULL on failure (ET_ERR_NOMEM names the size). */
et_status et_storage_new(size_t nbytes, int zero, et_storage **out);
/* Wraps foreign memory; `release(owner)` runs when the last reference goes. */
et_status et_storage_wrap(void *data, size_t nbytes, void (*release)(void *),
                          void *owner, et_storage **out);
void et_storage_retain(et_storage *s);
void et_storage_release(et_storage *s);   /* NULL-safe */

typedef struct et_tensor {
    et_dtype dtype;
    int ndim;
    int64_t shape[ET_MAX_DIMS];
    int64_t strides[ET_MAX_DIMS];    /* in elements */
    et_storage *storage;             /* may be NULL for a borrowed view */
    void *data;                      /* first element */
} et_tensor;

/* Fills a contiguous (row-major) view descriptor over `data`, no storage. */
et_status et_tensor_view(et_tensor *t, void *data, et_dtype dt, int ndim,
                         const int64_t *shape);
/* Allocates a new contiguous tensor with its own storage (refcount 1). */
et_status et_tensor_alloc(et_tensor *t, et_dtype dt, int ndim,
                          const int64_t *shape, int zero);
/* Drops the tensor's storage reference (NULL-safe, idempotent). */
void et_tensor_release(et_tensor *t);

int64_t et_tensor_numel(const et_tensor *t);
int et_tensor_is_contiguous(const et_tensor *t);
/* Writes "(2, 3, 4)" into buf. */
const char *et_shape_str(const et_tensor *t, char *buf, size_t n);

/* 64-byte aligned malloc/free for scratch buffers (NULL-safe free). */
void *et_aligned_alloc(size_t nbytes);
void et_aligned_free(void *p);
/* Freed blocks of >= 64 KiB are cached for reuse (tensor.c says why and how much):
 * free them all now / the bytes held. */
void et_aligned_cache_clear(void);
size_t et_aligned_cache_bytes(void);

#endif
