/* quantize.c - see quantize.h. */
#include "quantize.h"

#include <float.h>
#include <math.h>

#include "rng.h"

/* Below this many elements a parallel region costs more than it saves:
 * the loops are a few vector instructions per element and memory-bound
 * (1 thread: ~0.35 ns/element for quantize_per_tensor on this machine). */
#define ET_QUANT_PAR_MIN (1 << 18)
/* Elements per parallel chunk (static schedule: the same split for any
 * thread count; every loop is elementwise anyway). */
#define ET_QUANT_BLOCK 4096

/* Round half to even: rintf in the default rounding mode (the core never
 * changes it); gcc emits vroundps $4 with SSE4.1/AVX, vectorised. */
static inline float round_half_even(float v)
{
    return rintf(v);
}

static inline float clampf(float v, float lo, float hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

float et_quant_scale_from_max(float m, int qmax)
{
    if (!(m > 0.0f)) return 1.0f;          /* all zero / empty: any scale works */
    float s = m / (float)qmax;
    return s < FLT_MIN ? FLT_MIN : s;      /* keeps 1/s finite */
}

static et_status nonfinite_error(const char *op, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return et_error(ET_ERR_VALUE, "%s: input contains NaN/Inf at index %lld (value %g)",
                            op, (long long)i, (double)x[i]);
    return et_error(ET_ERR_INTERNAL, "%s: non-finite value reported but not found", op);
}

static et_status check_buf(const char *op, const void *a, const void *b, int64_t n)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "%s: negative size %lld", op, (long long)n);
    if (n > 0 && (!a || !b)) return et_error(ET_ERR_VALUE, "%s: NULL buffer", op);
    return ET_OK;
}

et_status et_quant_check_finite(const char *op, const float *x, int64_t n)
{
    ET_TRY(check_buf(op, x, x, n));
    int bad = 0;
    #pragma omp parallel for simd reduction(|:bad) schedule(static) if(n > ET_QUANT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) bad |= !(fabsf(x[i]) <= FLT_MAX);
    return bad ? nonfinite_error(op, x, n) : ET_OK;
}

et_status et_quant_absmax(const char *op, const float *x, int64_t n, float *amax)
{
    ET_TRY(check_buf(op, x, amax, n));
    float m = 0.0f;
    int bad = 0;
    /* NaN compares false: it never becomes the max, `bad` records it */
    #pragma omp parallel for simd reduction(max:m) reduction(|:bad) schedule(static) \
        if(n > ET_QUANT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        bad |= !(a <= FLT_MAX);
        m = a > m ? a : m;
    }
    if (bad) return nonfinite_error(op, x, n);
    *amax = m;
    return ET_OK;
}

et_status et_quant_max_nonneg(const char *op, const float *x, int64_t n, float *mx)
{
    ET_TRY(check_buf(op, x, mx, n));
    float m = 0.0f;
    int bad = 0;
    #pragma omp parallel for simd reduction(max:m) reduction(|:bad) schedule(static) \
        if(n > ET_QUANT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        bad |= !(fabsf(v) <= FLT_MAX);
        m = v > m ? v : m;
    }
    if (bad) return nonfinite_error(op, x, n);
    *mx = m;
    return ET_OK;
}

/* The loops that apply a (valid) scale; x is known finite. */
static void apply_s8(const float *x, int64_t n, float inv, float qmax, int8_t *q)
{
    int64_t nblocks = (n + ET_QUANT_BLOCK - 1) / ET_QUANT_BLOCK;
    #pragma omp parallel for schedule(static) if(n > ET_QUANT_PAR_MIN)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t lo = b * ET_QUANT_BLOCK;
        int64_t hi = lo + ET_QUANT_BLOCK < n ? lo + ET_QUANT_BLOCK : n;
        #pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            float v = clampf(x[i] * inv, -qmax, qmax);
            q[i] = (int8_t)(int32_t)round_half_even(v);
        }
    }
}

static void apply_u8(const float *x, int64_t n, float inv, float qmax, uint8_t *q)
{
    int64_t nblocks = (n + ET_QUANT_BLOCK - 1) / ET_QUANT_BLOCK;
    #pragma omp parallel for schedule(static) if(n > ET_QUANT_PAR_MIN)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t lo = b * ET_QUANT_BLOCK;
        int64_t hi = lo + ET_QUANT_BLOCK < n ? lo + ET_QUANT_BLOCK : n;
        #pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            float v = clampf(x[i] * inv, 0.0f, qmax);
            q[i] = (uint8_t)(int32_t)round_half_even(v);
        }
    }
}

static et_status check_scale(const char *op, float scale)
{
    if (!(scale >= FLT_MIN) || !(scale <= FLT_MAX))
        return et_error(ET_ERR_VALUE, "%s: scale must be finite and >= %g (FLT_MIN), got %g",
                        op, (double)FLT_MIN, (double)scale);
    return ET_OK;
}

et_status et_quantize_s8(const float *x, int64_t n, float scale, int8_t *q)
{
    const char *op = "quantize_per_tensor";
    ET_TRY(check_buf(op, x, q, n));
    ET_TRY(check_scale(op, scale));
    ET_TRY(et_quant_check_finite(op, x, n));
    apply_s8(x, n, 1.0f / scale, ET_QUANT_S8_QMAX, q);
    return ET_OK;
}

et_status et_quantize_u8(const float *x, int64_t n, float scale, uint8_t *q)
{
    const char *op = "quantize_per_tensor";
    ET_TRY(check_buf(op, x, q, n));
    ET_TRY(check_scale(op, scale));
    ET_TRY(et_quant_check_finite(op, x, n));
    apply_u8(x, n, 1.0f / scale, ET_QUANT_U8_QMAX, q);
    return ET_OK;
}

static et_status check_qmax(const char *op, int qmax, int top)
{
    if (qmax < 1 || qmax > top)
        return et_error(ET_ERR_VALUE, "%s: qmax must be in [1, %d], got %d", op, top, qmax);
    return ET_OK;
}

et_status et_quantize_per_tensor_s8_qmax(const float *x, int64_t n, int qmax, int8_t *q,
                                         float *scale)
{
    const char *op = "quantize_per_tensor";
    ET_TRY(check_buf(op, x, q, n));
    ET_TRY(check_qmax(op, qmax, ET_QUANT_S8_QMAX));
    if (!scale) return et_error(ET_ERR_VALUE, "%s: NULL scale", op);
    float m;
    ET_TRY(et_quant_absmax(op, x, n, &m));
    float s = et_quant_scale_from_max(m, qmax);
    apply_s8(x, n, 1.0f / s, (float)qmax, q);
    *scale = s;
    return ET_OK;
}

et_status et_quantize_per_tensor_u8_qmax(const float *x, int64_t n, int qmax, uint8_t *q,
                                         float *scale)
{
    const char *op = "quantize_per_tensor";
    ET_TRY(check_buf(op, x, q, n));
    ET_TRY(check_qmax(op, qmax, ET_QUANT_U8_QMAX));
    if (!scale) return et_error(ET_ERR_VALUE, "%s: NULL scale", op);
    float m;
    ET_TRY(et_quant_max_nonneg(op, x, n, &m));
    float s = et_quant_scale_from_max(m, qmax);
    apply_u8(x, n, 1.0f / s, (float)qmax, q);
    *scale = s;
    return ET_OK;
}

et_status et_quantize_per_tensor_s8(const float *x, int64_t n, int8_t *q, float *scale)
{
    return et_quantize_per_tensor_s8_qmax(x, n, ET_QUANT_S8_QMAX, q, scale);
}

et_status et_quantize_per_tensor_u8(const float *x, int64_t n, uint8_t *q, float *scale)
{
    return et_quantize_per_tensor_u8_qmax(x, n, ET_QUANT_U8_QMAX, q, scale);
}

/* 7-bit activations and gradients by default: see quantize.h. */
static _Atomic int reduce_range = 1;

void et_quant_set_reduce_range(int on) { reduce_range = on != 0; }
int et_quant_reduce_range(void) { return reduce_range; }
int et_quant_act_qmax(int nonneg)
{
    return nonneg ? (reduce_range ? ET_QUANT_U8_QMAX_REDUCED : ET_QUANT_U8_QMAX)
                  : (reduce_range ? ET_QUANT_S8_QMAX_REDUCED : ET_QUANT_S8_QMAX);
}

et_status et_quantize_per_channel_s8(const float *w, int64_t oc, int64_t k,
                                     int8_t *q, float *scales)
{
    const char *op = "quantize_per_channel";
    if (oc < 0 || k < 0)
        return et_error(ET_ERR_VALUE, "%s: negative shape (%lld, %lld)", op,
                        (long long)oc, (long long)k);
    if (oc > 0 && k > 0 && (!w || !q)) return et_error(ET_ERR_VALUE, "%s: NULL buffer", op);
    if (oc > 0 && !scales) return et_error(ET_ERR_VALUE, "%s: NULL scales", op);
    /* check the whole tensor first: the error names the first bad index */
    ET_TRY(et_quant_check_finite(op, w, oc * k));
    /* one channel per iteration; a weight tensor is small, so threads only
     * when there is enough work in total */
    #pragma omp parallel for schedule(static) if(oc * k > ET_QUANT_PAR_MIN && oc > 1)
    for (int64_t c = 0; c < oc; c++) {
        const float *wr = w + c * k;      /* (k,) */
        float m = 0.0f;
        #pragma omp simd reduction(max:m)
        for (int64_t i = 0; i < k; i++) {
            float a = fabsf(wr[i]);
            m = a > m ? a : m;
        }
        float s = et_quant_scale_from_max(m, ET_QUANT_S8_QMAX);
        float inv = 1.0f / s;
        int8_t *qr = q + c * k;
        #pragma omp simd
        for (int64_t i = 0; i < k; i++) {
            float v = clampf(wr[i] * inv, -127.0f, 127.0f);
            qr[i] = (int8_t)(int32_t)round_half_even(v);
        }
        scales[c] = s;
    }
    return ET_OK;
}

/* Elements per parallel chunk of the stochastic quantizer: each element's
 * random number depends on its index only, so chunking never changes q. */
#define ET_SR_BLOCK 1024

et_status et_quantize_stochastic_s8(const float *x, int64_t n, uint64_t seed,
                                    uint64_t offset, int8_t *q, float *scale)
{
    return et_quantize_stochastic_s8_qmax(x, n, ET_QUANT_S8_QMAX, seed, offset, q, scale);
}

et_status et_quantize_stochastic_s8_qmax(const float *x, int64_t n, int qmax, uint64_t seed,
                                         uint64_t offset, int8_t *q, float *scale)
{
    const char *op = "quantize_stochastic";
    ET_TRY(check_buf(op, x, q, n));
    ET_TRY(check_qmax(op, qmax, ET_QUANT_S8_QMAX));
    if (!scale) return et_error(ET_ERR_VALUE, "%s: NULL scale", op);
    float m;
    ET_TRY(et_quant_absmax(op, x, n, &m));
    float s = et_quant_scale_from_max(m, qmax);
    float inv = 1.0f / s;
    uint64_t key = et_rng_key(seed, offset);
    int64_t nblocks = (n + ET_SR_BLOCK - 1) / ET_SR_BLOCK;
    /* the hash is compute-bound (~1.6 ns/element on 1 thread): threads pay
     * off from a smaller size */
    #pragma omp parallel for schedule(static) if(n > ET_QUANT_PAR_MIN / 8)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t lo = b * ET_SR_BLOCK;
        int64_t hi = lo + ET_SR_BLOCK < n ? lo + ET_SR_BLOCK : n;
        /* two loops, so that gcc vectorises both (one loop mixing the 64-bit
         * hash with float and int8 lanes is left scalar) */
        float u[ET_SR_BLOCK];
        #pragma omp simd
        for (int64_t i = lo; i < hi; i++) u[i - lo] = et_rng_uniform(key, (uint64_t)i);
        #pragma omp simd
        for (int64_t i = lo; i < hi; i++) {
            float v = x[i] * inv;                 /* |v| <= qmax (+rounding) */
            /* floor(v) through truncation (exact: |v| is small), written in
             * integers because gcc 12 leaves floorf in this loop scalar */
            int32_t t = (int32_t)v;
            t -= (float)t > v;
            t += u[i - lo] < v - (float)t;        /* up with probability frac */
            t = t < -qmax ? -qmax : t;
            q[i] = (int8_t)(t > qmax ? qmax : t);
        }
    }
    *scale = s;
    return ET_OK;
}

static et_status check_scales(const char *op, const float *scales, int64_t count)
{
    if (!scales) return et_error(ET_ERR_VALUE, "%s: NULL scales", op);
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(scales[i]))
            return et_error(ET_ERR_VALUE, "%s: scale %lld is not finite (%g)", op,
                            (long long)i, (double)scales[i]);
    return ET_OK;
}

/* y (rows, k) = q * scale(row); one macro, three integer types. */
#define ET_DEQUANT_BODY(OP)                                                          \
    if (rows < 0 || k < 0)                                                           \
        return et_error(ET_ERR_VALUE, "%s: negative shape (%lld, %lld)", OP,         \
                        (long long)rows, (long long)k);                              \
    if (rows > 0 && k > 0 && (!q || !y)) return et_error(ET_ERR_VALUE, "%s: NULL buffer", OP); \
    ET_TRY(check_scales(OP, scales, per_row ? rows : 1));                            \
    int64_t total = rows * k;                                                        \
    if (!per_row || k == 1) {                                                        \
        _Pragma("omp parallel for simd schedule(static) if(total > ET_QUANT_PAR_MIN)") \
        for (int64_t i = 0; i < total; i++)                                          \
            y[i] = (float)q[i] * scales[per_row ? i : 0];                            \
        return ET_OK;                                                                \
    }                                                                                \
    _Pragma("omp parallel for schedule(static) if(total > ET_QUANT_PAR_MIN && rows > 1)") \
    for (int64_t r = 0; r < rows; r++) {                                             \
        float s = scales[r];                                                         \
        _Pragma("omp simd")                                                          \
        for (int64_t i = r * k; i < (r + 1) * k; i++) y[i] = (float)q[i] * s;        \
    }                                                                                \
    return ET_OK;

et_status et_dequantize_s8(const int8_t *q, int64_t rows, int64_t k,
                           const float *scales, int per_row, float *y)
{
    ET_DEQUANT_BODY("dequantize")
}

et_status et_dequantize_u8(const uint8_t *q, int64_t rows, int64_t k,
                           const float *scales, int per_row, float *y)
{
    ET_DEQUANT_BODY("dequantize")
}

et_status et_dequantize_s32(const int32_t *q, int64_t rows, int64_t k,
                            const float *scales, int per_row, float *y)
{
    ET_DEQUANT_BODY("dequantize")
}

et_status et_dequantize_acc(const int32_t *acc, int64_t outer, int64_t c, int64_t inner,
                            float sa, const float *sw, int sw_per_channel,
                            const float *bias, float *y)
{
    const char *op = "dequantize_accumulator";
    if (outer < 0 || c < 0 || inner < 0)
        return et_error(ET_ERR_VALUE, "%s: negative shape (%lld, %lld, %lld)", op,
                        (long long)outer, (long long)c, (long long)inner);
    int64_t total = outer * c * inner;
    if (total > 0 && (!acc || !y)) return et_error(ET_ERR_VALUE, "%s: NULL buffer", op);
    if (!isfinite(sa))
        return et_error(ET_ERR_VALUE, "%s: activation scale is not finite (%g)", op, (double)sa);
    ET_TRY(check_scales(op, sw, sw_per_channel ? c : 1));
    if (bias)
        for (int64_t j = 0; j < c; j++)
            if (!isfinite(bias[j]))
                return et_error(ET_ERR_VALUE, "%s: bias[%lld] is not finite (%g)", op,
                                (long long)j, (double)bias[j]);
    if (total == 0) return ET_OK;
    if (inner == 1) {
        /* matmul: (M, N), the channel is the fast index */
        #pragma omp parallel for schedule(static) if(total > ET_QUANT_PAR_MIN && outer > 1)
        for (int64_t o = 0; o < outer; o++) {
            const int32_t *a = acc + o * c;   /* (c,) */
            float *yr = y + o * c;
            if (bias) {
                #pragma omp simd
                for (int64_t j = 0; j < c; j++)
                    yr[j] = (float)a[j] * (sa * sw[sw_per_channel ? j : 0]) + bias[j];
            } else {
                #pragma omp simd
                for (int64_t j = 0; j < c; j++)
                    yr[j] = (float)a[j] * (sa * sw[sw_per_channel ? j : 0]);
            }
        }
        return ET_OK;
    }
    /* conv: (N, OC, OH*OW), one (n, oc) plane per iteration */
    int64_t planes = outer * c;
    #pragma omp parallel for schedule(static) if(total > ET_QUANT_PAR_MIN && planes > 1)
    for (int64_t pl = 0; pl < planes; pl++) {
        int64_t j = pl % c;
        float s = sa * sw[sw_per_channel ? j : 0];
        float b = bias ? bias[j] : 0.0f;
        const int32_t *a = acc + pl * inner;  /* (inner,) */
        float *yr = y + pl * inner;
        if (bias) {
            #pragma omp simd
            for (int64_t p = 0; p < inner; p++) yr[p] = (float)a[p] * s + b;
        } else {
            #pragma omp simd
            for (int64_t p = 0; p < inner; p++) yr[p] = (float)a[p] * s;
        }
    }
    return ET_OK;
}

et_status et_dequantize_acc_mn(const int32_t *acc, int64_t m, int64_t n, float sa,
                               const float *sw, const float *bias, float *y)
{
    return et_dequantize_acc(acc, m, n, 1, sa, sw, 1, bias, y);
}

et_status et_dequantize_acc_nchw(const int32_t *acc, int64_t n, int64_t oc, int64_t hw,
                                 float sa, const float *sw, const float *bias, float *y)
{
    return et_dequantize_acc(acc, n, oc, hw, sa, sw, 1, bias, y);
}
