/* activation.c - see activation.h. */
#include "activation.h"

#include <stddef.h>

/* Below this many elements a parallel region costs more than it saves. */
#define ET_ACT_PAR_MIN 32768

et_status et_relu_forward(const float *x, float *y, int64_t n)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "relu_forward: negative size %lld", (long long)n);
    if (n > 0 && (!x || !y)) return et_error(ET_ERR_VALUE, "relu_forward: NULL buffer");
    #pragma omp parallel for simd schedule(static) if(n > ET_ACT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        /* `v < 0 ? 0 : v` keeps NaN (NaN < 0 is false), like torch.relu */
        y[i] = v < 0.0f ? 0.0f : v;
    }
    return ET_OK;
}

et_status et_relu_backward(const float *dy, const float *y, float *dx, int64_t n)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "relu_backward: negative size %lld", (long long)n);
    if (n > 0 && (!dy || !y || !dx)) return et_error(ET_ERR_VALUE, "relu_backward: NULL buffer");
    #pragma omp parallel for simd schedule(static) if(n > ET_ACT_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    return ET_OK;
}
