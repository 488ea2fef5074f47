/* softmax.h - log_softmax over the class dimension and the negative
 * log-likelihood loss (mean reduction), the two halves of PyTorch's
 * cross_entropy, on the CPU.
 *
 * x, y, dy, dx, logp, dlogp: (N, C) contiguous float32; target: (N,) int64.
 */
#ifndef ET_KERNELS_SOFTMAX_H
#define ET_KERNELS_SOFTMAX_H

#include <stdint.h>

#include "../core/status.h"

/* y[n, :] = x[n, :] - max - log(sum(exp(x[n, :] - max))) (stable). */
et_status et_log_softmax_forward(const float *x, int64_t N, int64_t C, float *y);
/* dx = dy - exp(y) * sum(dy) per row. */
et_status et_log_softmax_backward(const float *dy, const float *y, int64_t N, int64_t C,
                                  float *dx);

/* *loss = -mean_n logp[n, target[n]]; a target outside [0, C) is an error
 * naming the value and its index. N == 0 gives NaN (PyTorch's mean of
 * nothing). */
et_status et_nll_loss_forward(const float *logp, const int64_t *target, int64_t N, int64_t C,
                              float *loss);
/* dlogp (N, C) = 0 except dlogp[n, target[n]] = -grad / N. */
et_status et_nll_loss_backward(const int64_t *target, int64_t N, int64_t C, float grad,
                               float *dlogp);

#endif
