/* blas.c - the plain CPU path: OpenBLAS sgemm (+ im2col for convolutions).
 *
 * matmul: one cblas_sgemm, transposes passed as flags (no copies); the bias
 * is broadcast into y first and sgemm accumulates onto it (beta = 1).
 * conv2d: per (image, group) y_g (OC/G, OH*OW) = w_g (OC/G, C/G*KH*KW) . cols,
 * where cols = im2col(x_g), except for 1x1 stride-1 unpadded convs whose
 * input plane already is the (C/G, H*W) matrix; for batches of small images
 * (OH*OW < 256) the batch is folded into one gemm per group instead.
 *
 * Low precision (csrc/BINDINGS.md): OpenBLAS 0.3.21 has no integer gemm, so int8
 * (u8|s8 x s8 -> s32) is declared unsupported here and runs on `ref`
 * (registry.c's counted fallback). bf16 matmul runs OpenBLAS's own
 * cblas_sbgemm (bf16 operands, f32 accumulation and output) when the
 * library exports it: cblas.h always declares it, but Debian's 0.3.21 is
 * built without BUILD_BFLOAT16 and has no such symbol, so it is a weak
 * reference checked at run time. Otherwise, and for bf16 conv and every
 * f16 product, the operands are widened to f32 exactly inside this backend
 * (products of bf16/f16 values are exact in f32) and sgemm runs: OpenBLAS
 * has no f16 gemm.
 */
#include "backend.h"

#include <cblas.h>
#include <string.h>

#include "../kernels/im2col.h"

/* NULL at run time when libopenblas was built without bf16 (Debian's). */
#pragma weak cblas_sbgemm

static int blas_supports(et_op op, et_dtype dt)
{
    (void)op;
    return dt == ET_F32 || dt == ET_BF16 || dt == ET_F16;
}

static et_status blas_matmul_f32(const et_matmul_args *p);
static et_status blas_conv2d_f32(const et_conv2d_args *p);

/* bf16: y(M,N) f32 = op(a) bf16 . op(b) bf16 (+ bias) through cblas_sbgemm. */
static et_status blas_matmul_bf16(const et_matmul_args *p)
{
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    float *y = p->y.data;   // (M, N) f32
    float beta = 0.0f;
    if (p->bias.data) {
        const float *bias = p->bias.data;   // (N) f32
        for (int64_t i = 0; i < M; i++) memcpy(y + i * N, bias, (size_t)N * sizeof(float));
        beta = 1.0f;
    }
    cblas_sbgemm(CblasRowMajor, p->trans_a ? CblasTrans : CblasNoTrans,
                 p->trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K,
                 1.0f, (const bfloat16 *)p->a.data, (blasint)p->a.shape[1],
                 (const bfloat16 *)p->b.data, (blasint)p->b.shape[1], beta, y, (blasint)N);
    return ET_OK;
}

/* f16 matmul, bf16/f16 conv: widen both operands to f32 exactly, run sgemm. */
static et_status blas_matmul_widened(const et_matmul_args *p)
{
    et_matmul_args q = *p;
    float *fa = NULL, *fb = NULL;
    et_status st = et_lowp_to_f32("blas matmul", &p->a, &fa);
    if (st == ET_OK) st = et_lowp_to_f32("blas matmul", &p->b, &fb);
    if (st == ET_OK) {
        q.a.data = fa; q.a.dtype = ET_F32;
        q.b.data = fb; q.b.dtype = ET_F32;
        st = blas_matmul_f32(&q);
    }
    et_aligned_free(fa);
    et_aligned_free(fb);
    return st;
}

static et_status blas_conv2d_widened(const et_conv2d_args *p)
{
    et_conv2d_args q = *p;
    float *fx = NULL, *fw = NULL;
    et_status st = et_lowp_to_f32("blas conv2d", &p->x, &fx);
    if (st == ET_OK) st = et_lowp_to_f32("blas conv2d", &p->w, &fw);
    if (st == ET_OK) {
        q.x.data = fx; q.x.dtype = ET_F32;
        q.w.data = fw; q.w.dtype = ET_F32;
        st = blas_conv2d_f32(&q);
    }
    et_aligned_free(fx);
    et_aligned_free(fw);
    return st;
}

static et_status blas_matmul(const et_matmul_args *p)
{
    switch (p->a.dtype) {
    case ET_F32: return blas_matmul_f32(p);
    case ET_BF16: return cblas_sbgemm ? blas_matmul_bf16(p) : blas_matmul_widened(p);
    case ET_F16: return blas_matmul_widened(p);
    default: return et_backend_unsupported(&et_backend_blas, ET_OP_MATMUL, p->a.dtype);
    }
}

static et_status blas_conv2d(const et_conv2d_args *p)
{
    switch (p->x.dtype) {
    case ET_F32: return blas_conv2d_f32(p);
    case ET_BF16: case ET_F16: return blas_conv2d_widened(p);
    default: return et_backend_unsupported(&et_backend_blas, ET_OP_CONV2D, p->x.dtype);
    }
}

static et_status blas_matmul_f32(const et_matmul_args *p)
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

static et_status blas_conv2d_f32(const et_conv2d_args *p)
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
