/* optim.c - see optim.h. Elementwise: OpenMP splits large tensors. */
#include "optim.h"

#include <math.h>

#define ET_OPT_PAR_MIN 65536

et_status et_sgd_step(float *param, const float *grad, float *buf, int64_t n,
                      double lr, double momentum, double dampening, double weight_decay,
                      int nesterov, int first)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "sgd_step: negative size %lld", (long long)n);
    if (!(lr >= 0.0)) return et_error(ET_ERR_VALUE, "sgd_step: Invalid learning rate: %g", lr);
    if (!(momentum >= 0.0))
        return et_error(ET_ERR_VALUE, "sgd_step: Invalid momentum value: %g", momentum);
    if (!(weight_decay >= 0.0))
        return et_error(ET_ERR_VALUE, "sgd_step: Invalid weight_decay value: %g", weight_decay);
    if (!isfinite(dampening))
        return et_error(ET_ERR_VALUE, "sgd_step: Invalid dampening value: %g", dampening);
    if (nesterov && (momentum <= 0.0 || dampening != 0.0))
        return et_error(ET_ERR_VALUE, "sgd_step: Nesterov momentum requires a momentum and zero "
                        "dampening (momentum=%g, dampening=%g)", momentum, dampening);
    if (momentum != 0.0 && !buf)
        return et_error(ET_ERR_VALUE, "sgd_step: momentum %g needs a momentum_buffer", momentum);
    /* PyTorch hands the scalars to float kernels: round them to float */
    const float wd = (float)weight_decay, m = (float)momentum;
    const float damp = (float)(1.0 - dampening), nlr = (float)(-lr);
    const int use_m = momentum != 0.0, use_wd = weight_decay != 0.0;
    #pragma omp parallel for schedule(static) if(n > ET_OPT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (use_wd) g = g + wd * param[i];
        if (use_m) {
            float b = first ? g : buf[i] * m + damp * g;
            buf[i] = b;
            g = nesterov ? g + m * b : b;
        }
        param[i] = param[i] + nlr * g;
    }
    return ET_OK;
}

et_status et_adam_step(float *param, const float *grad, float *exp_avg, float *exp_avg_sq,
                       int64_t n, int64_t step, double lr, double beta1, double beta2,
                       double eps, double weight_decay)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "adam_step: negative size %lld", (long long)n);
    if (step < 1) return et_error(ET_ERR_VALUE, "adam_step: step must be >= 1, got %lld",
                                  (long long)step);
    if (!(lr >= 0.0)) return et_error(ET_ERR_VALUE, "adam_step: Invalid learning rate: %g", lr);
    if (!(eps >= 0.0)) return et_error(ET_ERR_VALUE, "adam_step: Invalid epsilon value: %g", eps);
    if (!(beta1 >= 0.0 && beta1 < 1.0))
        return et_error(ET_ERR_VALUE, "adam_step: Invalid beta parameter at index 0: %g", beta1);
    if (!(beta2 >= 0.0 && beta2 < 1.0))
        return et_error(ET_ERR_VALUE, "adam_step: Invalid beta parameter at index 1: %g", beta2);
    if (!(weight_decay >= 0.0))
        return et_error(ET_ERR_VALUE, "adam_step: Invalid weight_decay value: %g", weight_decay);
    /* scalars as torch.optim computes them: in Python floats (double) */
    double bc1 = 1.0 - pow(beta1, (double)step);
    double bc2 = 1.0 - pow(beta2, (double)step);
    double step_size = lr / bc1;
    double bc2_sqrt = sqrt(bc2);
    const float wd = (float)weight_decay, w1 = (float)(1.0 - beta1);
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    const float bc2s = (float)bc2_sqrt, epsf = (float)eps, nstep = (float)(-step_size);
    const int use_wd = weight_decay != 0.0;
    #pragma omp parallel for schedule(static) if(n > ET_OPT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (use_wd) g = g + wd * param[i];
        /* exp_avg.lerp_(g, 1 - beta1): torch's lerp for weight < 0.5 */
        float m = exp_avg[i];
        m = w1 < 0.5f ? m + w1 * (g - m) : g - (g - m) * (1.0f - w1);
        exp_avg[i] = m;
        float v = exp_avg_sq[i] * b2 + w2 * g * g;   /* mul_(beta2).addcmul_(g, g, 1-beta2) */
        exp_avg_sq[i] = v;
        float denom = sqrtf(v) / bc2s + epsf;
        param[i] = param[i] + nstep * (m / denom);
    }
    return ET_OK;
}
