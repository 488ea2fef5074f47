/* linear.h - linear layer products as three matmul primitives on the queue.
 *
 *   y  = x . w^T + b   x (M, K), w (N, K), b (N), y (M, N)   matmul(x, w, trans_b)
 *   dx = dy . w        dy (M, N) -> dx (M, K)                matmul(dy, w)
 *   dw = dy^T . x      -> dw (N, K)                          matmul(dy, x, trans_a)
 *   db = sum_M dy      (CPU, while the matmuls run)
 * Transposes are flags of the primitive, never copies. float32, contiguous.
 */
#ifndef ET_OPS_LINEAR_H
#define ET_OPS_LINEAR_H

#include "../backends/backend.h"

/* Validates x (M, K), w (N, K), bias (N) | NULL/data NULL for `op`; y = (M, N). */
et_status et_linear_shape(const char *op, const et_tensor *x, const et_tensor *w,
                          const et_tensor *bias, int64_t y[2]);

et_status et_linear_forward(const et_backend *be, const et_tensor *x, const et_tensor *w,
                            const et_tensor *bias, et_tensor *y);

/* Any of dx / dw / db may be NULL. */
et_status et_linear_backward(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                             const et_tensor *w, et_tensor *dx, et_tensor *dw, et_tensor *db);

#endif
