/* batchnorm.c - see batchnorm.h. Channels are independent: OpenMP splits
 * them between threads; each channel's statistics are summed in double by
 * one thread (deterministic, no atomics). */
#include "batchnorm.h"

#include <math.h>

#include "../quant/convert.h"   /* et_bf16_from_f32 / et_f32_from_bf16 */

#define ET_BN_PAR_MIN 32768

static et_status bn_check(const char *op, int64_t N, int64_t C, int64_t HW)
{
    if (N < 0 || C < 1 || HW < 1)
        return et_error(ET_ERR_VALUE, "%s: bad sizes N=%lld, C=%lld, H*W=%lld (C and H*W must "
                        "be >= 1)", op, (long long)N, (long long)C, (long long)HW);
    return ET_OK;
}

/* The forward of both entry points; xhat NULL: not written. */
static et_status bn_forward(const float *x, int64_t N, int64_t C, int64_t HW,
                            const float *weight, const float *bias,
                            float *running_mean, float *running_var,
                            int training, double momentum, double eps,
                            float *y, float *save_mean, float *save_invstd, uint16_t *xhat)
{
    ET_TRY(bn_check("batch_norm_forward", N, C, HW));
    const int64_t M = N * HW;   /* values per channel */
    if (!(eps >= 0.0) || !isfinite(eps))
        return et_error(ET_ERR_VALUE, "batch_norm_forward: eps must be finite and >= 0, got %g", eps);
    if (!isfinite(momentum))
        return et_error(ET_ERR_VALUE, "batch_norm_forward: momentum must be finite, got %g", momentum);
    if ((running_mean == NULL) != (running_var == NULL))
        return et_error(ET_ERR_VALUE, "batch_norm_forward: running_mean and running_var must "
                        "both be given or both be None");
    if (training && M == 1)
        return et_error(ET_ERR_VALUE, "batch_norm_forward: Expected more than 1 value per "
                        "channel when training, got input size (N=%lld, C=%lld, H*W=%lld)",
                        (long long)N, (long long)C, (long long)HW);
    if (!training && !running_mean)
        return et_error(ET_ERR_VALUE, "batch_norm_forward: running_mean must be defined in "
                        "evaluation mode");
    const int64_t CHW = C * HW;
    #pragma omp parallel for schedule(static) if(N * CHW > ET_BN_PAR_MIN)
    for (int64_t c = 0; c < C; c++) {
        double mean, invstd;
        if (training) {
            double sum = 0.0;
            for (int64_t n = 0; n < N; n++) {
                const float *xp = x + n * CHW + c * HW;
                #pragma omp simd reduction(+:sum)
                for (int64_t k = 0; k < HW; k++) sum += xp[k];
            }
            mean = M > 0 ? sum / (double)M : 0.0;
            double ss = 0.0;   /* two-pass: sum of squared deviations */
            for (int64_t n = 0; n < N; n++) {
                const float *xp = x + n * CHW + c * HW;
                #pragma omp simd reduction(+:ss)
                for (int64_t k = 0; k < HW; k++) { double d = xp[k] - mean; ss += d * d; }
            }
            double var = M > 0 ? ss / (double)M : 0.0;
            invstd = 1.0 / sqrt(var + eps);
            if (running_mean && M > 1) {
                double unbiased = ss / (double)(M - 1);
                running_mean[c] = (float)(momentum * mean + (1.0 - momentum) * running_mean[c]);
                running_var[c] = (float)(momentum * unbiased + (1.0 - momentum) * running_var[c]);
            }
        } else {
            mean = running_mean[c];
            invstd = 1.0 / sqrt((double)running_var[c] + eps);
        }
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        /* y = x * alpha + beta, as PyTorch's transform_input */
        double w = weight ? weight[c] : 1.0, b = bias ? bias[c] : 0.0;
        float alpha = (float)(invstd * w);
        float beta = (float)(b - mean * invstd * w);
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + n * CHW + c * HW;
            float *yp = y + n * CHW + c * HW;
            for (int64_t k = 0; k < HW; k++) yp[k] = xp[k] * alpha + beta;
        }
        if (xhat) {
            /* the normalised input, (x - mean) * invstd in float, rounded to bf16 */
            float fm = (float)mean, fi = (float)invstd;
            for (int64_t n = 0; n < N; n++) {
                const float *xp = x + n * CHW + c * HW;
                uint16_t *hp = xhat + n * CHW + c * HW;
                for (int64_t k = 0; k < HW; k++) hp[k] = et_bf16_from_f32((xp[k] - fm) * fi);
            }
        }
    }
    return ET_OK;
}

et_status et_batch_norm_forward(const float *x, int64_t N, int64_t C, int64_t HW,
                                const float *weight, const float *bias,
                                float *running_mean, float *running_var,
                                int training, double momentum, double eps,
                                float *y, float *save_mean, float *save_invstd)
{
    return bn_forward(x, N, C, HW, weight, bias, running_mean, running_var, training,
                      momentum, eps, y, save_mean, save_invstd, NULL);
}

et_status et_batch_norm_forward_xhat(const float *x, int64_t N, int64_t C, int64_t HW,
                                     const float *weight, const float *bias,
                                     float *running_mean, float *running_var,
                                     int training, double momentum, double eps,
                                     float *y, float *save_mean, float *save_invstd,
                                     uint16_t *xhat)
{
    if (N * C * HW > 0 && !xhat)
        return et_error(ET_ERR_VALUE, "batch_norm_forward_xhat: NULL xhat buffer");
    return bn_forward(x, N, C, HW, weight, bias, running_mean, running_var, training,
                      momentum, eps, y, save_mean, save_invstd, xhat);
}

et_status et_batch_norm_backward(const float *dy, const float *x,
                                 int64_t N, int64_t C, int64_t HW,
                                 const float *weight, const float *save_mean,
                                 const float *save_invstd, int training,
                                 float *dx, float *dweight, float *dbias)
{
    ET_TRY(bn_check("batch_norm_backward", N, C, HW));
    const int64_t M = N * HW, CHW = C * HW;
    #pragma omp parallel for schedule(static) if(N * CHW > ET_BN_PAR_MIN)
    for (int64_t c = 0; c < C; c++) {
        double mean = save_mean[c], invstd = save_invstd[c];
        double w = weight ? weight[c] : 1.0;
        double sum_dy = 0.0, dotp = 0.0;   /* sum(dy), sum((x - mean) * dy) */
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + n * CHW + c * HW, *dyp = dy + n * CHW + c * HW;
            #pragma omp simd reduction(+:sum_dy, dotp)
            for (int64_t k = 0; k < HW; k++) {
                sum_dy += dyp[k];
                dotp += ((double)xp[k] - mean) * dyp[k];
            }
        }
        if (training) {
            /* dx = (dy - mean(dy) - (x - mean) * dotp * invstd^2 / M) * invstd * w */
            double kx = M > 0 ? dotp * invstd * invstd / (double)M : 0.0;
            double gmean = M > 0 ? sum_dy / (double)M : 0.0;
            double scale = invstd * w;
            for (int64_t n = 0; n < N; n++) {
                const float *xp = x + n * CHW + c * HW, *dyp = dy + n * CHW + c * HW;
                float *dxp = dx + n * CHW + c * HW;
                for (int64_t k = 0; k < HW; k++)
                    dxp[k] = (float)((dyp[k] - gmean - ((double)xp[k] - mean) * kx) * scale);
            }
        } else {
            float scale = (float)(invstd * w);
            for (int64_t n = 0; n < N; n++) {
                const float *dyp = dy + n * CHW + c * HW;
                float *dxp = dx + n * CHW + c * HW;
                for (int64_t k = 0; k < HW; k++) dxp[k] = dyp[k] * scale;
            }
        }
        if (dweight) dweight[c] = (float)(dotp * invstd);
        if (dbias) dbias[c] = (float)sum_dy;
    }
    return ET_OK;
}

et_status et_batch_norm_backward_xhat(const float *dy, const uint16_t *xhat,
                                      int64_t N, int64_t C, int64_t HW,
                                      const float *weight, const float *save_invstd,
                                      int training, float *dx, float *dweight, float *dbias)
{
    ET_TRY(bn_check("batch_norm_backward_xhat", N, C, HW));
    const int64_t M = N * HW, CHW = C * HW;
    #pragma omp parallel for schedule(static) if(N * CHW > ET_BN_PAR_MIN)
    for (int64_t c = 0; c < C; c++) {
        double invstd = save_invstd[c];
        double w = weight ? weight[c] : 1.0;
        double sum_dy = 0.0, dotp = 0.0;   /* sum(dy), sum(xhat * dy) */
        for (int64_t n = 0; n < N; n++) {
            const uint16_t *hp = xhat + n * CHW + c * HW;
            const float *dyp = dy + n * CHW + c * HW;
            #pragma omp simd reduction(+:sum_dy, dotp)
            for (int64_t k = 0; k < HW; k++) {
                sum_dy += dyp[k];
                dotp += (double)et_f32_from_bf16(hp[k]) * dyp[k];
            }
        }
        if (training) {
            /* dx = (dy - mean(dy) - xhat * mean(xhat * dy)) * invstd * w */
            double kx = M > 0 ? dotp / (double)M : 0.0;
            double gmean = M > 0 ? sum_dy / (double)M : 0.0;
            double scale = invstd * w;
            for (int64_t n = 0; n < N; n++) {
                const uint16_t *hp = xhat + n * CHW + c * HW;
                const float *dyp = dy + n * CHW + c * HW;
                float *dxp = dx + n * CHW + c * HW;
                for (int64_t k = 0; k < HW; k++)
                    dxp[k] = (float)((dyp[k] - gmean - (double)et_f32_from_bf16(hp[k]) * kx) * scale);
            }
        } else {
            float scale = (float)(invstd * w);
            for (int64_t n = 0; n < N; n++) {
                const float *dyp = dy + n * CHW + c * HW;
                float *dxp = dx + n * CHW + c * HW;
                for (int64_t k = 0; k < HW; k++) dxp[k] = dyp[k] * scale;
            }
        }
        if (dweight) dweight[c] = (float)dotp;
        if (dbias) dbias[c] = (float)sum_dy;
    }
    return ET_OK;
}
