/* quantize.h - float32 <-> int8 quantizers for low-precision training.
 *
 * Why: the accelerator's fast primitives multiply u8/s8 operands into s32
 * accumulators. The CPU makes the operands (dynamic scales, computed from the
 * tensor at hand, no calibration) and turns the accumulators back into
 * float32 (the GEMM epilogue). Everything is symmetric (zero point 0), so an
 * int8 product needs only one float multiply per output to dequantize.
 *
 * Rules shared by every quantizer (the numbers are part of the contract;
 * tests reproduce them bit for bit in NumPy):
 *   scale   = m / QMAX in float32, where m = max|x| (s8, QMAX = 127) or
 *             max(x) (u8, QMAX = 255); m == 0 (all-zero or empty tensor, or
 *             for u8 no positive value) -> scale = 1.0 and all-zero output;
 *             the scale is floored at FLT_MIN (1.1754944e-38) so that
 *             inv = 1.0f / scale is finite.
 *   v       = x * inv                       (float32 multiply, as fbgemm/torch)
 *   s8      q = rint(clamp(v, -127, 127))   round half to even; -128 is never
 *             produced (symmetric range: -q is always representable and the
 *             s8 x s8 products of the int8 GEMM stay within +-127^2)
 *   u8      q = rint(clamp(v, 0, 255))      for tensors known to be
 *             non-negative (post-ReLU activations): negative values saturate
 *             to 0, i.e. u8 represents max(x, 0)
 *   stochastic s8 (gradients):
 *             f = floor(v); q = clamp(f + (u < v - f ? 1 : 0), -127, 127)
 *             with u = et_rng_uniform(et_rng_key(seed, offset), i) in [0, 1)
 *             (rng.h): E[q] = v (unbiased) away from saturation; reproducible
 *             for the same (seed, offset) and independent of the thread count.
 *   NaN or +-Inf anywhere in the input -> ET_ERR_VALUE
 *             "<op>: input contains NaN/Inf at index i (value v)" naming the
 *             first offending flat index; nothing useful is written.
 *   dequantize: y = (float)q * scale.
 *   int8 GEMM epilogue: y = (float)acc * (sa * sw[c]) + bias[c]
 *             (the product sa * sw[c] is rounded to float32 first; the build
 *             uses -std=c11, so no FMA contraction).
 * Large tensors run on OpenMP threads (static chunks: results are the same
 * for any thread count).
 */
#ifndef ET_QUANT_QUANTIZE_H
#define ET_QUANT_QUANTIZE_H

#include <stdint.h>

#include "../core/status.h"

#define ET_QUANT_S8_QMAX 127
#define ET_QUANT_U8_QMAX 255

/* Reduced ("7-bit") range for activations and gradients, as fbgemm's
 * reduce_range on CPUs without VNNI. Why: the int8 kernels of such CPUs
 * (AVX2 vpmaddubsw) add PAIRS of u8 x s8 products into a saturating int16,
 * so a product of two full-range operands needs two runs to stay exact
 * (backends/onednn.c). With activations u8 in [0, 127] (s8 in [-63, 63])
 * and gradients in [-63, 63], against weights in [-127, 127], every
 * forward, backward-data and backward-weight product runs once, exactly
 * (2 * 127 * 127 <= 32767; a signed source is shifted by at most 64).
 * Weights keep 8 bits. On by default; et_quant_set_reduce_range(0) gives
 * full 8-bit activations and gradients (exact everywhere, slower on AVX2). */
#define ET_QUANT_U8_QMAX_REDUCED 127
#define ET_QUANT_S8_QMAX_REDUCED 63
void et_quant_set_reduce_range(int on);
int et_quant_reduce_range(void);
/* The qmax the low-precision ops use for an activation (u8 when nonneg)
 * or, with nonneg == 0, for a gradient, under the current setting. */
int et_quant_act_qmax(int nonneg);

/* The scale for a tensor whose max|x| (or max(x) for u8) is m >= 0. */
float et_quant_scale_from_max(float m, int qmax);

/* ET_ERR_VALUE naming `op` and the first NaN/Inf index, or ET_OK. x: (n,) */
et_status et_quant_check_finite(const char *op, const float *x, int64_t n);

/* *amax = max|x[i]| (0 for n == 0); NaN/Inf -> ET_ERR_VALUE (see above). */
et_status et_quant_absmax(const char *op, const float *x, int64_t n, float *amax);
/* *mx = max(0, max x[i]); NaN/Inf -> ET_ERR_VALUE. */
et_status et_quant_max_nonneg(const char *op, const float *x, int64_t n, float *mx);

/* Static scale: q = s8/u8 of x with the given scale (finite, >= FLT_MIN).
 * x: (n,) float32 (checked finite), q: (n,) */
et_status et_quantize_s8(const float *x, int64_t n, float scale, int8_t *q);
et_status et_quantize_u8(const float *x, int64_t n, float scale, uint8_t *q);

/* Dynamic per-tensor: computes *scale then q. x, q: (n,) */
et_status et_quantize_per_tensor_s8(const float *x, int64_t n, int8_t *q, float *scale);
et_status et_quantize_per_tensor_u8(const float *x, int64_t n, uint8_t *q, float *scale);

/* The same with an explicit qmax in [1, 127] (s8) / [1, 255] (u8): the
 * scale is m / qmax and q is clamped to +-qmax / [0, qmax]. */
et_status et_quantize_per_tensor_s8_qmax(const float *x, int64_t n, int qmax, int8_t *q,
                                         float *scale);
et_status et_quantize_per_tensor_u8_qmax(const float *x, int64_t n, int qmax, uint8_t *q,
                                         float *scale);

/* Per output channel (weights): w (oc, k) row-major -> q (oc, k) s8 and
 * scales (oc,), each row by the per-tensor s8 rule. */
et_status et_quantize_per_channel_s8(const float *w, int64_t oc, int64_t k,
                                     int8_t *q, float *scales);

/* Per-tensor s8 with stochastic rounding (gradients). x, q: (n,) */
et_status et_quantize_stochastic_s8(const float *x, int64_t n, uint64_t seed,
                                    uint64_t offset, int8_t *q, float *scale);

et_status et_quantize_stochastic_s8_qmax(const float *x, int64_t n, int qmax, uint64_t seed,
                                         uint64_t offset, int8_t *q, float *scale);

/* y (rows, k) = q (rows, k) * scale, with scales[0] for every row when
 * per_row == 0, scales[r] for row r otherwise. Scales must be finite. */
et_status et_dequantize_s8(const int8_t *q, int64_t rows, int64_t k,
                           const float *scales, int per_row, float *y);
et_status et_dequantize_u8(const uint8_t *q, int64_t rows, int64_t k,
                           const float *scales, int per_row, float *y);
et_status et_dequantize_s32(const int32_t *q, int64_t rows, int64_t k,
                            const float *scales, int per_row, float *y);

/* int8 GEMM / conv epilogue on an s32 accumulator viewed as (outer, c, inner):
 *   y[o, j, p] = (float)acc[o, j, p] * (sa * sw[j]) + bias[j]
 * sw: (c,) when sw_per_channel, else sw[0] for all; bias: (c,) or NULL.
 * matmul (M, N): outer = M, c = N, inner = 1;
 * conv (N, OC, OH, OW): outer = N, c = OC, inner = OH*OW. */
et_status et_dequantize_acc(const int32_t *acc, int64_t outer, int64_t c, int64_t inner,
                            float sa, const float *sw, int sw_per_channel,
                            const float *bias, float *y);
/* acc, y: (m, n); sw, bias: (n,) */
et_status et_dequantize_acc_mn(const int32_t *acc, int64_t m, int64_t n, float sa,
                               const float *sw, const float *bias, float *y);
/* acc, y: (n, oc, hw); sw, bias: (oc,) */
et_status et_dequantize_acc_nchw(const int32_t *acc, int64_t n, int64_t oc, int64_t hw,
                                 float sa, const float *sw, const float *bias, float *y);

#endif
