/* onednn.c - the "inference engine": oneDNN 2.6 forward-inference primitives.
 *
 * Why: oneDNN's inference primitives (f32, int8 u8.s8->s32, bf16/f16) are
 * the accelerator we drive. One CPU engine and one stream are created once;
 * f32 / bf16 / f16 conv2d forward and every matmul run as primitives on
 * plain layouts (nchw / oihw or goihw; transposed matmul operands are
 * described by strides, never copied); the int8 conv runs on nhwc and
 * blocked layouts (see conv2d_int8 below).
 *
 * Building a primitive is expensive (like building a TensorRT engine /
 * execution context), and an inference runtime can only hold a bounded
 * number of them: the proposal's authors hit that wall with TensorRT's
 * execution contexts. So primitives live in OUR bounded LRU cache, keyed by
 * the full descriptor (op, dtype, shapes, strides, dilations, padding,
 * groups, transposes, has-bias), default capacity 64, evicting (and
 * destroying) the least recently used one; hits / misses / evictions are
 * counted and readable from Python. oneDNN's own global primitive cache is
 * switched off so that ours is the one measured.
 *
 * Low precision (csrc/BINDINGS.md): int8 runs oneDNN's u8|s8 x s8 -> s32 matmul and
 * convolution primitives with no scales or zero points (the s32 result is
 * the exact integer sum; the dequantize epilogue is the quantizer's). bf16
 * and f16 (-> f32 dst, f32 bias) first try oneDNN's own bf16 / f16
 * primitives; where this oneDNN build / CPU has none (dnnl_unimplemented:
 * oneDNN 2.6 needs AVX-512 for bf16 and has no f16 on x64 CPUs), the
 * operands are widened to f32 exactly inside this backend and the f32
 * primitive runs (products of bf16/f16 values are exact in f32;
 * accumulation is f32). That decision is made once per (op, dtype).
 *
 * int8 exactness without VNNI: on CPUs without AVX512-VNNI / AVX-VNNI (this
 * project's AVX2 machines) oneDNN 2.6 multiplies u8 x s8 with vpmaddubsw,
 * which adds PAIRS of products into a SATURATING int16 (s8 sources are
 * shifted by +128 to u8 first). Measured here: full-range u8 x s8 matmuls
 * are off by up to ~9e4. The pair sum is bounded by 2 * max(u8 operand) *
 * max|s8 operand|; when that bound is <= 32767 (e.g. 7-bit "reduce_range"
 * activations, as fbgemm uses on such CPUs) one primitive run is exact.
 * Otherwise the weight-side operand is split into nibbles, b = 16*hi + lo
 * (hi = b >> 4 in [-8, 7], lo = b & 15 in [0, 15]): both runs stay below
 * 2*255*15 = 7650, and y = 16*y_hi + y_lo is exact (two runs of the SAME
 * cached primitive). The operand scan costs O(inputs), not O(products).
 * The cache key holds the src, weight and dst dtypes.
 *
 * Locking: only the queue worker executes primitives, but Python may read
 * the stats or resize the cache at any time, so one mutex guards the cache;
 * it is held across execution too (an entry must not be destroyed while it
 * runs).
 */
#include "backend.h"
#include "../quant/wcache.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- engine ------------------------------------------------------------ */

static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t engine;
static dnnl_stream_t stream;
static int engine_ok;

static void engine_init(void)
{
    dnnl_set_primitive_cache_capacity(0);   /* ours is the cache we measure */
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return;
    if (dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        dnnl_engine_destroy(engine);
        return;
    }
    engine_ok = 1;
}

int et_onednn_available(void)
{
    pthread_once(&engine_once, engine_init);
    return engine_ok;
}

/* ---- bounded LRU primitive cache --------------------------------------- */

/* The full descriptor; zero-filled then set, compared with memcmp. */
typedef struct cache_key {
    int32_t op, dtype;
    int64_t v[24];
} cache_key;

/* prim is the op's primitive. The int8 conv path (conv2d_int8 below) also
 * keeps the reorder of plain s8 weights into the layout prim chose (`aux`)
 * and that layout (`aux_md`); `ref_impl` is 1 when oneDNN offered only its
 * reference kernel for prim. */
typedef struct cache_entry {
    cache_key key;
    dnnl_primitive_t prim, aux;
    dnnl_memory_desc_t aux_md;
    int ref_impl;
    /* the f32 conv on oneDNN's own layouts (conv2d_f32_blocked below): the
     * layouts prim chose for src, weights, dst and the reorders from / to
     * the plain nchw / oihw ones (NULL where the plain layout is the chosen one) */
    dnnl_primitive_t reo[3];
    dnnl_memory_desc_t blk_md[3];
    uint64_t last_used;   /* LRU clock; the smallest is evicted */
} cache_entry;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static cache_entry *entries;    /* [capacity], the first `size` used */
static int64_t cache_size, cache_capacity = 64;
static int64_t n_hits, n_misses, n_evictions;
static uint64_t lru_clock;

static void entry_destroy(cache_entry *e)
{
    dnnl_primitive_destroy(e->prim);
    if (e->aux) dnnl_primitive_destroy(e->aux);
    for (int i = 0; i < 3; i++)
        if (e->reo[i]) dnnl_primitive_destroy(e->reo[i]);
}

/* Called with cache_mu held. */
static void evict_lru(void)
{
    int64_t victim = 0;
    for (int64_t i = 1; i < cache_size; i++)
        if (entries[i].last_used < entries[victim].last_used) victim = i;
    entry_destroy(&entries[victim]);
    entries[victim] = entries[cache_size - 1];
    cache_size--;
    n_evictions++;
}

static cache_entry *cache_find(const cache_key *k)
{
    for (int64_t i = 0; i < cache_size; i++)
        if (memcmp(&entries[i].key, k, sizeof *k) == 0) {
            entries[i].last_used = ++lru_clock;
            n_hits++;
            return &entries[i];
        }
    n_misses++;
    return NULL;
}

static dnnl_primitive_t cache_lookup(const cache_key *k)
{
    const cache_entry *e = cache_find(k);
    return e ? e->prim : NULL;
}

/* Takes ownership of e's primitives (destroyed on failure); returns the
 * stored entry through *out (may be NULL). The pointer stays valid until the
 * next insert / eviction, i.e. while cache_mu is held. */
static et_status cache_insert_entry(const cache_key *k, cache_entry e, cache_entry **out)
{
    if (!entries) {
        entries = calloc((size_t)cache_capacity, sizeof *entries);
        if (!entries) {
            entry_destroy(&e);
            return et_error(ET_ERR_NOMEM, "onednn: cannot allocate the primitive cache (%lld entries)",
                            (long long)cache_capacity);
        }
    }
    while (cache_size >= cache_capacity) evict_lru();
    e.key = *k;
    e.last_used = ++lru_clock;
    entries[cache_size] = e;
    if (out) *out = &entries[cache_size];
    cache_size++;
    return ET_OK;
}

/* Takes ownership of prim (destroyed on failure). */
static et_status cache_insert(const cache_key *k, dnnl_primitive_t prim)
{
    cache_entry e;
    memset(&e, 0, sizeof e);
    e.prim = prim;
    return cache_insert_entry(k, e, NULL);
}

et_status et_onednn_cache_stats(et_cache_stats *out)
{
    pthread_mutex_lock(&cache_mu);
    out->hits = n_hits;
    out->misses = n_misses;
    out->evictions = n_evictions;
    out->size = cache_size;
    out->capacity = cache_capacity;
    pthread_mutex_unlock(&cache_mu);
    return ET_OK;
}

et_status et_onednn_set_cache_capacity(int64_t capacity)
{
    if (capacity < 1 || capacity > (1 << 20))
        return et_error(ET_ERR_VALUE, "set_cache_capacity: capacity must be in [1, %d], got %lld",
                        1 << 20, (long long)capacity);
    pthread_mutex_lock(&cache_mu);
    while (cache_size > capacity) evict_lru();
    cache_entry *e = realloc(entries, (size_t)capacity * sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&cache_mu);
        return et_error(ET_ERR_NOMEM, "set_cache_capacity: cannot allocate %lld entries",
                        (long long)capacity);
    }
    entries = e;
    cache_capacity = capacity;
    pthread_mutex_unlock(&cache_mu);
    return ET_OK;
}

et_status et_onednn_clear_cache(void)
{
    pthread_mutex_lock(&cache_mu);
    for (int64_t i = 0; i < cache_size; i++) entry_destroy(&entries[i]);
    cache_size = 0;
    n_hits = n_misses = n_evictions = 0;
    pthread_mutex_unlock(&cache_mu);
    return ET_OK;
}

/* ---- primitives ----------------------------------------------------------- */

static dnnl_data_type_t dnnl_dt(et_dtype dt)
{
    switch (dt) {
    case ET_F32: return dnnl_f32;
    case ET_BF16: return dnnl_bf16;
    case ET_F16: return dnnl_f16;
    case ET_S8: return dnnl_s8;
    case ET_U8: return dnnl_u8;
    case ET_S32: return dnnl_s32;
    default: return dnnl_data_type_undef;
    }
}

#define DNNL_TRY(what, call) do { dnnl_status_t s_ = (call); if (s_ != dnnl_success) { \
    st = et_error(ET_ERR_BACKEND, "onednn %s: %s failed (%s)", opname, what, \
                  dnnl_status2str(s_)); goto done; } } while (0)

/* Builds a primitive from an op descriptor; *why (may be NULL) receives
 * the primitive-descriptor creation status (dnnl_unimplemented: no
 * implementation of these dtypes here). */
static et_status build(const char *opname, const_dnnl_op_desc_t desc, dnnl_primitive_t *out,
                       dnnl_status_t *why)
{
    et_status st = ET_OK;
    dnnl_primitive_desc_t pd = NULL;
    *out = NULL;
    dnnl_status_t s0 = dnnl_primitive_desc_create(&pd, desc, NULL, engine, NULL);
    if (why) *why = s0;
    DNNL_TRY("dnnl_primitive_desc_create", s0);
    DNNL_TRY("dnnl_primitive_create", dnnl_primitive_create(out, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    return st;
}

/* Wraps user pointers as memories, executes, waits, frees the wrappers. */
static et_status execute(const char *opname, dnnl_primitive_t prim, int n, const int *argid,
                         const dnnl_memory_desc_t *mds, void *const *ptrs)
{
    et_status st = ET_OK;
    dnnl_exec_arg_t args[4];
    dnnl_memory_t mem[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < n; i++) {
        DNNL_TRY("dnnl_memory_create", dnnl_memory_create(&mem[i], &mds[i], engine, ptrs[i]));
        args[i].arg = argid[i];
        args[i].memory = mem[i];
    }
    DNNL_TRY("dnnl_primitive_execute", dnnl_primitive_execute(prim, stream, n, args));
    DNNL_TRY("dnnl_stream_wait", dnnl_stream_wait(stream));
done:
    for (int i = 0; i < n; i++) if (mem[i]) dnnl_memory_destroy(mem[i]);
    return st;
}

static int onednn_supports(et_op op, et_dtype dt)
{
    (void)op;
    return dt == ET_F32 || dt == ET_U8 || dt == ET_S8 || dt == ET_BF16 || dt == ET_F16;
}

/* 1 once oneDNN answered dnnl_unimplemented for a bf16 / f16 (op, dtype):
 * from then on that combination is widened to f32 here. */
static _Atomic int no_native[ET_OP_COUNT][ET_DTYPE_COUNT];

static int widenable(et_dtype dt) { return dt == ET_BF16 || dt == ET_F16; }

int et_onednn_native(et_op op, et_dtype dt);   /* for the BINDINGS.md table / tests */
int et_onednn_native(et_op op, et_dtype dt)
{
    return !(widenable(dt) && no_native[op][dt]);
}

static et_status onednn_conv2d(const et_conv2d_args *p);
static et_status onednn_conv2d_int8(const et_conv2d_args *p);
static et_status onednn_matmul(const et_matmul_args *p);

/* 1 when the CPU oneDNN uses has VNNI (u8.s8 dot products into int32). */
static int have_vnni(void)
{
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return (isa & (0x40 | 0x400)) != 0;   /* avx512_core_vnni (and up), avx2_vnni */
}

/* Operand ranges for the int16 pair-sum bound below. */
static int u8_max(const uint8_t *a, int64_t n)
{
    uint8_t mx = 0;
#pragma omp parallel for simd reduction(max:mx) if (n > 262144 && !omp_in_parallel())
    for (int64_t i = 0; i < n; i++) mx = a[i] > mx ? a[i] : mx;
    return mx;
}

static int s8_absmax(const int8_t *s, int64_t m)
{
    int8_t mx = -128, mn = 127;
#pragma omp simd reduction(max:mx) reduction(min:mn)
    for (int64_t i = 0; i < m; i++) { mx = s[i] > mx ? s[i] : mx; mn = s[i] < mn ? s[i] : mn; }
    return m > 0 ? (mx > -mn ? mx : -mn) : 0;
}

/* 1 when one run of oneDNN's int8 kernel is exact for a u8 source whose
 * maximum is umax against s8 weights of maximum |w| wmax: with VNNI always,
 * else when the saturating int16 pair sums cannot overflow. (s8 sources
 * never reach the kernel without VNNI: they are shifted to u8 first.) */
static int one_run_exact(int umax, int wmax)
{
    return have_vnni() || 2 * umax * wmax <= 32767;
}

/* Runs an int8 primitive whose weight-side operand (argument slot `wi`,
 * `m` bytes) is split into nibbles: y = 16 * prim(.., hi) + prim(.., lo).
 * ptrs[yi] is the s32 output of `ny` elements. */
static et_status execute(const char *opname, dnnl_primitive_t prim, int n, const int *argid,
                         const dnnl_memory_desc_t *mds, void *const *ptrs);

/* w = 16 * hi + lo, hi = floor(w / 16) in [-8, 7], lo in [0, 15]: each half
 * keeps oneDNN's int16 pair sums below 2 * 255 * 15. */
static void split_nibbles(const int8_t *w, int64_t m, int8_t *hi, int8_t *lo)
{
    for (int64_t i = 0; i < m; i++) {
        hi[i] = (int8_t)(w[i] >> 4);     /* arithmetic shift */
        lo[i] = (int8_t)(w[i] & 15);
    }
}

static et_status execute_split(const char *opname, dnnl_primitive_t prim, int n, const int *argid,
                               const dnnl_memory_desc_t *mds, void *const *ptrs, int wi, int64_t m,
                               int yi, int64_t ny)
{
    int8_t *hi = et_aligned_alloc((size_t)(m > 0 ? m : 1));
    int8_t *lo = et_aligned_alloc((size_t)(m > 0 ? m : 1));
    int32_t *ylo = et_aligned_alloc((size_t)(ny > 0 ? ny : 1) * sizeof(int32_t));
    et_status st = ET_OK;
    if (!hi || !lo || !ylo) {
        st = et_error(ET_ERR_NOMEM, "onednn %s: cannot allocate the int8 nibble split buffers "
                      "(%lld + %lld bytes)", opname, (long long)(2 * m), (long long)(4 * ny));
        goto out;
    }
    split_nibbles(ptrs[wi], m, hi, lo);
    void *q[4];
    for (int i = 0; i < n; i++) q[i] = ptrs[i];
    q[wi] = hi;
    if ((st = execute(opname, prim, n, argid, mds, q)) != ET_OK) goto out;
    q[wi] = lo;
    q[yi] = ylo;
    if ((st = execute(opname, prim, n, argid, mds, q)) != ET_OK) goto out;
    int32_t *y = ptrs[yi];
    /* wrap-around int32 arithmetic, as the int32 accumulator of a VNNI run */
#pragma omp parallel for schedule(static) if (ny > 65536 && !omp_in_parallel())
    for (int64_t i = 0; i < ny; i++) y[i] = (int32_t)((uint32_t)y[i] * 16u + (uint32_t)ylo[i]);
out:
    et_aligned_free(hi);
    et_aligned_free(lo);
    et_aligned_free(ylo);
    return st;
}

/* Scratch buffers, kept between calls and grown as needed (allocating them
 * fresh costs page faults comparable to the conv itself); used under
 * cache_mu. 0-4: the int8 conv; 5-7: the f32 conv's src, weights, dst in
 * oneDNN's layouts. */
static struct { void *p; size_t n; } scratch[8];

static void *scratch_get(int i, size_t bytes, const char *what, et_status *st)
{
    if (scratch[i].n >= bytes && scratch[i].p) return scratch[i].p;
    et_aligned_free(scratch[i].p);
    scratch[i].p = et_aligned_alloc(bytes ? bytes : 1);
    scratch[i].n = scratch[i].p ? bytes : 0;
    if (!scratch[i].p)
        *st = et_error(ET_ERR_NOMEM, "onednn conv2d: cannot allocate the %s buffer (%zu bytes)",
                       what, bytes);
    return scratch[i].p;
}

/* ---- f32 conv on oneDNN's own layouts ---------------------------------------
 *
 * Why: on plain nchw / oihw layouts oneDNN 2.6 has only its slower kernels
 * for AVX2 (gemm-based or nchw jit), and the backward convolutions of
 * conv2d.c (dw: a conv with the batch as channels and a kernel of the
 * output's size; dx: a stride-1 conv of the dilated grad) are the shapes
 * they handle worst (profile of a ResNet-18 step: dw at 38 GFLOP/s, dx 59).
 * On nhwc activations with the weight layout left to oneDNN (format_tag_any)
 * it runs its AVX2 jit kernels; the operands are reordered into those
 * layouts and the result back to nchw by oneDNN's own (jit) reorder
 * primitives, cached with the conv. Leaving every layout to oneDNN ("any":
 * blocked nChw8c) measured slower than nhwc on a ResNet-18 step (the
 * reorders of the activations cost more); benchmarks/README.md has the
 * before/after profile. Layout mode, read once from ET_ONEDNN_F32_LAYOUT
 * (for before/after benchmarks): "nhwc" (the default), "any", or "plain"
 * (the plain-layout path of onednn_conv2d). */

enum { F32_PLAIN, F32_ANY, F32_NHWC };

/* Kernels with more taps than this (7x7) stay on the plain path: they are
 * conv2d.c's weight-gradient convs, whose kernel is the output's size. The
 * nhwc jit kernel sums their N*OH*OW products in one running accumulator:
 * measured 6e-6 relative error on LeNet's dw vs 4e-7 on the plain (gemm)
 * path, enough to flip max-pool near-ties on MNIST's flat background and
 * break the LeNet training parity test (tests/test_training_parity.py). */
#define F32_NHWC_MAX_TAPS 49

static int f32_layout(void)
{
    static _Atomic int mode = -1;
    int m = mode;
    if (m < 0) {
        const char *e = getenv("ET_ONEDNN_F32_LAYOUT");
        m = e && !strcmp(e, "any") ? F32_ANY : e && !strcmp(e, "plain") ? F32_PLAIN : F32_NHWC;
        mode = m;
    }
    return m;
}

static et_status onednn_conv2d_f32_blocked(const et_conv2d_args *p)
{
    const char *opname = "conv2d";
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], Cg = p->w.shape[1], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int has_bias = p->bias.data != NULL;
    const int mode = f32_layout();
    et_status st = ET_OK;
    pthread_mutex_lock(&cache_mu);   /* released at done: */

    dnnl_memory_desc_t md[4];   // plain: src (N,C,H,W), weights (OC,C/G,KH,KW) | (G,OC/G,C/G,KH,KW), dst, bias
    dnnl_dims_t xd = {N, C, H, W}, yd = {N, OC, OH, OW}, bd = {OC};
    dnnl_dims_t wd1 = {OC, Cg, KH, KW}, wdg = {G, OC / G, Cg, KH, KW};
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[0], 4, xd, dnnl_f32, dnnl_nchw));
    if (G == 1) DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[1], 4, wd1, dnnl_f32, dnnl_oihw));
    else DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[1], 5, wdg, dnnl_f32, dnnl_goihw));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[2], 4, yd, dnnl_f32, dnnl_nchw));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[3], 1, bd, dnnl_f32, dnnl_x));

    cache_key key;
    memset(&key, 0, sizeof key);
    key.op = ET_OP_CONV2D;
    key.dtype = ET_F32;
    int64_t vals[] = {N, C, H, W, OC, Cg, KH, KW, OH, OW, G, has_bias,
                      p->stride[0], p->stride[1], p->dilation[0], p->dilation[1],
                      p->pad_lo[0], p->pad_lo[1], p->pad_hi[0], p->pad_hi[1],
                      ET_F32, ET_F32, mode, 0x424c4b44 /* "BLKD": this path */};
    memcpy(key.v, vals, sizeof vals);

    cache_entry *e = cache_find(&key);
    if (!e) {
        cache_entry ne;
        memset(&ne, 0, sizeof ne);
        const dnnl_format_tag_t act = mode == F32_NHWC ? dnnl_nhwc : dnnl_format_tag_any;
        dnnl_memory_desc_t a[3];   // the layouts offered to oneDNN
        DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&a[0], 4, xd, dnnl_f32, act));
        if (G == 1) DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&a[1], 4, wd1, dnnl_f32, dnnl_format_tag_any));
        else DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&a[1], 5, wdg, dnnl_f32, dnnl_format_tag_any));
        DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&a[2], 4, yd, dnnl_f32, act));
        dnnl_convolution_desc_t cd;
        dnnl_dims_t strides = {p->stride[0], p->stride[1]};
        dnnl_dims_t dil = {p->dilation[0] - 1, p->dilation[1] - 1};   /* oneDNN: 0 = dense */
        dnnl_dims_t pl = {p->pad_lo[0], p->pad_lo[1]}, pr = {p->pad_hi[0], p->pad_hi[1]};
        DNNL_TRY("dnnl_dilated_convolution_forward_desc_init",
                 dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                     dnnl_convolution_direct, &a[0], &a[1], has_bias ? &md[3] : NULL, &a[2],
                     strides, dil, pl, pr));
        dnnl_primitive_desc_t pd = NULL;
        dnnl_status_t s0 = dnnl_primitive_desc_create(&pd, &cd, NULL, engine, NULL);
        if (s0 == dnnl_success) {
            const dnnl_query_t q[3] = {dnnl_query_src_md, dnnl_query_weights_md, dnnl_query_dst_md};
            for (int i = 0; i < 3; i++) ne.blk_md[i] = *dnnl_primitive_desc_query_md(pd, q[i], 0);
            s0 = dnnl_primitive_create(&ne.prim, pd);
            dnnl_primitive_desc_destroy(pd);
        }
        /* reorders: plain src / weights -> chosen; chosen dst -> plain */
        for (int i = 0; i < 3 && s0 == dnnl_success; i++) {
            if (dnnl_memory_desc_equal(&ne.blk_md[i], &md[i])) continue;
            dnnl_primitive_desc_t rpd = NULL;
            s0 = i < 2 ? dnnl_reorder_primitive_desc_create(&rpd, &md[i], engine, &ne.blk_md[i], engine, NULL)
                       : dnnl_reorder_primitive_desc_create(&rpd, &ne.blk_md[i], engine, &md[i], engine, NULL);
            if (s0 == dnnl_success) s0 = dnnl_primitive_create(&ne.reo[i], rpd);
            if (rpd) dnnl_primitive_desc_destroy(rpd);
        }
        if (s0 != dnnl_success) {
            if (ne.prim) entry_destroy(&ne);
            else for (int i = 0; i < 3; i++) if (ne.reo[i]) dnnl_primitive_destroy(ne.reo[i]);
            st = et_error(ET_ERR_BACKEND, "onednn conv2d: building the f32 convolution failed (%s) "
                          "for input (%lld, %lld, %lld, %lld), weight (%lld, %lld, %lld, %lld)",
                          dnnl_status2str(s0), (long long)N, (long long)C, (long long)H, (long long)W,
                          (long long)OC, (long long)Cg, (long long)KH, (long long)KW);
            goto done;
        }
        if ((st = cache_insert_entry(&key, ne, &e)) != ET_OK) goto done;
    }
    {
        /* operands in the chosen layouts: the user's buffers where no reorder is needed */
        void *user[3] = {p->x.data, p->w.data, p->y.data};
        void *blk[3];
        static const char *what[3] = {"blocked source", "blocked weights", "blocked result"};
        for (int i = 0; i < 3; i++) {
            blk[i] = user[i];
            if (!e->reo[i]) continue;
            blk[i] = scratch_get(5 + i, dnnl_memory_desc_get_size(&e->blk_md[i]), what[i], &st);
            if (!blk[i]) goto done;
        }
        int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        for (int i = 0; i < 2; i++) {
            if (!e->reo[i]) continue;
            dnnl_memory_desc_t rmds[2] = {md[i], e->blk_md[i]};
            void *rp[2] = {user[i], blk[i]};
            if ((st = execute(opname, e->reo[i], 2, rids, rmds, rp)) != ET_OK) goto done;
        }
        int ids[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
        dnnl_memory_desc_t cmds[4] = {e->blk_md[0], e->blk_md[1], e->blk_md[2], md[3]};
        void *cp[4] = {blk[0], blk[1], blk[2], p->bias.data};
        if ((st = execute(opname, e->prim, has_bias ? 4 : 3, ids, cmds, cp)) != ET_OK) goto done;
        if (e->reo[2]) {
            dnnl_memory_desc_t rmds[2] = {e->blk_md[2], md[2]};
            void *rp[2] = {blk[2], user[2]};
            st = execute(opname, e->reo[2], 2, rids, rmds, rp);
        }
    }
done:
    pthread_mutex_unlock(&cache_mu);
    return st;
}
static et_status onednn_conv2d_widened(const et_conv2d_args *p)
{
    et_conv2d_args q = *p;
    float *fx = NULL, *fw = NULL;
    et_status st = et_lowp_to_f32("onednn conv2d", &p->x, &fx);
    if (st == ET_OK) st = et_lowp_to_f32("onednn conv2d", &p->w, &fw);
    if (st == ET_OK) {
        q.x.data = fx; q.x.dtype = ET_F32;
        q.w.data = fw; q.w.dtype = ET_F32;
        st = onednn_conv2d(&q);
    }
    et_aligned_free(fx);
    et_aligned_free(fw);
    return st;
}

static et_status onednn_matmul_widened(const et_matmul_args *p)
{
    et_matmul_args q = *p;
    float *fa = NULL, *fb = NULL;
    et_status st = et_lowp_to_f32("onednn matmul", &p->a, &fa);
    if (st == ET_OK) st = et_lowp_to_f32("onednn matmul", &p->b, &fb);
    if (st == ET_OK) {
        q.a.data = fa; q.a.dtype = ET_F32;
        q.b.data = fb; q.b.dtype = ET_F32;
        st = onednn_matmul(&q);
    }
    et_aligned_free(fa);
    et_aligned_free(fb);
    return st;
}

static et_status onednn_conv2d(const et_conv2d_args *p)
{
    const char *opname = "conv2d";
    if (!et_onednn_available())
        return et_error(ET_ERR_BACKEND, "onednn conv2d: the CPU engine could not be created");
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], Cg = p->w.shape[1], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int has_bias = p->bias.data != NULL;
    if (p->x.dtype == ET_U8 || p->x.dtype == ET_S8) return onednn_conv2d_int8(p);
    if (widenable(p->x.dtype) && no_native[ET_OP_CONV2D][p->x.dtype]) return onednn_conv2d_widened(p);
    if (p->x.dtype == ET_F32 && p->w.dtype == ET_F32 && p->y.dtype == ET_F32 &&
        f32_layout() != F32_PLAIN && KH * KW <= F32_NHWC_MAX_TAPS)
        return onednn_conv2d_f32_blocked(p);
    const dnnl_data_type_t dt = dnnl_dt(p->x.dtype), wdt = dnnl_dt(p->w.dtype),
                           ydt = dnnl_dt(p->y.dtype);
    int widen = 0;
    et_status st = ET_OK;
    pthread_mutex_lock(&cache_mu);   /* released at done: */

    dnnl_memory_desc_t md[4];   // src (N,C,H,W), weights (OC,C/G,KH,KW) | (G,OC/G,C/G,KH,KW), dst, bias (OC)
    dnnl_dims_t xd = {N, C, H, W}, yd = {N, OC, OH, OW}, bd = {OC};
    dnnl_dims_t wd1 = {OC, Cg, KH, KW}, wdg = {G, OC / G, Cg, KH, KW};
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[0], 4, xd, dt, dnnl_nchw));
    if (G == 1) DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[1], 4, wd1, wdt, dnnl_oihw));
    else DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[1], 5, wdg, wdt, dnnl_goihw));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[2], 4, yd, ydt, dnnl_nchw));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[3], 1, bd, dnnl_f32, dnnl_x));

    cache_key key;
    memset(&key, 0, sizeof key);
    key.op = ET_OP_CONV2D;
    key.dtype = p->x.dtype;
    int64_t vals[] = {N, C, H, W, OC, Cg, KH, KW, OH, OW, G, has_bias,
                      p->stride[0], p->stride[1], p->dilation[0], p->dilation[1],
                      p->pad_lo[0], p->pad_lo[1], p->pad_hi[0], p->pad_hi[1],
                      p->w.dtype, p->y.dtype};
    memcpy(key.v, vals, sizeof vals);

    dnnl_primitive_t prim = cache_lookup(&key);
    if (!prim) {
        dnnl_convolution_desc_t cd;
        dnnl_dims_t strides = {p->stride[0], p->stride[1]};
        dnnl_dims_t dil = {p->dilation[0] - 1, p->dilation[1] - 1};   /* oneDNN: 0 = dense */
        dnnl_dims_t pl = {p->pad_lo[0], p->pad_lo[1]}, pr = {p->pad_hi[0], p->pad_hi[1]};
        DNNL_TRY("dnnl_dilated_convolution_forward_desc_init",
                 dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                     dnnl_convolution_direct, &md[0], &md[1], has_bias ? &md[3] : NULL, &md[2],
                     strides, dil, pl, pr));
        dnnl_status_t why = dnnl_success;
        st = build(opname, &cd, &prim, &why);
        if (st != ET_OK && why == dnnl_unimplemented && widenable(p->x.dtype)) {
            no_native[ET_OP_CONV2D][p->x.dtype] = 1;   /* no bf16/f16 conv here: widen */
            widen = 1;
            goto done;
        }
        if (st == ET_OK) st = cache_insert(&key, prim);
        if (st != ET_OK) goto done;
    }
    {
        int ids[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
        void *ptrs[4] = {p->x.data, p->w.data, p->y.data, p->bias.data};
        st = execute(opname, prim, has_bias ? 4 : 3, ids, md, ptrs);
    }
done:
    pthread_mutex_unlock(&cache_mu);
    if (widen) {
        et_error_clear();
        return onednn_conv2d_widened(p);
    }
    return st;
}

/* An s8 source without VNNI: oneDNN's kernel would shift it by +128 itself
 * (so 7-bit gradients in [-63, 63] become up to 191 and a full-range weight
 * operand needs two runs). Shifting by o = -min(a) instead keeps a [-63, 63]
 * source below 127 (one exact run); the shift is taken out afterwards:
 * y[m, n] = (a + o) . b[:, n] - o * sum_k b[k, n] (int32 wrap-around, as an
 * int32 accumulator). A source with min >= 0 is used as u8 as it is. */
static et_status onednn_matmul_shifted(const et_matmul_args *p)
{
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    const int8_t *a = p->a.data;   // (M, K) or, transposed, (K, M)
    int8_t mn = 127;
#pragma omp simd reduction(min:mn)
    for (int64_t i = 0; i < M * K; i++) mn = a[i] < mn ? a[i] : mn;
    et_matmul_args q = *p;
    q.a.dtype = ET_U8;
    if (M * K == 0 || mn >= 0) return onednn_matmul(&q);
    const int o = -mn;
    uint8_t *au = et_aligned_alloc((size_t)(M * K));
    uint32_t *comp = malloc((size_t)N * sizeof *comp);
    et_status st = ET_OK;
    if (!au || !comp) {
        st = et_error(ET_ERR_NOMEM, "onednn matmul: cannot allocate the shifted source (%lld bytes)",
                      (long long)(M * K));
        goto out;
    }
    for (int64_t i = 0; i < M * K; i++) au[i] = (uint8_t)(a[i] + o);
    const int8_t *b = p->b.data;   // (K, N) or, transposed, (N, K)
    for (int64_t n = 0; n < N; n++) {
        int64_t sum = 0;
        if (p->trans_b) for (int64_t k = 0; k < K; k++) sum += b[n * K + k];
        else for (int64_t k = 0; k < K; k++) sum += b[k * N + n];
        comp[n] = (uint32_t)((int64_t)o * sum);
    }
    q.a.data = au;
    if ((st = onednn_matmul(&q)) != ET_OK) goto out;
    int32_t *y = p->y.data;   // (M, N)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) y[m * N + n] = (int32_t)((uint32_t)y[m * N + n] - comp[n]);
out:
    et_aligned_free(au);
    free(comp);
    return st;
}

static et_status onednn_matmul(const et_matmul_args *p)
{
    const char *opname = "matmul";
    if (!et_onednn_available())
        return et_error(ET_ERR_BACKEND, "onednn matmul: the CPU engine could not be created");
    if (p->a.dtype == ET_S8 && !have_vnni()) return onednn_matmul_shifted(p);
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    const int has_bias = p->bias.data != NULL;
    if (widenable(p->a.dtype) && no_native[ET_OP_MATMUL][p->a.dtype]) return onednn_matmul_widened(p);
    const dnnl_data_type_t dt = dnnl_dt(p->a.dtype), wdt = dnnl_dt(p->b.dtype),
                           ydt = dnnl_dt(p->y.dtype);
    int widen = 0;
    et_status st = ET_OK;
    pthread_mutex_lock(&cache_mu);   /* released at done: */

    /* a stored (M,K) or, transposed, (K,M): logical (M,K) with strides. */
    dnnl_memory_desc_t md[4];   // src, weights, dst, bias (1,N)
    dnnl_dims_t ad = {M, K}, bd = {K, N}, yd = {M, N}, biasd = {1, N};
    dnnl_dims_t as = {p->trans_a ? 1 : K, p->trans_a ? M : 1};
    dnnl_dims_t bs = {p->trans_b ? 1 : N, p->trans_b ? K : 1};
    dnnl_dims_t ys = {N, 1};
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_strides(&md[0], 2, ad, dt, as));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_strides(&md[1], 2, bd, wdt, bs));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_strides(&md[2], 2, yd, ydt, ys));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_strides(&md[3], 2, biasd, dnnl_f32, ys));

    cache_key key;
    memset(&key, 0, sizeof key);
    key.op = ET_OP_MATMUL;
    key.dtype = p->a.dtype;
    int64_t vals[] = {M, N, K, p->trans_a, p->trans_b, has_bias, p->b.dtype, p->y.dtype};
    memcpy(key.v, vals, sizeof vals);

    dnnl_primitive_t prim = cache_lookup(&key);
    if (!prim) {
        dnnl_matmul_desc_t d;
        DNNL_TRY("dnnl_matmul_desc_init",
                 dnnl_matmul_desc_init(&d, &md[0], &md[1], has_bias ? &md[3] : NULL, &md[2]));
        dnnl_status_t why = dnnl_success;
        st = build(opname, &d, &prim, &why);
        if (st != ET_OK && why == dnnl_unimplemented && widenable(p->a.dtype)) {
            no_native[ET_OP_MATMUL][p->a.dtype] = 1;   /* no bf16/f16 matmul here: widen */
            widen = 1;
            goto done;
        }
        if (st == ET_OK) st = cache_insert(&key, prim);
        if (st != ET_OK) goto done;
    }
    {
        int ids[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
        void *ptrs[4] = {p->a.data, p->b.data, p->y.data, p->bias.data};
        const int int8 = p->a.dtype == ET_U8 || p->a.dtype == ET_S8;
        if (int8 && !have_vnni() &&   /* here a is u8 (s8 sources were shifted) */
            !one_run_exact(u8_max(p->a.data, M * K), s8_absmax(p->b.data, K * N)))
            st = execute_split(opname, prim, 3, ids, md, ptrs, 1, K * N, 2, M * N);
        else
            st = execute(opname, prim, has_bias ? 4 : 3, ids, md, ptrs);
    }
done:
    pthread_mutex_unlock(&cache_mu);
    if (widen) {
        et_error_clear();
        return onednn_matmul_widened(p);
    }
    return st;
}

/* ---- int8 convolution: nhwc + blocked weights -------------------------- */

/* Why this path: on plain nchw / oihw layouts oneDNN 2.6 offers only its
 * reference int8 kernel (measured: 888 ms vs 8 ms f32 for a 2x64x28x28 3x3
 * conv). Its jit int8 kernel (jit_uni_int8:avx2 here) wants an nhwc u8
 * source, weights in a blocked layout of its choosing and an nhwc s32
 * destination; then it runs 2.5-3.5x faster than the f32 conv (measured,
 * N=128 3x3 convs of 64-256 channels, 2 threads). So the operands are moved
 * into those layouts on every call (bytes for x and w, the s32 result back
 * to nchw) and the weight reorder primitive is cached with the conv.
 *
 * Exactness. Only u8 sources are given to oneDNN: for an s8 source its
 * non-VNNI kernels halve the weights ("scale_adjust" 0.5, measured: errors
 * up to 3.5e3). An s8 x is shifted to u8 by o = -min(x) (0 when x >= 0) and
 * the shift is taken out afterwards: conv(x + o, w) - o * sum(w[oc]), exact
 * when the padding holds the value o too, so with padding and o != 0 the
 * source is materialized padded and the primitive runs with zero padding.
 * Then the int16 pair sums of vpmaddubsw stay exact when 2 * max(x + o) *
 * max|w| <= 32767 (e.g. 7-bit activations); otherwise the weights are split
 * into nibbles (two runs, see execute_split's comment).
 *
 * Scratch buffers 0-4 hold the nhwc source, blocked weights and nhwc s32
 * results (see scratch_get). */

static et_status onednn_conv2d_int8(const et_conv2d_args *p)
{
    const char *opname = "conv2d";
    if (!et_onednn_available())
        return et_error(ET_ERR_BACKEND, "onednn conv2d: the CPU engine could not be created");
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], Cg = p->w.shape[1], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int64_t nx = N * C * H * W, nw = OC * Cg * KH * KW, ny = N * OC * OH * OW;
    const int8_t *w = p->w.data;                   // (OC, C/G, KH, KW) s8
    int32_t *y = p->y.data;                        // (N, OC, OH, OW) s32

    /* Ranges: the source offset o and whether one run is exact. */
    /* u8 source: umax stays -1 here; its bound comes from the layout pass
     * below (no separate scan of x: the caller's quantizer already bounded it) */
    int o = 0, umax = -1;
    if (p->x.dtype != ET_U8) {
        const int8_t *a = p->x.data;
        int8_t mx = -128, mn = 127;
#pragma omp parallel for simd reduction(max:mx) reduction(min:mn) if (nx > 262144 && !omp_in_parallel())
        for (int64_t i = 0; i < nx; i++) { mx = a[i] > mx ? a[i] : mx; mn = a[i] < mn ? a[i] : mn; }
        if (nx == 0) mx = mn = 0;
        o = mn < 0 ? -mn : 0;
        umax = mx + o;
    }
    int single = 0;   /* set once umax is known, below */
    const int padded = p->pad_lo[0] || p->pad_lo[1] || p->pad_hi[0] || p->pad_hi[1];
    const int mat = o != 0 && padded;   /* materialize the padding (holding o) */
    const int64_t Hs = mat ? H + p->pad_lo[0] + p->pad_hi[0] : H;
    const int64_t Ws = mat ? W + p->pad_lo[1] + p->pad_hi[1] : W;
    const int64_t pt = mat ? 0 : p->pad_lo[0], pl = mat ? 0 : p->pad_lo[1];
    const int64_t pb = mat ? 0 : p->pad_hi[0], pr = mat ? 0 : p->pad_hi[1];

    et_status st = ET_OK;
    pthread_mutex_lock(&cache_mu);   /* released at done: */

    dnnl_memory_desc_t md[4];   // src nhwc u8, weights (chosen), dst nhwc s32, user weights s8
    dnnl_dims_t xd = {N, C, Hs, Ws}, yd = {N, OC, OH, OW};
    dnnl_dims_t wd1 = {OC, Cg, KH, KW}, wdg = {G, OC / G, Cg, KH, KW};
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[0], 4, xd, dnnl_u8, dnnl_nhwc));
    DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[2], 4, yd, dnnl_s32, dnnl_nhwc));
    if (G == 1) DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[3], 4, wd1, dnnl_s8, dnnl_oihw));
    else DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&md[3], 5, wdg, dnnl_s8, dnnl_goihw));

    cache_key key;
    memset(&key, 0, sizeof key);
    key.op = ET_OP_CONV2D;
    key.dtype = ET_U8;
    int64_t vals[] = {N, C, Hs, Ws, OC, Cg, KH, KW, OH, OW, G, 0,
                      p->stride[0], p->stride[1], p->dilation[0], p->dilation[1],
                      pt, pl, pb, pr, ET_S8, ET_S32, 0, 0x4e485743 /* "NHWC": this path */};
    memcpy(key.v, vals, sizeof vals);

    cache_entry *e = cache_find(&key);
    if (!e) {
        cache_entry ne;
        memset(&ne, 0, sizeof ne);
        dnnl_primitive_desc_t pd = NULL, rpd = NULL;
        dnnl_memory_desc_t wany;
        if (G == 1) DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&wany, 4, wd1, dnnl_s8, dnnl_format_tag_any));
        else DNNL_TRY("memory desc", dnnl_memory_desc_init_by_tag(&wany, 5, wdg, dnnl_s8, dnnl_format_tag_any));
        dnnl_convolution_desc_t cd;
        dnnl_dims_t strides = {p->stride[0], p->stride[1]};
        dnnl_dims_t dil = {p->dilation[0] - 1, p->dilation[1] - 1};   /* oneDNN: 0 = dense */
        dnnl_dims_t padl = {pt, pl}, padr = {pb, pr};
        DNNL_TRY("dnnl_dilated_convolution_forward_desc_init",
                 dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                     dnnl_convolution_direct, &md[0], &wany, NULL, &md[2], strides, dil, padl, padr));
        dnnl_status_t s0 = dnnl_primitive_desc_create(&pd, &cd, NULL, engine, NULL);
        if (s0 == dnnl_success) {
            const char *impl = "";
            dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
            ne.ref_impl = strncmp(impl, "ref", 3) == 0;
            ne.aux_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            s0 = dnnl_primitive_create(&ne.prim, pd);
        }
        if (s0 == dnnl_success) s0 = dnnl_reorder_primitive_desc_create(&rpd, &md[3], engine, &ne.aux_md, engine, NULL);
        if (s0 == dnnl_success) s0 = dnnl_primitive_create(&ne.aux, rpd);
        if (pd) dnnl_primitive_desc_destroy(pd);
        if (rpd) dnnl_primitive_desc_destroy(rpd);
        if (s0 != dnnl_success) {
            if (ne.prim) dnnl_primitive_destroy(ne.prim);
            if (ne.aux) dnnl_primitive_destroy(ne.aux);
            st = et_error(ET_ERR_BACKEND, "onednn conv2d: building the int8 nhwc convolution failed (%s) "
                          "for input (%lld, %lld, %lld, %lld), weight (%lld, %lld, %lld, %lld)",
                          dnnl_status2str(s0), (long long)N, (long long)C, (long long)H, (long long)W,
                          (long long)OC, (long long)Cg, (long long)KH, (long long)KW);
            goto done;
        }
        if ((st = cache_insert_entry(&key, ne, &e)) != ET_OK) goto done;
    }
    if (e->ref_impl) {
        /* oneDNN has only its slow reference kernel for this shape: the ref
         * backend's im2col + integer gemm is exact and much faster. */
        pthread_mutex_unlock(&cache_mu);
        return et_backend_ref.conv2d(p);
    }
    md[1] = e->aux_md;
    {
        const size_t wbytes = dnnl_memory_desc_get_size(&e->aux_md);
        uint8_t *xs = scratch_get(0, (size_t)(N * Hs * Ws * C), "nhwc source", &st);
        if (!xs) goto done;

        /* x (N, C, H, W) -> xs (N, Hs, Ws, C) u8, + o, padding o when mat;
         * orv: the OR of the source bytes, a bound on a u8 source's maximum
         * (orv < 128 => max <= 127), got in the same pass */
        const uint8_t *xb = p->x.data;
        const uint8_t ob = (uint8_t)o;
        const int64_t PT = mat ? p->pad_lo[0] : 0, PL = mat ? p->pad_lo[1] : 0;
        unsigned orv = 0;
#pragma omp parallel for collapse(2) schedule(static) reduction(|:orv) if (nx > 65536 && !omp_in_parallel())
        for (int64_t n = 0; n < N; n++)
            for (int64_t h = 0; h < Hs; h++) {
                uint8_t *dst = xs + (n * Hs + h) * Ws * C;   // (Ws, C)
                const int64_t ih = h - PT;
                if (ih < 0 || ih >= H) { memset(dst, ob, (size_t)(Ws * C)); continue; }
                for (int64_t ww = 0; ww < Ws; ww++) {
                    const int64_t iw = ww - PL;
                    uint8_t *d = dst + ww * C;
                    if (iw < 0 || iw >= W) { memset(d, ob, (size_t)C); continue; }
                    const uint8_t *src = xb + (n * C * H + ih) * W + iw;   // stride H*W over c
                    for (int64_t c = 0; c < C; c++) {
                        const uint8_t v = src[c * H * W];
                        orv |= v;
                        d[c] = (uint8_t)(v + ob);
                    }
                }
            }
        /* a u8 source: a 7-bit one (every quantized activation by default)
         * needs no scan at all; else its exact maximum */
        if (umax < 0) umax = orv < 128 ? (int)orv : u8_max(p->x.data, nx);
        /* |w| <= 128: with 2 * umax * 128 <= 32767 (7-bit activations) one run is
         * exact whatever the weights, and their scan is skipped */
        single = one_run_exact(umax, 2 * umax * 128 <= 32767 ? 128 : s8_absmax(w, nw));
        int8_t *wb = scratch_get(1, wbytes, "blocked weights", &st);
        int32_t *yh = wb ? scratch_get(2, (size_t)ny * sizeof(int32_t), "nhwc result", &st) : NULL;
        int32_t *yl = yh && !single ? scratch_get(3, (size_t)ny * sizeof(int32_t), "nhwc result", &st) : NULL;
        int8_t *wsplit = yh && !single ? scratch_get(4, (size_t)(2 * nw), "weight nibbles", &st) : NULL;
        if (!yh || (!single && (!yl || !wsplit))) goto done;

        int rids[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
        dnnl_memory_desc_t rmds[2] = {md[3], e->aux_md};
        int ids[3] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST};
        if (single) {
            /* a prepacked weight (csrc/quant/wcache.h: w is a pinned cache
             * entry's s8 weight) keeps its blocked layout too: the reorder
             * runs once per weight and layout instead of on every call */
            const void *wcached = et_wcache_aux_get(w, &e->aux_md, sizeof e->aux_md);
            if (!wcached) {
                void *rp[2] = {(void *)w, wb};
                if ((st = execute(opname, e->aux, 2, rids, rmds, rp)) != ET_OK) goto done;
                et_wcache_aux_put(w, &e->aux_md, sizeof e->aux_md, wb, wbytes);   /* -1: not a cache entry */
            }
            void *cp[3] = {xs, wcached ? (void *)wcached : wb, yh};
            if ((st = execute(opname, e->prim, 3, ids, md, cp)) != ET_OK) goto done;
        } else {
            int8_t *hi = wsplit, *lo = wsplit + nw;
            split_nibbles(w, nw, hi, lo);
            void *rp[2] = {hi, wb};
            if ((st = execute(opname, e->aux, 2, rids, rmds, rp)) != ET_OK) goto done;
            void *cp[3] = {xs, wb, yh};
            if ((st = execute(opname, e->prim, 3, ids, md, cp)) != ET_OK) goto done;
            rp[0] = lo;
            if ((st = execute(opname, e->aux, 2, rids, rmds, rp)) != ET_OK) goto done;
            cp[2] = yl;
            if ((st = execute(opname, e->prim, 3, ids, md, cp)) != ET_OK) goto done;
        }

        /* y (N, OC, OH, OW) = [16 *] yh (N, OH, OW, OC) [+ yl] - o * sum(w[oc]),
         * in wrap-around int32 arithmetic like an int32 accumulator. */
        uint32_t *comp = malloc((size_t)(OC > 0 ? OC : 1) * sizeof *comp);
        if (!comp) {
            st = et_error(ET_ERR_NOMEM, "onednn conv2d: cannot allocate %lld compensation terms",
                          (long long)OC);
            goto done;
        }
        for (int64_t oc = 0; oc < OC; oc++) {
            int64_t sum = 0;
            const int8_t *wo = w + oc * Cg * KH * KW;
            if (o)   /* no shift (a u8 or non-negative source): nothing to take out */
                for (int64_t i = 0; i < Cg * KH * KW; i++) sum += wo[i];
            comp[oc] = (uint32_t)((int64_t)o * sum);
        }
        const int64_t OHW = OH * OW;
        /* Tiled transpose: a tile of JB output positions x all OC channels is
         * read contiguously (JB * OC * 4 bytes, <= 128 KiB: stays in L2) and
         * written as OC runs of JB contiguous s32. The untiled loop (per oc,
         * all j) read yh with a stride of OC * 4 bytes, touching every cache
         * line of yh once per channel (resnet18 stem: 64 passes over 3.2 MB). */
        const int64_t JB = 64, njb = (OHW + JB - 1) / JB;
#pragma omp parallel for collapse(2) schedule(static) if (ny > 65536 && !omp_in_parallel())
        for (int64_t n = 0; n < N; n++)
            for (int64_t jb = 0; jb < njb; jb++) {
                const int64_t j0 = jb * JB, j1 = j0 + JB < OHW ? j0 + JB : OHW;
                const int32_t *th = yh + n * OHW * OC, *tl = single ? NULL : yl + n * OHW * OC;
                for (int64_t oc = 0; oc < OC; oc++) {
                    int32_t *d = y + (n * OC + oc) * OHW;
                    const uint32_t cmp = comp[oc];
                    if (single)
                        for (int64_t j = j0; j < j1; j++)
                            d[j] = (int32_t)((uint32_t)th[j * OC + oc] - cmp);
                    else
                        for (int64_t j = j0; j < j1; j++)
                            d[j] = (int32_t)((uint32_t)th[j * OC + oc] * 16u +
                                             (uint32_t)tl[j * OC + oc] - cmp);
                }
            }
        free(comp);
    }
done:
    pthread_mutex_unlock(&cache_mu);
    return st;
}

const et_backend et_backend_onednn = {
    .name = "onednn",
    .supports = onednn_supports,
    .matmul = onednn_matmul,
    .conv2d = onednn_conv2d,
};
