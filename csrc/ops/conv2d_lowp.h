/* conv2d_lowp.h - conv2d forward / backward-data / backward-weight in low
 * precision (issue 3, section 4), through the SAME forward primitives as
 * fp32 (conv2d.h): the operands are quantized / converted on the CPU, then
 * rearranged exactly as in fp32 (prep.h, on their bytes), and the backend's
 * low-precision conv2d primitive runs them (u8/s8 x s8 -> s32 exact,
 * bf16/f16 x bf16/f16 -> f32). No backward primitive, no fp32 product.
 *
 * Per pass precision p (et_prec):
 *   fp32  f32 operands (the fp32 path, through the same code)
 *   bf16  / fp16: operands rounded to nearest even (quant/convert.h), f32 out
 *   int8  forward:  x per-tensor (u8 with the full range when the caller says
 *                   x >= 0, e.g. post-ReLU; else s8), w per-output-channel s8;
 *                   y = acc * (sx * sw[oc]) + b   (the quantizer's epilogue)
 *         backward-data: dy per-tensor s8 with STOCHASTIC rounding
 *                   (seed, offset), w flipped/transposed in f32 first and then
 *                   quantized per channel of the NEW output dim (= x's input
 *                   channel); dx = acc * (sdy * swt[c])
 *         backward-weight: dy (the same stochastic s8 tensor as above) and x
 *                   per-tensor (or the caller's saved x_q / x_scale);
 *                   dw = acc * (sx * sdy), cropped/transposed
 *   db is always the f32 sum of dy (CPU).
 * Backward-weight formulation: int8 always runs the conv above. fp32 / bf16 /
 * fp16 take the same choice as the fp32 op (ET_CONV_DW=conv|gemm|auto, auto =
 * gemm except on ref and for tiny jobs, conv2d_dw.h): gemm = im2col of the
 * converted x and row gather of the converted dy (2-byte elements), the
 * backend's bf16/f16 x bf16/f16 -> f32 matmul per (chunk, group), chunks
 * summed in f32, dw written in place (no crop/transpose).
 * Shapes as conv2d.h: x (N, C, H, W), w (OC, C/G, KH, KW), y/dy (N, OC, OH, OW).
 * s32 accumulators: a reduction of K products of |u8*s8| <= 255*127 stays
 * exact while K <= 66311 (s8*s8: 133144). The int8 dw pass reduces over
 * N*OH*OW, so it splits the batch into chunks below that bound (one job per
 * chunk) and adds their s32 results in int64 before the epilogue.
 */
#ifndef ET_OPS_CONV2D_LOWP_H
#define ET_OPS_CONV2D_LOWP_H

#include <stdint.h>

#include "conv2d.h"
#include "../quant/wcache.h"

typedef enum et_prec { ET_PREC_FP32 = 0, ET_PREC_BF16, ET_PREC_FP16, ET_PREC_INT8 } et_prec;

/* "fp32" | "bf16" | "fp16" | "int8" (also "float32", "bfloat16", "float16");
 * anything else -> ET_ERR_VALUE naming `op`, `arg` and the value. */
et_status et_prec_from_name(const char *op, const char *arg, const char *name, et_prec *out);
const char *et_prec_name(et_prec p);

/* Backward options shared by conv2d and linear. */
typedef struct et_lowp_bwd_opts {
    et_prec prec_dx, prec_dw;
    uint64_t seed, offset;   /* stochastic rounding of dy (int8 passes) */
    int x_nonneg;            /* quantize x as u8 (full range) for an int8 dw */
    const et_tensor *x_q;    /* optional: x as the forward saved it (x's shape):    */
                             /* u8/s8 of an int8 forward, or bf16/f16 bits of a     */
                             /* 16-bit forward; the dw pass uses it as is when its  */
                             /* precision matches, else widens it to f32 first      */
    float x_scale;           /* an int8 x_q's per-tensor scale (unused for 16-bit)  */
} et_lowp_bwd_opts;

/* y (N, OC, OH, OW) f32 preallocated. xq_out (optional, NULL or data NULL):
 * receives x as the forward's product used it, for the autograd layer to save
 * at forward precision: int8, the quantized x (u8 when x_nonneg, else s8, x's
 * shape) and *xscale_out its scale; bf16 / fp16, x's 16-bit bits (half of
 * f32's bytes); fp32, unused. cache_w: 1 to
 * use the prepacked-weight cache for an int8 weight (et_lowp_weight_s8); 0
 * for a weight that is being trained (it changes every step, so an entry
 * would only cost its memory and a compare). */
et_status et_conv2d_forward_lowp(const et_backend *be, const et_tensor *x, const et_tensor *w,
                                 const et_tensor *bias, const et_conv2d_params *p, et_prec prec,
                                 int x_nonneg, int cache_w, et_tensor *y, et_tensor *xq_out,
                                 float *xscale_out);

/* Any of dx / dw / db may be NULL. x: f32 (N, C, H, W); its data may be NULL
 * (shape only) when o->x_q is given. dx and dw jobs are submitted back to
 * back, db is summed meanwhile. */
et_status et_conv2d_backward_lowp(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                  const et_tensor *w, const et_conv2d_params *p,
                                  const et_lowp_bwd_opts *o, et_tensor *dx, et_tensor *dw,
                                  et_tensor *db);

/* --- shared with linear_lowp.c ------------------------------------------- */

/* The primitive dtype of a precision (int8 -> ET_S8; the u8 case is chosen
 * per operand) and its element size. */
et_dtype et_prec_dtype(et_prec p);

/* A small owner of scratch buffers freed together. */
typedef struct et_lowp_bufs { void *p[24]; int n; } et_lowp_bufs;
void *et_lowp_alloc(et_lowp_bufs *b, size_t bytes);
void et_lowp_free(et_lowp_bufs *b);

/* dst = src (n f32) converted to `prec` (bf16/f16 bits; fp32: copied). */
et_status et_lowp_convert(const float *src, int64_t n, et_prec prec, void *dst);

/* Checks a saved x: u8/s8 (finite scale >= FLT_MIN) or bf16/f16, shape of `like`. */
et_status et_lowp_check_xq(const char *op, const et_tensor *xq, float scale, const et_tensor *like);

/* *buf = xq_out's data when the caller gave a buffer for the saved x (it must
 * be dtype dt of x's shape, else ET_ERR_VALUE), else NULL. */
et_status et_lowp_saved_out(const char *op, const et_tensor *xq_out, et_dtype dt, const et_tensor *x,
                            void **buf);

/* The dw pass's x operand (n elements) in precision pr, from what the forward
 * kept: x (f32; may be NULL when xq is given) or xq (et_lowp_bwd_opts.x_q).
 * xq already in pr's form is used as is; otherwise x (or xq widened to f32) is
 * converted, or quantized per tensor (u8 when x_nonneg). *out, *dt its data
 * and dtype (buffers from bufs), *sx its int8 scale (else 1). Profiler ranges
 * "dequantize.input" / "widen.input" / "convert.input" / "quantize.input". */
et_status et_lowp_saved_x(const char *op, const float *x, const et_tensor *xq, float x_scale,
                          int x_nonneg, int64_t n, et_prec pr, et_lowp_bufs *bufs,
                          const void **out, et_dtype *dt, float *sx);

/* x (n f32) quantized per tensor into q (u8 when nonneg, else s8). */
et_status et_lowp_quantize_x(const float *x, int64_t n, int nonneg, void *q, float *scale);

/* The forward's per-output-channel s8 weight w (oc, k): from the prepacked
 * weight cache (csrc/quant/wcache.h; *ref pinned, release it with
 * et_wcache_release after the job) or, when not cached, quantized into
 * buffers of `bufs` (ref->entry NULL; always when cache is 0). Bit-identical
 * either way. Profiler
 * ranges: "quantize.weight" (quantized now), "prepack.check" (cache hit). */
et_status et_lowp_weight_s8(const float *w, int64_t oc, int64_t k, int cache, et_lowp_bufs *bufs,
                            et_wcache_ref *ref, const int8_t **wq, const float **sw);

#endif
