/* ref.c - the portable plain-C backend: the oracle every other backend is
 * compared with.
 *
 * matmul: a straightforward gemm. When b is not transposed the loop order is
 * i-k-j (the inner loop streams a row of b into a row of y, so it
 * vectorizes), blocked over k and j so the b block stays in cache while a
 * thread sweeps its rows; when b is transposed every y(i,j) is a dot
 * product of two contiguous rows (inner loop over k, a SIMD reduction).
 * conv2d: per (image, group) im2col + the same gemm:
 *   y_g (OC/G, OH*OW) = w_g (OC/G, C/G*KH*KW) . cols (C/G*KH*KW, OH*OW)
 * When OH*OW is tiny (the backward-weight conv: the "output" is the KHxKW
 * kernel and the reduction runs over N*OH*OW) cols is transposed first so
 * that the long dimension is the contiguous inner loop.
 * OpenMP splits rows of y across threads (static schedule, so the same
 * thread owns the same rows in every block: no races, no barriers).
 */
#include "backend.h"

#include <omp.h>
#include <string.h>

#include "../kernels/im2col.h"

/* C(M,N) (row stride ldc) = op(A)(M,K) . op(B)(K,N), overwriting C.
 * A(i,k) = ta ? A[k*lda + i] : A[i*lda + k]; B(k,j) = tb ? B[j*ldb + k] : B[k*ldb + j]. */
static void ref_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float *C, int64_t ldc)
{
    /* inside an outer parallel region (ref_conv2d over images) stay serial */
    const int par = (double)M * (double)N * (double)K > 65536.0 && M > 1 && !omp_in_parallel();
    if (!tb) {
        enum { JB = 512, KB = 128 };   /* b block: 128 x 512 floats = 256 KiB (L2) */
#pragma omp parallel if (par)
        {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
            for (int64_t j0 = 0; j0 < N; j0 += JB) {
                const int64_t jn = (N - j0 < JB) ? N - j0 : JB;
                for (int64_t k0 = 0; k0 < K; k0 += KB) {
                    const int64_t k1 = (K - k0 < KB) ? K : k0 + KB;
#pragma omp for schedule(static) nowait
                    for (int64_t i = 0; i < M; i++) {
                        float *c = C + i * ldc + j0;
                        for (int64_t k = k0; k < k1; k++) {
                            const float a = ta ? A[k * lda + i] : A[i * lda + k];
                            const float *b = B + k * ldb + j0;
#pragma omp simd
                            for (int64_t j = 0; j < jn; j++) c[j] += a * b[j];
                        }
                    }
                }
            }
        }
    } else {
#pragma omp parallel for schedule(static) if (par)
        for (int64_t i = 0; i < M; i++) {
            for (int64_t j = 0; j < N; j++) {
                const float *b = B + j * ldb;
                float acc = 0.0f;
                if (!ta) {
                    const float *a = A + i * lda;
#pragma omp simd reduction(+:acc)
                    for (int64_t k = 0; k < K; k++) acc += a[k] * b[k];
                } else {
                    for (int64_t k = 0; k < K; k++) acc += A[k * lda + i] * b[k];
                }
                C[i * ldc + j] = acc;
            }
        }
    }
}

static int ref_supports(et_op op, et_dtype dt)
{
    (void)op;
    return dt == ET_F32;
}

static et_status ref_matmul(const et_matmul_args *p)
{
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    const float *a = p->a.data, *b = p->b.data;   // a (M,K) or (K,M); b (K,N) or (N,K)
    float *y = p->y.data;                          // (M,N)
    ref_sgemm(p->trans_a, p->trans_b, M, N, K, a, p->a.shape[1], b, p->b.shape[1], y, N);
    if (p->bias.data) {
        const float *bias = p->bias.data;         // (N)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) y[i * N + j] += bias[j];
    }
    return ET_OK;
}

static et_status ref_conv2d(const et_conv2d_args *p)
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
    const int transposed = OHW < 32 && KK >= 4 * OHW;
    /* One parallel region per call: split (image, group) pairs across
     * threads when there are enough of them (each thread its own buffers,
     * im2col and gemm then run serially inside); otherwise parallelize
     * inside the gemm. Few, large regions matter: the queue worker's
     * OpenMP team shares the cores with the main thread's. */
    const int64_t jobs = N * G;
    const int nthr = omp_get_max_threads();
    const int outer = jobs >= nthr && nthr > 1 && (double)OCg * OHW * KK * jobs > 262144.0;
    const size_t nbuf = (size_t)(KK * OHW) * sizeof(float);
    int fail = 0;
#pragma omp parallel if (outer) reduction(|:fail)
    {
        float *cols = NULL, *colsT = NULL;
        if (!direct && !(cols = et_aligned_alloc(nbuf))) fail = 1;           // (KK, OHW)
        if (transposed && !(colsT = et_aligned_alloc(nbuf))) fail = 1;       // (OHW, KK)
        if (!fail) {
#pragma omp for schedule(static)
            for (int64_t job = 0; job < jobs; job++) {
                const int64_t n = job / G, g = job % G;
                const float *xg = x + (n * C + g * Cg) * H * W;   // (C/G, H, W)
                const float *wg = w + g * OCg * KK;               // (OC/G, KK)
                float *yg = y + (n * OC + g * OCg) * OHW;         // (OC/G, OHW)
                const float *src = xg;                             // (KK, OHW)
                if (!direct) {
                    et_im2col_f32(xg, Cg, H, W, KH, KW, p->stride, p->pad_lo, p->dilation, OH, OW,
                                  cols);
                    src = cols;
                }
                if (transposed) {
                    for (int64_t r = 0; r < KK; r++)
                        for (int64_t c = 0; c < OHW; c++) colsT[c * KK + r] = src[r * OHW + c];
                    ref_sgemm(0, 1, OCg, OHW, KK, wg, KK, colsT, KK, yg, OHW);
                } else {
                    ref_sgemm(0, 0, OCg, OHW, KK, wg, KK, src, OHW, yg, OHW);
                }
                if (bias)
                    for (int64_t o = 0; o < OCg; o++) {
                        const float b = bias[g * OCg + o];
                        float *row = yg + o * OHW;
                        for (int64_t j = 0; j < OHW; j++) row[j] += b;
                    }
            }
        }
        et_aligned_free(cols);
        et_aligned_free(colsT);
    }
    if (fail)
        return et_error(ET_ERR_NOMEM, "ref conv2d: cannot allocate im2col buffers (%lld x %lld "
                        "floats) for input (%lld, %lld, %lld, %lld)", (long long)KK, (long long)OHW,
                        (long long)N, (long long)C, (long long)H, (long long)W);
    return ET_OK;
}

const et_backend et_backend_ref = {
    .name = "ref",
    .supports = ref_supports,
    .matmul = ref_matmul,
    .conv2d = ref_conv2d,
};
