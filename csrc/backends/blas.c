/* blas.c - the plain CPU path: OpenBLAS sgemm (+ im2col for convolutions).
 *
 * matmul: one cblas_sgemm, transposes passed as flags (no copies); the bias
 * is broadcast into y first and sgemm accumulates onto it (beta = 1).
 * conv2d: per (image, group) y_g (OC/G, OH*OW) = w_g (OC/G, C/G*KH*KW) . cols,
 * where cols = im2col(x_g), except for 1x1 stride-1 unpadded convs whose
 * input plane already is the (C/G, H*W) matrix; for batches of small images
 * (OH*OW < 256) the batch is folded into one gemm per group instead.
 */
#include "backend.h"

#include <cblas.h>
#include <string.h>

#include "../kernels/im2col.h"

static int blas_supports(et_op op, et_dtype dt)
{
    (void)op;
    return dt == ET_F32;
}

static et_status blas_matmul(const et_matmul_args *p)
{
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    float *y = p->y.data;   // (M, N)
    float beta = 0.0f;
    if (p->bias.data) {
        const float *bias = p->bias.data;   // (N)
        for (int64_t i = 0; i < M; i++) memcpy(y + i * N, bias, (size_t)N * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, p->trans_a ? CblasTrans : CblasNoTrans,
                p->trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K,
                1.0f, p->a.data, (blasint)p->a.shape[1], p->b.data, (blasint)p->b.shape[1],
                beta, y, (blasint)N);
    return ET_OK;
}

/* Batch-folded: per group ONE sgemm over every image,
 *   Y_g (OC/G, N*OH*OW) = w_g (OC/G, KK) . [cols_0 | cols_1 | ...] (KK, N*OH*OW)
 * then Y_g is scattered into y (N, OC, OH, OW). Few large, well-shaped
 * gemms beat many skinny ones: the backward-weight conv has OH*OW = KH*KW
 * (e.g. 9) output pixels per "image" and a huge reduction. */
static et_status blas_conv2d_folded(const et_conv2d_args *p, float *cols, float *ybuf, float *scratch)
{
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int64_t Cg = C / G, OCg = OC / G, KK = Cg * KH * KW, OHW = OH * OW, NB = N * OHW;
    const float *x = p->x.data, *w = p->w.data, *bias = p->bias.data;
    float *y = p->y.data;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t n = 0; n < N; n++) {   // cols[:, n*OHW : (n+1)*OHW] = im2col(x[n, group g])
            const float *xg = x + (n * C + g * Cg) * H * W;
            et_im2col_f32(xg, Cg, H, W, KH, KW, p->stride, p->pad_lo, p->dilation, OH, OW, scratch);
            for (int64_t r = 0; r < KK; r++)
                memcpy(cols + r * NB + n * OHW, scratch + r * OHW, (size_t)OHW * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)OCg, (blasint)NB,
                    (blasint)KK, 1.0f, w + g * OCg * KK, (blasint)KK, cols, (blasint)NB, 0.0f,
                    ybuf, (blasint)NB);
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < OCg; o++) {
                float *dst = y + (n * OC + g * OCg + o) * OHW;
                const float *src = ybuf + o * NB + n * OHW;
                const float b = bias ? bias[g * OCg + o] : 0.0f;
                for (int64_t j = 0; j < OHW; j++) dst[j] = src[j] + b;
            }
    }
    return ET_OK;
}

static et_status blas_conv2d(const et_conv2d_args *p)
{
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int64_t Cg = C / G, OCg = OC / G, KK = Cg * KH * KW, OHW = OH * OW;
    const float *x = p->x.data;       // (N, C, H, W)
    const float *w = p->w.data;       // (OC, C/G, KH, KW)
    const float *bias = p->bias.data; // (OC) or NULL
    float *y = p->y.data;             // (N, OC, OH, OW)
    const int direct = KH == 1 && KW == 1 && p->stride[0] == 1 && p->stride[1] == 1 &&
                       p->pad_lo[0] == 0 && p->pad_lo[1] == 0 && OH == H && OW == W;
    /* fold the batch into one gemm per group when the images are small
     * (few output pixels each) and the folded buffers stay modest */
    const double fold_bytes = 4.0 * ((double)KK * N * OHW + (double)OCg * N * OHW + (double)KK * OHW);
    if (N > 1 && OHW < 256 && fold_bytes <= 256.0 * 1024 * 1024) {
        float *cols = et_aligned_alloc((size_t)(KK * N * OHW) * sizeof(float));   // (KK, N*OHW)
        float *ybuf = et_aligned_alloc((size_t)(OCg * N * OHW) * sizeof(float));  // (OC/G, N*OHW)
        float *scratch = et_aligned_alloc((size_t)(KK * OHW) * sizeof(float));    // (KK, OHW)
        et_status st = (cols && ybuf && scratch)
            ? blas_conv2d_folded(p, cols, ybuf, scratch)
            : et_error(ET_ERR_NOMEM, "blas conv2d: cannot allocate %.0f bytes of folded buffers",
                       fold_bytes);
        et_aligned_free(cols);
        et_aligned_free(ybuf);
        et_aligned_free(scratch);
        return st;
    }
    float *cols = NULL;
    if (!direct) {
        cols = et_aligned_alloc((size_t)(KK * OHW) * sizeof(float));   // (KK, OHW)
        if (!cols) return et_error(ET_ERR_NOMEM, "blas conv2d: cannot allocate im2col buffer "
                                   "(%lld x %lld floats)", (long long)KK, (long long)OHW);
    }
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            const float *xg = x + (n * C + g * Cg) * H * W;   // (C/G, H, W)
            const float *wg = w + g * OCg * KK;               // (OC/G, KK)
            float *yg = y + (n * OC + g * OCg) * OHW;         // (OC/G, OHW)
            const float *src = xg;
            if (!direct) {
                et_im2col_f32(xg, Cg, H, W, KH, KW, p->stride, p->pad_lo, p->dilation, OH, OW, cols);
                src = cols;
            }
            float beta = 0.0f;
            if (bias) {
                for (int64_t o = 0; o < OCg; o++) {
                    const float b = bias[g * OCg + o];
                    float *row = yg + o * OHW;
                    for (int64_t j = 0; j < OHW; j++) row[j] = b;
                }
                beta = 1.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)OCg, (blasint)OHW,
                        (blasint)KK, 1.0f, wg, (blasint)KK, src, (blasint)OHW, beta, yg,
                        (blasint)OHW);
        }
    }
    et_aligned_free(cols);
    return ET_OK;
}

const et_backend et_backend_blas = {
    .name = "blas",
    .supports = blas_supports,
    .matmul = blas_matmul,
    .conv2d = blas_conv2d,
};
