/* linear_lowp.h - linear forward / backward in low precision through the
 * matmul forward primitive (issue 3, section 4). Precisions and rules as
 * conv2d_lowp.h:
 *   y  = x . w^T + b   int8: x per-tensor (u8|s8), w per-row (= output
 *                      feature) s8; matmul(xq, wq, trans_b) -> s32 (M, N);
 *                      y = acc * (sx * sw[n]) + b[n]
 *   dx = dy . w        int8: dy stochastic s8; w^T (K, N) quantized per row
 *                      (= dx's feature k); matmul(dyq, wtq, trans_b) -> (M, K)
 *   dw = dy^T . x      int8: matmul(xq, dyq, trans_a) -> s32 (K, N) (x first:
 *                      the u8 operand must be the first), dequantized by
 *                      sx * sdy and transposed to (N, K)
 *   db = sum_M dy      f32, CPU
 * bf16/fp16: operands rounded to nearest even, f32 out (bias in the primitive).
 * x (M, K), w (N, K), dy (M, N).
 */
#ifndef ET_OPS_LINEAR_LOWP_H
#define ET_OPS_LINEAR_LOWP_H

#include "conv2d_lowp.h"
#include "linear.h"

/* y (M, N) f32 preallocated; cache_w, xq_out, xscale_out as et_conv2d_forward_lowp. */
et_status et_linear_forward_lowp(const et_backend *be, const et_tensor *x, const et_tensor *w,
                                 const et_tensor *bias, et_prec prec, int x_nonneg, int cache_w,
                                 et_tensor *y, et_tensor *xq_out, float *xscale_out);

/* Any of dx / dw / db may be NULL; x->data may be NULL when o->x_q is given. */
et_status et_linear_backward_lowp(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                  const et_tensor *w, const et_lowp_bwd_opts *o, et_tensor *dx,
                                  et_tensor *dw, et_tensor *db);

#endif
