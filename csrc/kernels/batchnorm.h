/* batchnorm.h - batch normalisation over (N, C, H*W) on the CPU.
 *
 * Why on the CPU: per-channel statistics are a reduction over the whole
 * batch that inference engines fold into the convolution and cannot
 * differentiate; it is cheap next to the convolutions around it.
 * Semantics are PyTorch's native_batch_norm / native_batch_norm_backward:
 * per-channel sums are accumulated in double.
 *
 * x, y, dy, dx: (N, C, HW) contiguous float32 (HW = H*W, or 1 for (N, C));
 * weight, bias, running_mean, running_var, save_mean, save_invstd,
 * dweight, dbias: (C,). weight/bias NULL mean 1/0.
 */
#ifndef ET_KERNELS_BATCHNORM_H
#define ET_KERNELS_BATCHNORM_H

#include <stdint.h>

#include "../core/status.h"

/* training: mean and biased variance of the batch normalise x; when given,
 * running_mean/var are updated in place:
 *   running = (1 - momentum) * running + momentum * stat
 * with the UNBIASED variance (M / (M - 1), M = N*HW). M == 1 is an error
 * (PyTorch: "Expected more than 1 value per channel when training").
 * eval: running_mean/var (required) normalise x.
 * save_mean / save_invstd receive the statistics used (batch or running),
 * invstd = 1 / sqrt(var + eps), for et_batch_norm_backward. */
et_status et_batch_norm_forward(const float *x, int64_t N, int64_t C, int64_t HW,
                                const float *weight, const float *bias,
                                float *running_mean, float *running_var,
                                int training, double momentum, double eps,
                                float *y, float *save_mean, float *save_invstd);

/* training: the full gradient through the batch statistics,
 *   dx = w*invstd * (dy - mean(dy) - xhat * mean(dy*xhat));
 * eval: dx = dy * w * invstd (the statistics are constants).
 * dweight = sum(dy * xhat), dbias = sum(dy) (skipped when NULL). */
et_status et_batch_norm_backward(const float *dy, const float *x,
                                 int64_t N, int64_t C, int64_t HW,
                                 const float *weight, const float *save_mean,
                                 const float *save_invstd, int training,
                                 float *dx, float *dweight, float *dbias);

/* As et_batch_norm_forward (y, statistics and running stats bit for bit the
 * same), and also writes xhat = (x - mean) * invstd (float) rounded to
 * bfloat16 (bits, round to nearest even): the 2-byte copy of the input that
 * et_batch_norm_backward_xhat needs instead of the 4-byte x. xhat: like x. */
et_status et_batch_norm_forward_xhat(const float *x, int64_t N, int64_t C, int64_t HW,
                                     const float *weight, const float *bias,
                                     float *running_mean, float *running_var,
                                     int training, double momentum, double eps,
                                     float *y, float *save_mean, float *save_invstd,
                                     uint16_t *xhat);

/* et_batch_norm_backward from a saved bf16 xhat (et_batch_norm_forward_xhat):
 *   training: dx = w*invstd * (dy - mean(dy) - xhat * mean(dy*xhat));
 *   eval: dx = dy * w * invstd;  dweight = sum(dy * xhat), dbias = sum(dy).
 * The same formulas; they differ from et_batch_norm_backward's only by xhat's
 * bf16 rounding (relative error <= 2^-9 per element). */
et_status et_batch_norm_backward_xhat(const float *dy, const uint16_t *xhat,
                                      int64_t N, int64_t C, int64_t HW,
                                      const float *weight, const float *save_invstd,
                                      int training, float *dx, float *dweight, float *dbias);

#endif
