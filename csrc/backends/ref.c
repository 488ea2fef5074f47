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
 *
 * Low precision (backend.h, csrc/BINDINGS.md), every combination:
 *   int8 (u8|s8 x s8 -> s32): integer-exact. The same gemm shapes with
 *     int32 accumulation while K * max|product| < 2^31 (K <= 65793 for
 *     u8.s8, 131071 for s8.s8: every partial sum is exact); beyond that an
 *     int64 accumulator and saturation to the int32 range. Convolutions
 *     im2col the 1-byte input (zero padding = integer 0, no zero points).
 *   bf16 / f16 (-> f32): both operands are widened to f32 exactly (every
 *     bf16/f16 value is an f32; a product of two bf16 (8-bit significands)
 *     or two f16 (11-bit) is exact in f32's 24 bits), then the f32 path
 *     runs: products exact, accumulation in f32 (the same rounding as an
 *     f32 gemm, not a wider accumulator).
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

/* ---- int8: C(M,N) int32 = op(A)(M,K) . op(B)(K,N) ------------------------
 * One function per (A type, B type): matmul is (u8|s8) x s8, the conv gemm
 * is weight s8 x cols (u8|s8). Same loop orders as ref_sgemm; the inner
 * loops widen bytes to int32 (vectorizes: vpmovzx/sx + vpmulld + vpaddd). */
#define ET_IGEMM(NAME, TA, TB)                                                                  \
static void NAME(int ta, int tb, int64_t M, int64_t N, int64_t K, const TA *A, int64_t lda,     \
                 const TB *B, int64_t ldb, int32_t *C, int64_t ldc, int wide)                    \
{                                                                                               \
    const int par = (double)M * (double)N * (double)K > 65536.0 && M > 1 && !omp_in_parallel(); \
    if (wide) { /* int64 accumulator, saturated: only when int32 partial sums could overflow */  \
_Pragma("omp parallel for schedule(static) if (par)")                                          \
        for (int64_t i = 0; i < M; i++)                                                         \
            for (int64_t j = 0; j < N; j++) {                                                   \
                int64_t acc = 0;                                                                \
                for (int64_t k = 0; k < K; k++)                                                 \
                    acc += (int64_t)(ta ? A[k * lda + i] : A[i * lda + k]) *                    \
                           (int64_t)(tb ? B[j * ldb + k] : B[k * ldb + j]);                     \
                C[i * ldc + j] = acc > INT32_MAX ? INT32_MAX : acc < INT32_MIN ? INT32_MIN      \
                                                                             : (int32_t)acc;   \
            }                                                                                   \
        return;                                                                                 \
    }                                                                                           \
    if (!tb) {                                                                                  \
        enum { JB = 1024, KB = 128 };  /* b block: 128 x 1024 bytes = 128 KiB */                \
_Pragma("omp parallel if (par)")                                                               \
        {                                                                                       \
_Pragma("omp for schedule(static)")                                                            \
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(int32_t)); \
            for (int64_t j0 = 0; j0 < N; j0 += JB) {                                            \
                const int64_t jn = (N - j0 < JB) ? N - j0 : JB;                                 \
                for (int64_t k0 = 0; k0 < K; k0 += KB) {                                        \
                    const int64_t k1 = (K - k0 < KB) ? K : k0 + KB;                             \
_Pragma("omp for schedule(static) nowait")                                                     \
                    for (int64_t i = 0; i < M; i++) {                                           \
                        int32_t *c = C + i * ldc + j0;                                          \
                        for (int64_t k = k0; k < k1; k++) {                                     \
                            const int32_t a = ta ? A[k * lda + i] : A[i * lda + k];             \
                            if (a == 0) continue;  /* post-ReLU activations: many zeros */      \
                            const TB *b = B + k * ldb + j0;                                     \
_Pragma("omp simd")                                                                            \
                            for (int64_t j = 0; j < jn; j++) c[j] += a * (int32_t)b[j];         \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    } else {                                                                                    \
_Pragma("omp parallel for schedule(static) if (par)")                                          \
        for (int64_t i = 0; i < M; i++) {                                                       \
            for (int64_t j = 0; j < N; j++) {                                                   \
                const TB *b = B + j * ldb;                                                      \
                int32_t acc = 0;                                                                \
                if (!ta) {                                                                      \
                    const TA *a = A + i * lda;                                                  \
_Pragma("omp simd reduction(+:acc)")                                                           \
                    for (int64_t k = 0; k < K; k++) acc += (int32_t)a[k] * (int32_t)b[k];       \
                } else {                                                                        \
                    for (int64_t k = 0; k < K; k++) acc += (int32_t)A[k * lda + i] * (int32_t)b[k]; \
                }                                                                               \
                C[i * ldc + j] = acc;                                                           \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

ET_IGEMM(igemm_u8s8, uint8_t, int8_t)
ET_IGEMM(igemm_s8s8, int8_t, int8_t)
ET_IGEMM(igemm_s8u8, int8_t, uint8_t)

/* 1 when int32 partial sums of K products could overflow (|u8.s8| <= 32640,
 * |s8.s8| <= 16384). */
static int needs_wide(int64_t K, int unsigned_operand)
{
    const int64_t maxp = unsigned_operand ? 255 * 128 : 128 * 128;
    return K > (int64_t)INT32_MAX / maxp;
}

/* im2col of a 1-byte (u8 or s8: zero is byte 0 for both) (C, H, W) plane
 * into cols (C*KH*KW, OH*OW): et_im2col_f32's loop on bytes. */
static void im2col_u8(const uint8_t *x, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW,
                      const int64_t stride[2], const int64_t pad_lo[2], const int64_t dil[2],
                      int64_t OH, int64_t OW, uint8_t *cols)
{
    const int64_t rows = C * KH * KW, ncol = OH * OW;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t kw = r % KW, kh = (r / KW) % KH, c = r / (KW * KH);
        const uint8_t *xc = x + c * H * W;
        uint8_t *dst = cols + r * ncol;
        const int64_t off = kw * dil[1] - pad_lo[1];   /* iw = ow*stride + off */
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t ih = oh * stride[0] - pad_lo[0] + kh * dil[0];
            uint8_t *drow = dst + oh * OW;
            if (ih < 0 || ih >= H) { memset(drow, 0, (size_t)OW); continue; }
            const uint8_t *xrow = xc + ih * W;
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t iw = ow * stride[1] + off;
                drow[ow] = (iw >= 0 && iw < W) ? xrow[iw] : 0;
            }
        }
    }
}

static int ref_supports(et_op op, et_dtype dt)
{
    (void)op;
    return dt == ET_F32 || dt == ET_U8 || dt == ET_S8 || dt == ET_BF16 || dt == ET_F16;
}

static et_status ref_matmul_f32(const et_matmul_args *p);
static et_status ref_conv2d_f32(const et_conv2d_args *p);

/* bf16 / f16: widen both operands to f32 exactly, run the f32 path. */
static et_status ref_matmul_widened(const et_matmul_args *p)
{
    et_matmul_args q = *p;
    float *fa = NULL, *fb = NULL;
    et_status st = et_lowp_to_f32("ref matmul", &p->a, &fa);
    if (st == ET_OK) st = et_lowp_to_f32("ref matmul", &p->b, &fb);
    if (st == ET_OK) {
        q.a.data = fa; q.a.dtype = ET_F32;
        q.b.data = fb; q.b.dtype = ET_F32;
        st = ref_matmul_f32(&q);
    }
    et_aligned_free(fa);
    et_aligned_free(fb);
    return st;
}

static et_status ref_matmul_int8(const et_matmul_args *p)
{
    const int64_t M = p->y.shape[0], N = p->y.shape[1];
    const int64_t K = p->trans_a ? p->a.shape[0] : p->a.shape[1];
    const int8_t *b = p->b.data;   // s8 (K,N) or (N,K)
    int32_t *y = p->y.data;        // s32 (M,N)
    if (p->a.dtype == ET_U8)       // u8 (M,K) or (K,M)
        igemm_u8s8(p->trans_a, p->trans_b, M, N, K, p->a.data, p->a.shape[1], b, p->b.shape[1],
                   y, N, needs_wide(K, 1));
    else
        igemm_s8s8(p->trans_a, p->trans_b, M, N, K, p->a.data, p->a.shape[1], b, p->b.shape[1],
                   y, N, needs_wide(K, 0));
    return ET_OK;
}

static et_status ref_matmul(const et_matmul_args *p)
{
    switch (p->a.dtype) {
    case ET_F32: return ref_matmul_f32(p);
    case ET_U8: case ET_S8: return ref_matmul_int8(p);
    case ET_BF16: case ET_F16: return ref_matmul_widened(p);
    default: return et_backend_unsupported(&et_backend_ref, ET_OP_MATMUL, p->a.dtype);
    }
}

static et_status ref_matmul_f32(const et_matmul_args *p)
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

static et_status ref_conv2d_widened(const et_conv2d_args *p)
{
    et_conv2d_args q = *p;
    float *fx = NULL, *fw = NULL;
    et_status st = et_lowp_to_f32("ref conv2d", &p->x, &fx);
    if (st == ET_OK) st = et_lowp_to_f32("ref conv2d", &p->w, &fw);
    if (st == ET_OK) {
        q.x.data = fx; q.x.dtype = ET_F32;
        q.w.data = fw; q.w.dtype = ET_F32;
        st = ref_conv2d_f32(&q);
    }
    et_aligned_free(fx);
    et_aligned_free(fw);
    return st;
}

/* Inside a parallel region, after each thread allocated its own buffers:
 * 1 on every thread when no thread's allocation failed, 0 on every thread
 * otherwise (*failed, shared, is then 1). The team must agree before a
 * worksharing loop: a thread that skipped the loop would leave the others
 * waiting at its implicit barrier for ever. That hang was found with a
 * capped address space (one thread's im2col buffer failed, the other's did
 * not) when a private per-thread flag decided. */
static int team_all_ok(int mine_failed, int *failed)
{
    if (mine_failed) {
#pragma omp atomic write
        *failed = 1;
    }
#pragma omp barrier
    int any;
#pragma omp atomic read
    any = *failed;
    return !any;
}

/* int8 conv: per (image, group) y_g (OC/G, OHW) s32 = w_g (OC/G, KK) s8 . cols (KK, OHW) u8|s8 */
static et_status ref_conv2d_int8(const et_conv2d_args *p)
{
    const int64_t N = p->x.shape[0], C = p->x.shape[1], H = p->x.shape[2], W = p->x.shape[3];
    const int64_t OC = p->w.shape[0], KH = p->w.shape[2], KW = p->w.shape[3];
    const int64_t OH = p->y.shape[2], OW = p->y.shape[3], G = p->groups;
    const int64_t Cg = C / G, OCg = OC / G, KK = Cg * KH * KW, OHW = OH * OW;
    const uint8_t *x = p->x.data;     // (N, C, H, W) bytes: u8 or s8
    const int8_t *w = p->w.data;      // (OC, C/G, KH, KW) s8
    int32_t *y = p->y.data;           // (N, OC, OH, OW) s32
    const int is_u8 = p->x.dtype == ET_U8, wide = needs_wide(KK, is_u8);
    const int transposed = OHW < 32 && KK >= 4 * OHW;
    const int64_t jobs = N * G;
    const int nthr = omp_get_max_threads();
    const int outer = jobs >= nthr && nthr > 1 && (double)OCg * OHW * KK * jobs > 262144.0;
    const size_t nbuf = (size_t)(KK * OHW);
    int fail = 0;
#pragma omp parallel if (outer)
    {
        uint8_t *cols = et_aligned_alloc(nbuf);                               // (KK, OHW)
        uint8_t *colsT = transposed ? et_aligned_alloc(nbuf) : NULL;          // (OHW, KK)
        if (team_all_ok(!cols || (transposed && !colsT), &fail)) {
#pragma omp for schedule(static)
            for (int64_t job = 0; job < jobs; job++) {
                const int64_t n = job / G, g = job % G;
                const uint8_t *xg = x + (n * C + g * Cg) * H * W;   // (C/G, H, W)
                const int8_t *wg = w + g * OCg * KK;                // (OC/G, KK)
                int32_t *yg = y + (n * OC + g * OCg) * OHW;         // (OC/G, OHW)
                im2col_u8(xg, Cg, H, W, KH, KW, p->stride, p->pad_lo, p->dilation, OH, OW, cols);
                const uint8_t *src = cols;
                int tb = 0;
                if (transposed) {
                    for (int64_t r = 0; r < KK; r++)
                        for (int64_t c = 0; c < OHW; c++) colsT[c * KK + r] = cols[r * OHW + c];
                    src = colsT;
                    tb = 1;
                }
                const int64_t ldb = tb ? KK : OHW;
                if (is_u8) igemm_s8u8(0, tb, OCg, OHW, KK, wg, KK, src, ldb, yg, OHW, wide);
                else igemm_s8s8(0, tb, OCg, OHW, KK, wg, KK, (const int8_t *)src, ldb, yg, OHW, wide);
            }
        }
        et_aligned_free(cols);
        et_aligned_free(colsT);
    }
    if (fail)
        return et_error(ET_ERR_NOMEM, "ref conv2d: cannot allocate int8 im2col buffers (%lld x %lld "
                        "bytes) for input (%lld, %lld, %lld, %lld)", (long long)KK, (long long)OHW,
                        (long long)N, (long long)C, (long long)H, (long long)W);
    return ET_OK;
}

static et_status ref_conv2d(const et_conv2d_args *p)
{
    switch (p->x.dtype) {
    case ET_F32: return ref_conv2d_f32(p);
    case ET_U8: case ET_S8: return ref_conv2d_int8(p);
    case ET_BF16: case ET_F16: return ref_conv2d_widened(p);
    default: return et_backend_unsupported(&et_backend_ref, ET_OP_CONV2D, p->x.dtype);
    }
}

static et_status ref_conv2d_f32(const et_conv2d_args *p)
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
#pragma omp parallel if (outer)
    {
        float *cols = NULL, *colsT = NULL;
        int mine = 0;
        if (!direct && !(cols = et_aligned_alloc(nbuf))) mine = 1;           // (KK, OHW)
        if (transposed && !(colsT = et_aligned_alloc(nbuf))) mine = 1;       // (OHW, KK)
        if (team_all_ok(mine, &fail)) {
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
