/* registry.c - backend lookup, argument checks and the queue jobs.
 *
 * Why: the ops (ops/{conv2d,linear}.c) and the Python binding refer to backends by name;
 * the queue worker runs et_matmul_job / et_conv2d_job, which re-validate the
 * (self-contained) argument struct and call the backend's function. Checks
 * live here, once, so every backend can assume well-formed arguments.
 */
#include "backend.h"
#include "../quant/convert.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

const char *et_op_name(et_op op)
{
    switch (op) {
    case ET_OP_MATMUL: return "matmul";
    case ET_OP_CONV2D: return "conv2d";
    default: return "unknown op";
    }
}

/* ref first, then the optional ones when built (and usable). */
static const et_backend *const all_backends[] = {
    &et_backend_ref,
#ifdef ET_HAVE_BLAS
    &et_backend_blas,
#endif
#ifdef ET_HAVE_ONEDNN
    &et_backend_onednn,
#endif
};
#define N_ALL ((int)(sizeof all_backends / sizeof all_backends[0]))

static int usable(const et_backend *b)
{
#ifdef ET_HAVE_ONEDNN
    if (b == &et_backend_onednn) return et_onednn_available();
#endif
    (void)b;
    return 1;
}

int et_backend_count(void)
{
    int n = 0;
    for (int i = 0; i < N_ALL; i++) n += usable(all_backends[i]);
    return n;
}

const et_backend *et_backend_at(int i)
{
    for (int j = 0; j < N_ALL; j++) {
        if (!usable(all_backends[j])) continue;
        if (i-- == 0) return all_backends[j];
    }
    return NULL;
}

const et_backend *et_backend_find(const char *name)
{
    char avail[256] = "";
    size_t off = 0;
    for (int i = 0; i < et_backend_count(); i++) {
        const et_backend *b = et_backend_at(i);
        if (name && strcmp(b->name, name) == 0) return b;
        off += (size_t)snprintf(avail + off, sizeof avail - off, "%s'%s'", i ? ", " : "", b->name);
        if (off >= sizeof avail) off = sizeof avail - 1;
    }
    et_error(ET_ERR_VALUE, "unknown backend '%s' (available here: %s)",
             name ? name : "(null)", avail);
    return NULL;
}

et_status et_backend_unsupported(const et_backend *b, et_op op, et_dtype dt)
{
    return et_error(ET_ERR_UNSUPPORTED, "backend '%s': %s with dtype %s is not supported",
                    b ? b->name : "?", et_op_name(op), et_dtype_name(dt));
}

int64_t et_conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad_lo,
                         int64_t pad_hi, int64_t dilation)
{
    int64_t span = in + pad_lo + pad_hi - dilation * (k - 1) - 1;
    if (span < 0 || stride <= 0) return 0;
    return span / stride + 1;
}

/* ---- checks ------------------------------------------------------------- */

/* Low-precision operand combinations (backend.h). */
int et_combo(et_dtype src, et_dtype *wei, et_dtype *out, int *bias_ok)
{
    switch (src) {
    case ET_F32: *wei = ET_F32; *out = ET_F32; *bias_ok = 1; return 1;
    case ET_BF16: *wei = ET_BF16; *out = ET_F32; *bias_ok = 1; return 1;
    case ET_F16: *wei = ET_F16; *out = ET_F32; *bias_ok = 1; return 1;
    case ET_U8:
    case ET_S8: *wei = ET_S8; *out = ET_S32; *bias_ok = 0; return 1;
    default: return 0;
    }
}

const char *et_dtype_short(et_dtype dt)
{
    static const char *n[ET_DTYPE_COUNT] = {"f32", "f16", "bf16", "s8", "u8", "s32", "s64"};
    return (dt >= 0 && dt < ET_DTYPE_COUNT) ? n[dt] : "?";
}

/* "" for fp32 (the historical messages), else " (uint8 x int8 -> int32 products)" */
static const char *combo_hint(et_dtype src, char *buf, size_t n)
{
    et_dtype w, o;
    int bias_ok;
    if (src == ET_F32 || !et_combo(src, &w, &o, &bias_ok)) return "";
    snprintf(buf, n, " (%s x %s -> %s products)", et_dtype_name(src), et_dtype_name(w),
             et_dtype_name(o));
    return buf;
}

/* The first operand's dtype must start a combination. */
static et_status check_combo(const char *op, const char *what, const et_tensor *t,
                             const et_backend *b, et_op o)
{
    et_dtype w, y;
    int bias_ok;
    char s[96];
    if (!et_combo(t->dtype, &w, &y, &bias_ok))
        return et_error(ET_ERR_TYPE, "%s: %s %s has dtype %s; the primitives take float32, "
                        "bfloat16, float16, uint8 or int8 first operands", op, what,
                        et_shape_str(t, s, sizeof s), et_dtype_name(t->dtype));
    /* ref runs every combination: anything else a backend lacks falls back */
    if (!b->supports(o, t->dtype) && !et_backend_ref.supports(o, t->dtype))
        return et_backend_unsupported(b, o, t->dtype);
    return ET_OK;
}

static et_status check_tensor_hint(const char *op, const char *what, const et_tensor *t,
                                   int ndim, et_dtype dt, et_dtype src)
{
    char s[96], h[96];
    if (t->data && t->dtype != dt)
        return et_error(ET_ERR_TYPE, "%s: %s %s has dtype %s, expected %s%s", op, what,
                        et_shape_str(t, s, sizeof s), et_dtype_name(t->dtype), et_dtype_name(dt),
                        combo_hint(src, h, sizeof h));
    return ET_OK;
}

static et_status check_tensor(const char *op, const char *what, const et_tensor *t,
                              int ndim, et_dtype dt)
{
    char s[96];
    if (!t->data)
        return et_error(ET_ERR_VALUE, "%s: %s has no data", op, what);
    if (t->ndim != ndim)
        return et_error(ET_ERR_VALUE, "%s: %s must be %dD, got shape %s", op, what, ndim,
                        et_shape_str(t, s, sizeof s));
    if (t->dtype != dt)
        return et_error(ET_ERR_TYPE, "%s: %s has dtype %s, expected %s", op, what,
                        et_dtype_name(t->dtype), et_dtype_name(dt));
    /* (an empty tensor is contiguous; its size is checked by the caller) */
    if (et_tensor_numel(t) > 0 && !et_tensor_is_contiguous(t))
        return et_error(ET_ERR_VALUE, "%s: %s %s must be contiguous", op, what,
                        et_shape_str(t, s, sizeof s));
    return ET_OK;
}

et_status et_matmul_check(const char *op, const et_matmul_args *a)
{
    if (!a->backend) return et_error(ET_ERR_VALUE, "%s: no backend given", op);
    et_dtype dt = a->a.dtype, wdt, ydt;
    int bias_ok;
    ET_TRY(check_combo(op, "a", &a->a, a->backend, ET_OP_MATMUL));
    et_combo(dt, &wdt, &ydt, &bias_ok);
    ET_TRY(check_tensor_hint(op, "b", &a->b, 2, wdt, dt));
    ET_TRY(check_tensor_hint(op, "out", &a->y, 2, ydt, dt));
    ET_TRY(check_tensor(op, "a", &a->a, 2, dt));
    ET_TRY(check_tensor(op, "b", &a->b, 2, wdt));
    ET_TRY(check_tensor(op, "out", &a->y, 2, ydt));
    if (a->bias.data && !bias_ok)
        return et_error(ET_ERR_UNSUPPORTED, "%s: %s x %s -> %s products take no bias (the "
                        "dequantize epilogue adds it in float32)", op, et_dtype_name(dt),
                        et_dtype_name(wdt), et_dtype_name(ydt));
    int64_t M = a->trans_a ? a->a.shape[1] : a->a.shape[0];
    int64_t K = a->trans_a ? a->a.shape[0] : a->a.shape[1];
    int64_t Kb = a->trans_b ? a->b.shape[1] : a->b.shape[0];
    int64_t N = a->trans_b ? a->b.shape[0] : a->b.shape[1];
    char sa[96], sb[96], sy[96];
    if (K != Kb)
        return et_error(ET_ERR_VALUE, "%s: inner dims differ: a %s%s vs b %s%s (K %lld != %lld)",
                        op, et_shape_str(&a->a, sa, sizeof sa), a->trans_a ? "^T" : "",
                        et_shape_str(&a->b, sb, sizeof sb), a->trans_b ? "^T" : "",
                        (long long)K, (long long)Kb);
    if (a->y.shape[0] != M || a->y.shape[1] != N)
        return et_error(ET_ERR_VALUE, "%s: out %s must be (%lld, %lld) for a %s%s, b %s%s", op,
                        et_shape_str(&a->y, sy, sizeof sy), (long long)M, (long long)N,
                        et_shape_str(&a->a, sa, sizeof sa), a->trans_a ? "^T" : "",
                        et_shape_str(&a->b, sb, sizeof sb), a->trans_b ? "^T" : "");
    if (a->bias.data) {
        ET_TRY(check_tensor_hint(op, "bias", &a->bias, 1, ET_F32, dt));
        ET_TRY(check_tensor(op, "bias", &a->bias, 1, ET_F32));
        if (a->bias.shape[0] != N)
            return et_error(ET_ERR_VALUE, "%s: bias %s must be (%lld,) for out (%lld, %lld)", op,
                            et_shape_str(&a->bias, sb, sizeof sb), (long long)N,
                            (long long)M, (long long)N);
    }
    if (M == 0 || N == 0 || K == 0)
        return et_error(ET_ERR_VALUE, "%s: empty product: a %s, b %s", op,
                        et_shape_str(&a->a, sa, sizeof sa), et_shape_str(&a->b, sb, sizeof sb));
    return ET_OK;
}

et_status et_conv2d_check(const char *op, const et_conv2d_args *a)
{
    if (!a->backend) return et_error(ET_ERR_VALUE, "%s: no backend given", op);
    et_dtype dt = a->x.dtype, wdt, ydt;
    int bias_ok;
    ET_TRY(check_combo(op, "input", &a->x, a->backend, ET_OP_CONV2D));
    et_combo(dt, &wdt, &ydt, &bias_ok);
    ET_TRY(check_tensor_hint(op, "weight", &a->w, 4, wdt, dt));
    ET_TRY(check_tensor_hint(op, "output", &a->y, 4, ydt, dt));
    ET_TRY(check_tensor(op, "input", &a->x, 4, dt));
    ET_TRY(check_tensor(op, "weight", &a->w, 4, wdt));
    ET_TRY(check_tensor(op, "output", &a->y, 4, ydt));
    if (a->bias.data && !bias_ok)
        return et_error(ET_ERR_UNSUPPORTED, "%s: %s x %s -> %s products take no bias (the "
                        "dequantize epilogue adds it in float32)", op, et_dtype_name(dt),
                        et_dtype_name(wdt), et_dtype_name(ydt));
    char sx[96], sw[96], sy[96];
    et_shape_str(&a->x, sx, sizeof sx);
    et_shape_str(&a->w, sw, sizeof sw);
    et_shape_str(&a->y, sy, sizeof sy);
    const int64_t *xs = a->x.shape, *ws = a->w.shape;
    int64_t G = a->groups;
    if (G <= 0)
        return et_error(ET_ERR_VALUE, "%s: groups must be positive, got %lld", op, (long long)G);
    for (int i = 0; i < 2; i++) {
        if (a->stride[i] <= 0 || a->dilation[i] <= 0)
            return et_error(ET_ERR_VALUE, "%s: stride (%lld, %lld) and dilation (%lld, %lld) "
                            "must be positive", op, (long long)a->stride[0], (long long)a->stride[1],
                            (long long)a->dilation[0], (long long)a->dilation[1]);
        if (a->pad_lo[i] < 0 || a->pad_hi[i] < 0)
            return et_error(ET_ERR_VALUE, "%s: padding must be non-negative, got low (%lld, %lld) "
                            "high (%lld, %lld)", op, (long long)a->pad_lo[0], (long long)a->pad_lo[1],
                            (long long)a->pad_hi[0], (long long)a->pad_hi[1]);
    }
    for (int i = 0; i < 4; i++)
        if (xs[i] == 0 || ws[i] == 0)
            return et_error(ET_ERR_VALUE, "%s: empty dimension: input %s, weight %s", op, sx, sw);
    if (ws[0] % G != 0)
        return et_error(ET_ERR_VALUE, "%s: out_channels %lld not divisible by groups %lld "
                        "(weight %s)", op, (long long)ws[0], (long long)G, sw);
    if (xs[1] != ws[1] * G)
        return et_error(ET_ERR_VALUE, "%s: input channels %lld != weight in_channels*groups %lld "
                        "(input %s, weight %s, groups %lld)", op, (long long)xs[1],
                        (long long)(ws[1] * G), sx, sw, (long long)G);
    int64_t OH = et_conv_out_size(xs[2], ws[2], a->stride[0], a->pad_lo[0], a->pad_hi[0], a->dilation[0]);
    int64_t OW = et_conv_out_size(xs[3], ws[3], a->stride[1], a->pad_lo[1], a->pad_hi[1], a->dilation[1]);
    if (OH <= 0 || OW <= 0)
        return et_error(ET_ERR_VALUE, "%s: kernel (%lld, %lld) with dilation (%lld, %lld) is larger "
                        "than the padded input (%lld, %lld) (input %s, weight %s)", op,
                        (long long)ws[2], (long long)ws[3], (long long)a->dilation[0],
                        (long long)a->dilation[1], (long long)(xs[2] + a->pad_lo[0] + a->pad_hi[0]),
                        (long long)(xs[3] + a->pad_lo[1] + a->pad_hi[1]), sx, sw);
    if (a->y.shape[0] != xs[0] || a->y.shape[1] != ws[0] || a->y.shape[2] != OH ||
        a->y.shape[3] != OW)
        return et_error(ET_ERR_VALUE, "%s: output %s must be (%lld, %lld, %lld, %lld) "
                        "(input %s, weight %s)", op, sy, (long long)xs[0], (long long)ws[0],
                        (long long)OH, (long long)OW, sx, sw);
    if (a->bias.data) {
        ET_TRY(check_tensor_hint(op, "bias", &a->bias, 1, ET_F32, dt));
        ET_TRY(check_tensor(op, "bias", &a->bias, 1, ET_F32));
        if (a->bias.shape[0] != ws[0]) {
            char sb[96];
            return et_error(ET_ERR_VALUE, "%s: bias %s must be (%lld,) (weight %s)", op,
                            et_shape_str(&a->bias, sb, sizeof sb), (long long)ws[0], sw);
        }
    }
    return ET_OK;
}

/* ---- dispatch -------------------------------------------------------------- */

/* ---- fallback to ref (ggml style: the dispatcher asks supports() once) ---- */

static _Atomic int64_t fb_count[N_ALL][ET_OP_COUNT][ET_DTYPE_COUNT];
static _Atomic int fb_warned[N_ALL][ET_OP_COUNT][ET_DTYPE_COUNT];

static int backend_index(const et_backend *b)
{
    for (int i = 0; i < N_ALL; i++) if (all_backends[i] == b) return i;
    return -1;
}

const et_backend *et_backend_resolve(const et_backend *b, et_op op, et_dtype dt)
{
    if (b->supports(op, dt) && (op == ET_OP_MATMUL ? b->matmul != NULL : b->conv2d != NULL))
        return b;
    int i = backend_index(b);
    if (i >= 0 && op >= 0 && op < ET_OP_COUNT && dt >= 0 && dt < ET_DTYPE_COUNT)
        atomic_fetch_add(&fb_count[i][op][dt], 1);
    return &et_backend_ref;
}

static int fb_collect(et_fallback_stat *out, int max, int take)
{
    int n = 0;
    for (int i = 0; i < N_ALL; i++)
        for (int o = 0; o < ET_OP_COUNT; o++)
            for (int d = 0; d < ET_DTYPE_COUNT; d++) {
                int64_t c = atomic_load(&fb_count[i][o][d]);
                if (c == 0) continue;
                int w = atomic_load(&fb_warned[i][o][d]);
                if (take) {
                    if (n >= max) return n;   /* the rest stay unwarned for the next call */
                    if (atomic_exchange(&fb_warned[i][o][d], 1)) continue;   /* someone else */
                }
                if (n < max)
                    out[n] = (et_fallback_stat){all_backends[i]->name, (et_op)o, (et_dtype)d, c,
                                                take ? 1 : w};
                n++;
            }
    return n;
}

int et_fallback_stats(et_fallback_stat *out, int max) { return fb_collect(out, max, 0); }
int et_fallback_take_unwarned(et_fallback_stat *out, int max) { return fb_collect(out, max, 1); }

void et_fallback_reset(void)
{
    for (int i = 0; i < N_ALL; i++)
        for (int o = 0; o < ET_OP_COUNT; o++)
            for (int d = 0; d < ET_DTYPE_COUNT; d++) {
                atomic_store(&fb_count[i][o][d], 0);
                atomic_store(&fb_warned[i][o][d], 0);
            }
}

/* ---- exact bf16 / f16 -> f32 ------------------------------------------- */

float et_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0x1f) v.u = sign | 0x7f800000u | (m << 13);           /* Inf, NaN (payload kept) */
    else if (e) v.u = sign | ((e + 112u) << 23) | (m << 13);       /* normal: rebias 15 -> 127 */
    else {                                                          /* zero / subnormal m*2^-24 */
        v.f = (float)m * 0x1p-24f;                                  /* exact: m < 2^10 */
        v.u |= sign;
    }
    return v.f;
}

et_status et_lowp_to_f32(const char *op, const et_tensor *t, float **out)
{
    const int64_t n = et_tensor_numel(t);
    float *f = et_aligned_alloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    *out = NULL;
    if (!f) {
        char s[96];
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate %lld floats to widen %s operand %s", op,
                        (long long)n, et_dtype_name(t->dtype), et_shape_str(t, s, sizeof s));
    }
    const uint16_t *h = t->data;
    const int par = n > 65536 && !omp_in_parallel();
    if (t->dtype == ET_BF16) {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < n; i++) f[i] = et_bf16_to_f32(h[i]);
    } else if (t->dtype == ET_F16) {
        /* F16C (quant/convert.c; exact, subnormals included), not the scalar
         * et_f16_to_f32 above: the f16 matmul / conv of the blas and onednn
         * backends widens both operands on every job, and the scalar loop
         * made an f16 product ~2.4x the bf16 one (helper measurement,
         * (64, 12544) x (576, 12544)^T: 45 vs 19 ms) */
        et_status st = et_convert_f16_to_f32(h, f, n);
        if (st != ET_OK) {
            et_aligned_free(f);
            return st;
        }
    } else if (t->dtype == ET_F32) {
        memcpy(f, t->data, (size_t)n * sizeof(float));
    } else {
        et_aligned_free(f);
        return et_error(ET_ERR_TYPE, "%s: cannot widen a %s operand to float32", op,
                        et_dtype_name(t->dtype));
    }
    *out = f;
    return ET_OK;
}

/* ---- dispatch -------------------------------------------------------------- */

et_status et_matmul_run(const et_matmul_args *a)
{
    ET_TRY(et_matmul_check("matmul", a));
    const et_backend *b = et_backend_resolve(a->backend, ET_OP_MATMUL, a->a.dtype);
    if (!b->matmul) return et_backend_unsupported(a->backend, ET_OP_MATMUL, a->a.dtype);
    return b->matmul(a);
}

et_status et_conv2d_run(const et_conv2d_args *a)
{
    ET_TRY(et_conv2d_check("conv2d", a));
    const et_backend *b = et_backend_resolve(a->backend, ET_OP_CONV2D, a->x.dtype);
    if (!b->conv2d) return et_backend_unsupported(a->backend, ET_OP_CONV2D, a->x.dtype);
    return b->conv2d(a);
}

et_status et_matmul_job(void *arg) { return et_matmul_run((const et_matmul_args *)arg); }
et_status et_conv2d_job(void *arg) { return et_conv2d_run((const et_conv2d_args *)arg); }

#ifndef ET_HAVE_ONEDNN
/* No oneDNN here: the cache is empty and cannot be configured. */
et_status et_onednn_cache_stats(et_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    return ET_OK;
}
et_status et_onednn_set_cache_capacity(int64_t capacity)
{
    (void)capacity;
    return et_error(ET_ERR_UNSUPPORTED, "set_cache_capacity: the onednn backend is not built");
}
et_status et_onednn_clear_cache(void) { return ET_OK; }
#endif
