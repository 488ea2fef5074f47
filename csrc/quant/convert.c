/* convert.c - see convert.h. */
#include "convert.h"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define ET_HAVE_F16C 1
#else
#define ET_HAVE_F16C 0
#endif

/* Below this many elements a parallel region costs more than it saves
 * (the conversions run at memory speed). */
#define ET_CONVERT_PAR_MIN (1 << 18)
/* Parallel chunks are multiples of 8 elements (one AVX vector). */
#define ET_CONVERT_CHUNK 4096

int et_convert_have_f16c(void) { return ET_HAVE_F16C; }

static et_status check_args(const char *op, const void *in, const void *out, int64_t n)
{
    if (n < 0) return et_error(ET_ERR_VALUE, "%s: negative size %lld", op, (long long)n);
    if (n > 0 && (!in || !out)) return et_error(ET_ERR_VALUE, "%s: NULL buffer", op);
    return ET_OK;
}

et_status et_convert_f32_to_f16_portable(const float *x, uint16_t *h, int64_t n)
{
    ET_TRY(check_args("to_float16", x, h, n));
    #pragma omp parallel for simd schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) h[i] = et_f16_from_f32(x[i]);
    return ET_OK;
}

et_status et_convert_f16_to_f32_portable(const uint16_t *h, float *x, int64_t n)
{
    ET_TRY(check_args("from_float16", h, x, n));
    #pragma omp parallel for schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] = et_f32_from_f16(h[i]);
    return ET_OK;
}

#if ET_HAVE_F16C
/* One chunk [lo, hi) through F16C; the tail (< 8) through an 8-lane scratch
 * so every element takes the hardware path. */
static void f32_to_f16_f16c(const float *x, uint16_t *h, int64_t lo, int64_t hi)
{
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m128i r = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(h + i), r);
    }
    if (i < hi) {
        float tx[8] = {0};
        uint16_t th[8];
        memcpy(tx, x + i, (size_t)(hi - i) * sizeof(float));
        __m128i r = _mm256_cvtps_ph(_mm256_loadu_ps(tx),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)th, r);
        memcpy(h + i, th, (size_t)(hi - i) * sizeof(uint16_t));
    }
}

static void f16_to_f32_f16c(const uint16_t *h, float *x, int64_t lo, int64_t hi)
{
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(v));
    }
    if (i < hi) {
        uint16_t th[8] = {0};
        float tx[8];
        memcpy(th, h + i, (size_t)(hi - i) * sizeof(uint16_t));
        _mm256_storeu_ps(tx, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)th)));
        memcpy(x + i, tx, (size_t)(hi - i) * sizeof(float));
    }
}
#endif

et_status et_convert_f32_to_f16(const float *x, uint16_t *h, int64_t n)
{
#if ET_HAVE_F16C
    ET_TRY(check_args("to_float16", x, h, n));
    int64_t nchunks = (n + ET_CONVERT_CHUNK - 1) / ET_CONVERT_CHUNK;
    #pragma omp parallel for schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * ET_CONVERT_CHUNK;
        int64_t hi = lo + ET_CONVERT_CHUNK < n ? lo + ET_CONVERT_CHUNK : n;
        f32_to_f16_f16c(x, h, lo, hi);
    }
    return ET_OK;
#else
    return et_convert_f32_to_f16_portable(x, h, n);
#endif
}

et_status et_convert_f16_to_f32(const uint16_t *h, float *x, int64_t n)
{
#if ET_HAVE_F16C
    ET_TRY(check_args("from_float16", h, x, n));
    int64_t nchunks = (n + ET_CONVERT_CHUNK - 1) / ET_CONVERT_CHUNK;
    #pragma omp parallel for schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t lo = c * ET_CONVERT_CHUNK;
        int64_t hi = lo + ET_CONVERT_CHUNK < n ? lo + ET_CONVERT_CHUNK : n;
        f16_to_f32_f16c(h, x, lo, hi);
    }
    return ET_OK;
#else
    return et_convert_f16_to_f32_portable(h, x, n);
#endif
}

et_status et_convert_f32_to_bf16(const float *x, uint16_t *b, int64_t n)
{
    ET_TRY(check_args("to_bfloat16", x, b, n));
    /* branch-free integer code: gcc vectorises it (AVX2 has no bf16 convert) */
    #pragma omp parallel for simd schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) b[i] = et_bf16_from_f32(x[i]);
    return ET_OK;
}

et_status et_convert_bf16_to_f32(const uint16_t *b, float *x, int64_t n)
{
    ET_TRY(check_args("from_bfloat16", b, x, n));
    #pragma omp parallel for simd schedule(static) if(n > ET_CONVERT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] = et_f32_from_bf16(b[i]);
    return ET_OK;
}
