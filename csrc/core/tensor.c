/* tensor.c - storage and tensor descriptors; see tensor.h. */
#include "tensor.h"

#include <pthread.h>
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

/* -- aligned blocks, with a cache of large ones ------------------------------------
 *
 * Why the cache: a training step allocates and frees the same large buffers every
 * time (lenet int8, batch 64: ~34 blocks of >= 64 KiB, ~15 MB per step: outputs,
 * im2col, int32 accumulators). Handed back to malloc each time, they fragment
 * glibc's heap: where a longer-lived block lands in the hole one of them used, the
 * next one extends the heap instead, so over a long run the resident set grows by a
 * few MiB in steps of a buffer's size while the bytes in use stay flat (measured by
 * stress/long_run.py: +1.7% and +3.8% RSS over 20,000 steps, +0 KiB in use). Blocks
 * above glibc's mmap threshold cost page faults on every reuse besides. So freed
 * blocks of >= ET_CACHE_MIN bytes are kept, keyed by their (page-rounded) size, up
 * to ET_CACHE_BYTES in all and ET_CACHE_SLOTS blocks (the oldest go first), and
 * handed out again for a request of the same rounded size.
 * EDGETRAIN_ALLOC_CACHE_MB=N sets the bound (0: no cache); under AddressSanitizer
 * there is no cache, so that a use after free is still caught.
 *
 * Each block carries its size in a 64-byte header before the pointer returned
 * (et_aligned_free needs it and has no size argument). */
#define ET_CACHE_MIN ((size_t)64 << 10)
#define ET_CACHE_SLOTS 64
#define ET_CACHE_BYTES_DEFAULT ((size_t)64 << 20)
#define ET_PAGE ((size_t)4096)

#if defined(__SANITIZE_ADDRESS__)
#define ET_CACHE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ET_CACHE_ASAN 1
#endif
#endif

static struct { void *raw; size_t n; } cache[ET_CACHE_SLOTS];   /* oldest first */
static int cache_len;
static size_t cache_bytes;
static size_t cache_cap = (size_t)-1;     /* (size_t)-1: not read from the env yet */
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;

static size_t cache_bound(void)   /* under cache_mu */
{
    if (cache_cap == (size_t)-1) {
#ifdef ET_CACHE_ASAN
        cache_cap = 0;
#else
        const char *env = getenv("EDGETRAIN_ALLOC_CACHE_MB");
        char *end = NULL;
        long long mb = env && *env ? strtoll(env, &end, 10) : -1;
        cache_cap = (env && *env && end && *end == '\0' && mb >= 0)
                        ? (size_t)mb << 20 : ET_CACHE_BYTES_DEFAULT;
#endif
    }
    return cache_cap;
}

void *et_aligned_alloc(size_t nbytes)
{
    if (nbytes == 0) nbytes = 1;
    /* header + data; large blocks rounded to pages so that sizes recur exactly */
    size_t n = nbytes + ET_ALIGN;
    if (n < nbytes) return NULL;   /* overflow */
    size_t r = n >= ET_CACHE_MIN ? (n + ET_PAGE - 1) / ET_PAGE * ET_PAGE
                                 : (n + ET_ALIGN - 1) / ET_ALIGN * ET_ALIGN;
    if (r < n) return NULL;        /* overflow */
    void *raw = NULL;
    if (r >= ET_CACHE_MIN) {
        pthread_mutex_lock(&cache_mu);
        for (int i = cache_len - 1; i >= 0; i--) {       /* the newest of the size */
            if (cache[i].n == r) {
                raw = cache[i].raw;
                cache_bytes -= r;
                memmove(&cache[i], &cache[i + 1], (size_t)(cache_len - i - 1) * sizeof cache[0]);
                cache_len--;
                break;
            }
        }
        pthread_mutex_unlock(&cache_mu);
    }
    if (!raw && posix_memalign(&raw, ET_ALIGN, r) != 0) return NULL;
    *(size_t *)raw = r;
    return (char *)raw + ET_ALIGN;
}

void et_aligned_free(void *p)
{
    if (!p) return;
    void *raw = (char *)p - ET_ALIGN;
    size_t r = *(size_t *)raw;
    if (r >= ET_CACHE_MIN) {
        void *evict[ET_CACHE_SLOTS + 1];
        int ne = 0;
        pthread_mutex_lock(&cache_mu);
        size_t cap = cache_bound();
        if (r <= cap) {
            while (cache_len > 0 && (cache_len == ET_CACHE_SLOTS || cache_bytes + r > cap)) {
                evict[ne++] = cache[0].raw;              /* the oldest */
                cache_bytes -= cache[0].n;
                memmove(&cache[0], &cache[1], (size_t)(cache_len - 1) * sizeof cache[0]);
                cache_len--;
            }
            cache[cache_len].raw = raw;
            cache[cache_len].n = r;
            cache_len++;
            cache_bytes += r;
            raw = NULL;
        }
        pthread_mutex_unlock(&cache_mu);
        for (int i = 0; i < ne; i++) free(evict[i]);     /* outside the lock */
    }
    free(raw);
}

void et_aligned_cache_clear(void)
{
    pthread_mutex_lock(&cache_mu);
    for (int i = 0; i < cache_len; i++) free(cache[i].raw);
    cache_len = 0;
    cache_bytes = 0;
    pthread_mutex_unlock(&cache_mu);
}

size_t et_aligned_cache_bytes(void)
{
    pthread_mutex_lock(&cache_mu);
    size_t b = cache_bytes;
    pthread_mutex_unlock(&cache_mu);
    return b;
}

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
        /* (checked: a wrapped stride would be undefined behaviour; a shape this
         * large is refused by et_tensor_alloc before any stride is used) */
        if (__builtin_mul_overflow(stride, shape[i] ? shape[i] : 1, &stride))
            stride = INT64_MAX;
    }
    return ET_OK;
}

/* "(2147483648, 2147483648, 4)" into buf, for the messages of shapes too large. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, ndim == 1 ? ",)" : ")");
    return buf;
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
    /* Elements and bytes with overflow checks: the product of a huge shape must be
     * refused, naming the shape, not wrap around to a small (or bogus) size. */
    uint64_t n = 1;
    size_t nbytes = 0;
    int empty = 0, overflow = 0;
    for (int i = 0; i < ndim; i++) empty |= shape[i] == 0;
    for (int i = 0; i < ndim && !empty && !overflow; i++)
        overflow = __builtin_mul_overflow(n, (uint64_t)shape[i], &n) || n > (uint64_t)INT64_MAX;
    if (!empty && !overflow)
        overflow = __builtin_mul_overflow((size_t)n, et_dtype_size(dt), &nbytes);
    if (overflow) {
        char buf[ET_MAX_DIMS * 24 + 8];
        return et_error(ET_ERR_NOMEM, "tensor: cannot allocate shape %s of dtype %s: more "
                        "than 2^64 bytes", shape_str(buf, sizeof buf, ndim, shape),
                        et_dtype_name(dt));
    }
    et_status st = et_storage_new(empty ? 0 : nbytes, zero, &t->storage);
    if (st == ET_ERR_NOMEM) {   /* the size and what it was for, e.g. an op's output */
        char buf[ET_MAX_DIMS * 24 + 8];
        return et_error(ET_ERR_NOMEM, "tensor: cannot allocate %zu bytes (%.3g GiB) for "
                        "shape %s of dtype %s", nbytes, (double)nbytes / (1024.0 * 1024 * 1024),
                        shape_str(buf, sizeof buf, ndim, shape), et_dtype_name(dt));
    }
    if (st != ET_OK) return st;
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
