/* softmax.c - see softmax.h. Rows are independent: OpenMP splits them. */
#include "softmax.h"

#include <math.h>
#include <string.h>

#define ET_SM_PAR_MIN 16384

static et_status sm_check(const char *op, int64_t N, int64_t C)
{
    if (N < 0 || C < 1)
        return et_error(ET_ERR_VALUE, "%s: bad sizes N=%lld, C=%lld (C must be >= 1)", op,
                        (long long)N, (long long)C);
    return ET_OK;
}

et_status et_log_softmax_forward(const float *x, int64_t N, int64_t C, float *y)
{
    ET_TRY(sm_check("log_softmax_forward", N, C));
    #pragma omp parallel for schedule(static) if(N * C > ET_SM_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;   /* (C,) */
        float *yr = y + n * C;
        float mx = -INFINITY;
        for (int64_t c = 0; c < C; c++) if (xr[c] > mx || isnan(xr[c])) mx = xr[c];
        if (isinf(mx) && mx < 0) mx = 0.0f;   /* all -inf: avoid inf - inf */
        double s = 0.0;
        for (int64_t c = 0; c < C; c++) s += expf(xr[c] - mx);
        float lse = (float)log(s);
        for (int64_t c = 0; c < C; c++) yr[c] = xr[c] - mx - lse;
    }
    return ET_OK;
}

et_status et_log_softmax_backward(const float *dy, const float *y, int64_t N, int64_t C,
                                  float *dx)
{
    ET_TRY(sm_check("log_softmax_backward", N, C));
    #pragma omp parallel for schedule(static) if(N * C > ET_SM_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *dyr = dy + n * C, *yr = y + n * C;
        float *dxr = dx + n * C;
        double s = 0.0;
        for (int64_t c = 0; c < C; c++) s += dyr[c];
        float sf = (float)s;
        for (int64_t c = 0; c < C; c++) dxr[c] = dyr[c] - expf(yr[c]) * sf;
    }
    return ET_OK;
}

static et_status check_targets(const char *op, const int64_t *target, int64_t N, int64_t C)
{
    for (int64_t n = 0; n < N; n++)
        if (target[n] < 0 || target[n] >= C)
            return et_error(ET_ERR_VALUE, "%s: target %lld at index %lld is out of bounds "
                            "[0, %lld) (N=%lld, C=%lld)", op, (long long)target[n],
                            (long long)n, (long long)C, (long long)N, (long long)C);
    return ET_OK;
}

et_status et_nll_loss_forward(const float *logp, const int64_t *target, int64_t N, int64_t C,
                              float *loss)
{
    ET_TRY(sm_check("nll_loss_forward", N, C));
    ET_TRY(check_targets("nll_loss_forward", target, N, C));
    if (N == 0) { *loss = NAN; return ET_OK; }
    double s = 0.0;
    for (int64_t n = 0; n < N; n++) s += logp[n * C + target[n]];
    *loss = (float)(-s / (double)N);
    return ET_OK;
}

et_status et_nll_loss_backward(const int64_t *target, int64_t N, int64_t C, float grad,
                               float *dlogp)
{
    ET_TRY(sm_check("nll_loss_backward", N, C));
    ET_TRY(check_targets("nll_loss_backward", target, N, C));
    if (N == 0) return ET_OK;
    memset(dlogp, 0, (size_t)(N * C) * sizeof(float));
    float g = -grad / (float)N;
    for (int64_t n = 0; n < N; n++) dlogp[n * C + target[n]] = g;
    return ET_OK;
}
