/* backend.h - the accelerator backends: tables of FORWARD primitives.
 *
 * Why: an inference engine only runs forward operators. Everything heavy in
 * training (conv2d / linear forward, backward-data, backward-weight) is
 * re-expressed by ops/{conv2d,linear}.c as one of two forward primitives, matmul and
 * conv2d forward, and run by a backend chosen by name (ggml-backend style:
 * a backend is a table of function pointers, one file per backend):
 *   ref    - portable plain C, the exact oracle (ref.c)
 *   blas   - im2col + OpenBLAS sgemm (blas.c, when built)
 *   onednn - oneDNN 2.6 inference primitives with a bounded primitive cache
 *            (onednn.c, when built and its CPU engine can be created)
 *
 * The argument structs are plain values that carry the backend pointer, so
 * a queue job (queue/queue.h copies its argument bytes into the ring) is
 * self-contained: et_matmul_job / et_conv2d_job validate and dispatch.
 * The tensors are borrowed views (storage may be NULL): the submitter keeps
 * the memory alive until it has waited for the ticket.
 *
 * Dtypes (see csrc/BINDINGS.md). A primitive call is one of five operand
 * combinations, named by the dtype of its FIRST operand (matmul a, conv x):
 *   ET_F32 : f32  x f32  (+ f32 bias) -> f32
 *   ET_U8  : u8   x s8   (no bias)    -> s32   exact integer result, no scales
 *   ET_S8  : s8   x s8   (no bias)    -> s32   (the dequantize epilogue is the
 *                                              quantizer's, it adds the bias)
 *   ET_BF16: bf16 x bf16 (+ f32 bias) -> f32
 *   ET_F16 : f16  x f16  (+ f32 bias) -> f32
 * The tensors carry their dtypes; et_*_check enforces the combination.
 * A backend says what it runs itself through supports(op, dtype); a
 * combination it lacks runs on `ref` instead (et_backend_resolve: counted
 * per (backend, op, dtype), warned once by the Python layer).
 */
#ifndef ET_BACKEND_H
#define ET_BACKEND_H

#include <stdint.h>

#include "../core/status.h"
#include "../core/tensor.h"

typedef enum et_op { ET_OP_MATMUL = 0, ET_OP_CONV2D, ET_OP_COUNT } et_op;

const char *et_op_name(et_op op);   /* "matmul", "conv2d" */

struct et_backend;

/* y(M,N) = op(a)(M,K) . op(b)(K,N) + bias(N)
 * a: (M,K), or (K,M) when trans_a;  b: (K,N), or (N,K) when trans_b.
 * All contiguous row-major 2D; bias 1D (N) or bias.data == NULL. */
typedef struct et_matmul_args {
    const struct et_backend *backend;
    et_tensor a, b, bias, y;
    int trans_a, trans_b;
} et_matmul_args;

/* y = conv2d(x, w) + bias, PyTorch's cross-correlation, asymmetric padding.
 *   x (N, C, H, W), w (OC, C/G, KH, KW), bias (OC) or data NULL,
 *   y (N, OC, OH, OW), OH = (H + pad_lo[0] + pad_hi[0] - dil[0]*(KH-1) - 1)/stride[0] + 1
 * All contiguous. Index 0 = height, 1 = width. */
typedef struct et_conv2d_args {
    const struct et_backend *backend;
    et_tensor x, w, bias, y;
    int64_t stride[2], dilation[2], pad_lo[2], pad_hi[2], groups;
} et_conv2d_args;

typedef struct et_backend {
    const char *name;
    int (*supports)(et_op op, et_dtype dtype);
    et_status (*matmul)(const et_matmul_args *args);   /* args already validated */
    et_status (*conv2d)(const et_conv2d_args *args);   /* args already validated */
} et_backend;

/* --- registry.c ----------------------------------------------------------- */

/* The backend called `name`; NULL with an ET_ERR_VALUE message listing the
 * available names when it is unknown or not built here. */
const et_backend *et_backend_find(const char *name);
int et_backend_count(void);
const et_backend *et_backend_at(int i);   /* 0 = ref, then blas, onednn */

/* Shape/dtype/backend checks of a primitive call (ET_ERR_VALUE / TYPE /
 * UNSUPPORTED with a message naming `op` and the shapes). Callers run them
 * before submitting so that errors surface before anything is queued; the
 * jobs run them again (cheap) so a job is never trusted blindly. */
et_status et_matmul_check(const char *op, const et_matmul_args *a);
et_status et_conv2d_check(const char *op, const et_conv2d_args *a);

/* Output size of one spatial dim of a conv; <= 0 when the kernel does not
 * fit in the padded input. */
int64_t et_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo,
                         int64_t pad_hi, int64_t dilation);

/* Queue jobs (queue/queue.h et_job_fn): arg is an et_matmul_args /
 * et_conv2d_args holding its backend; they validate, then dispatch. */
et_status et_matmul_job(void *arg);
et_status et_conv2d_job(void *arg);

/* Synchronous dispatch (validate + run on this thread): used by the jobs. */
et_status et_matmul_run(const et_matmul_args *a);
et_status et_conv2d_run(const et_conv2d_args *a);

/* The operand combination named by the first operand's dtype `src`: sets
 * the second operand's and the output's dtypes and whether an f32 bias is
 * allowed; 0 when `src` starts no combination. */
int et_combo(et_dtype src, et_dtype *wei, et_dtype *out, int *bias_ok);
/* "f32", "u8", "s8", "bf16", "f16", ... (fallback keys) */
const char *et_dtype_short(et_dtype dt);

/* The backend that actually runs (op, dtype) asked of b: b itself when
 * b->supports(op, dtype), else `ref`; each fallback is counted. Called once
 * per dispatched job (et_matmul_run / et_conv2d_run). */
const et_backend *et_backend_resolve(const et_backend *b, et_op op, et_dtype dt);

/* Fallback bookkeeping, per (backend, op, dtype): how many jobs ran on ref
 * instead, and a "warned" flag that the Python layer sets when it has
 * turned the first fallback into a warnings.warn (warn once). */
typedef struct et_fallback_stat {
    const char *backend;
    et_op op;
    et_dtype dtype;
    int64_t count;
    int warned;
} et_fallback_stat;
/* Copies up to `max` entries with count > 0 into out; returns how many exist. */
int et_fallback_stats(et_fallback_stat *out, int max);
/* Marks up to `max` not-yet-warned entries (count > 0) as warned and copies
 * them into out: each combination is returned by exactly one call. */
int et_fallback_take_unwarned(et_fallback_stat *out, int max);
void et_fallback_reset(void);   /* zeroes counts and warned flags */

/* Exact conversion of a bf16 / f16 tensor into a new 64-byte-aligned f32
 * buffer (free with et_aligned_free); f32 is copied. Every bf16 and f16
 * value (subnormals, +-Inf, NaN) is exactly representable in f32. */
et_status et_lowp_to_f32(const char *op, const et_tensor *t, float **out);
float et_f16_to_f32(uint16_t h);
static inline float et_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* "backend 'x': <op> with dtype <d> is not supported" */
et_status et_backend_unsupported(const et_backend *b, et_op op, et_dtype dt);

/* --- the backends ------------------------------------------------------------ */

extern const et_backend et_backend_ref;
#ifdef ET_HAVE_BLAS
extern const et_backend et_backend_blas;
#endif
#ifdef ET_HAVE_ONEDNN
extern const et_backend et_backend_onednn;
/* 1 when the oneDNN CPU engine and stream could be created (once). */
int et_onednn_available(void);
#endif

/* oneDNN primitive cache: a bounded LRU keyed by the full primitive
 * descriptor (it stands in for an inference engine's bounded set of built
 * engines / execution contexts). Defined in onednn.c when built; the stubs
 * in registry.c report zeros otherwise. */
typedef struct et_cache_stats {
    int64_t hits, misses, evictions, size, capacity;
} et_cache_stats;

et_status et_onednn_cache_stats(et_cache_stats *out);
et_status et_onednn_set_cache_capacity(int64_t capacity);   /* >= 1, evicts LRU at once */
et_status et_onednn_clear_cache(void);                      /* also zeroes counters */

#endif
