/* optim.h - in-place optimizer updates on the CPU (master weights stay fp32).
 *
 * The arithmetic follows torch.optim's single-tensor implementations
 * (_single_tensor_sgd, _single_tensor_adam) step for step, in float32 with
 * the scalar hyper-parameters rounded to float where PyTorch does, so that
 * a training run tracks PyTorch's to rounding.
 * param, grad, momentum_buffer, exp_avg, exp_avg_sq: (n,) float32.
 */
#ifndef ET_KERNELS_OPTIM_H
#define ET_KERNELS_OPTIM_H

#include <stdint.h>

#include "../core/status.h"

/* g = grad + weight_decay * param;
 * momentum != 0: buf = first ? g : momentum * buf + (1 - dampening) * g;
 *                g = nesterov ? g + momentum * buf : buf;
 * param -= lr * g. grad is not modified. buf may be NULL when momentum == 0. */
et_status et_sgd_step(float *param, const float *grad, float *momentum_buffer, int64_t n,
                      double lr, double momentum, double dampening, double weight_decay,
                      int nesterov, int first);

/* step >= 1 (the step count after this update, as torch's state["step"]):
 * g = grad + weight_decay * param;
 * exp_avg = lerp(exp_avg, g, 1 - beta1); exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) g^2;
 * param -= lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps). */
et_status et_adam_step(float *param, const float *grad, float *exp_avg, float *exp_avg_sq,
                       int64_t n, int64_t step, double lr, double beta1, double beta2,
                       double eps, double weight_decay);

#endif
