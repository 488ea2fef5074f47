/* prep.c - see prep.h. */
#include "prep.h"

#include <string.h>

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* one element of esz bytes (1, 2 or 4 here; memcpy otherwise) */
static inline void cp1(char *d, const char *s, size_t esz)
{
    switch (esz) {
    case 1: *d = *s; break;
    case 2: memcpy(d, s, 2); break;
    case 4: memcpy(d, s, 4); break;
    default: memcpy(d, s, esz); break;
    }
}

void et_prep_dx_geometry(const et_conv2d_params *p, const int64_t in[2], const int64_t k[2],
                         const int64_t o[2], et_prep_dx_geom *g)
{
    for (int i = 0; i < 2; i++) {
        const int64_t s = p->stride[i], d = p->dilation[i], pad = p->padding[i];
        const int64_t L = (o[i] - 1) * s + 1;          /* dy dilated by the stride */
        const int64_t lo = d * (k[i] - 1) - pad;       /* low padding of dilated dy */
        const int64_t hi = in[i] - L + pad;            /* makes the output exactly in[i] */
        g->crop_lo[i] = max64(0, -lo);
        g->dd[i] = L - g->crop_lo[i] - max64(0, -hi);
        g->pad_lo[i] = max64(0, lo);
        g->pad_hi[i] = max64(0, hi);
    }
    g->copy = !(p->stride[0] == 1 && p->stride[1] == 1 && g->crop_lo[0] == 0 &&
                g->crop_lo[1] == 0 && g->dd[0] == o[0] && g->dd[1] == o[1]);
}

int et_prep_dx_unreached(const et_prep_dx_geom *g)
{
    return g->dd[0] <= 0 || g->dd[1] <= 0;
}

void et_prep_dw_geometry(const et_conv2d_params *p, const int64_t in[2], const int64_t k[2],
                         const int64_t o[2], et_prep_dw_geom *g)
{
    for (int i = 0; i < 2; i++) {
        const int64_t s = p->stride[i], d = p->dilation[i], pad = p->padding[i];
        /* high padding that makes the output exactly K (never more than pad) */
        const int64_t need = (o[i] - 1) * s - pad + (k[i] - 1) * d - (in[i] - 1);
        g->pad_lo[i] = pad;
        g->pad_hi[i] = max64(0, need);
        g->ko[i] = et_conv_out_size(in[i], o[i], d, pad, g->pad_hi[i], s);
    }
}

void et_prep_dilate(const void *src, void *dst, size_t esz, int64_t NC, int64_t OH, int64_t OW,
                    const int64_t stride[2], const int64_t crop_lo[2], const int64_t dd[2])
{
    const int64_t D = dd[0] * dd[1];
    const size_t n = (size_t)(NC * D);
    memset(dst, 0, n * esz);
    const char *s = src;
    char *d = dst;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t nc = 0; nc < NC; nc++) {
        const char *sp = s + (size_t)(nc * OH * OW) * esz;
        char *dp = d + (size_t)(nc * D) * esz;
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t r = oh * stride[0] - crop_lo[0];
            if (r < 0 || r >= dd[0]) continue;
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t c = ow * stride[1] - crop_lo[1];
                if (c >= 0 && c < dd[1])
                    cp1(dp + (size_t)(r * dd[1] + c) * esz, sp + (size_t)(oh * OW + ow) * esz, esz);
            }
        }
    }
}

void et_prep_flip_transpose(const void *w, void *wt, size_t esz, int64_t OC, int64_t Cg,
                            int64_t KH, int64_t KW, int64_t G)
{
    const int64_t OCg = OC / G, KK = KH * KW;
    const char *wp = w;
    char *tp = wt;
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < Cg; c++)
            for (int64_t o = 0; o < OCg; o++) {
                const char *src = wp + (size_t)(((g * OCg + o) * Cg + c) * KK) * esz;
                char *dst = tp + (size_t)(((g * Cg + c) * OCg + o) * KK) * esz;
                for (int64_t k = 0; k < KK; k++)
                    cp1(dst + (size_t)k * esz, src + (size_t)(KK - 1 - k) * esz, esz);
            }
}

void et_prep_group_swap(const void *x, void *xt, size_t esz, int64_t N, int64_t C, int64_t HW,
                        int64_t G)
{
    const int64_t Cg = C / G;
    const size_t plane = (size_t)HW * esz;
    const char *xp = x;
    char *tp = xt;
    for (int64_t c = 0; c < Cg; c++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t n = 0; n < N; n++)
                memcpy(tp + (size_t)((c * G + g) * N + n) * plane,
                       xp + (size_t)(n * C + g * Cg + c) * plane, plane);
}

void et_prep_crop_transpose(const void *out, void *dw, size_t esz, int64_t OC, int64_t Cg,
                            int64_t KH, int64_t KW, int64_t KHo, int64_t KWo)
{
    const char *op = out;
    char *d = dw;
    for (int64_t o = 0; o < OC; o++)
        for (int64_t c = 0; c < Cg; c++)
            for (int64_t kh = 0; kh < KH; kh++)
                memcpy(d + (size_t)(((o * Cg + c) * KH + kh) * KW) * esz,
                       op + (size_t)(((c * OC + o) * KHo + kh) * KWo) * esz, (size_t)KW * esz);
}

void et_prep_transpose2d(const void *src, void *dst, size_t esz, int64_t R, int64_t C)
{
    const char *s = src;
    char *d = dst;
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
            cp1(d + (size_t)(c * R + r) * esz, s + (size_t)(r * C + c) * esz, esz);
}

/* ---- backward-weight as im2col + matmul ------------------------------------ */

/* dst[i] = src[i*step], i < n, elements of esz bytes. One loop per element
 * size: fixed-size memcpy folds into a plain load / store, so step 1 is a
 * memcpy and other steps a strided copy the compiler can vectorize. */
static void copy_strided(char *dst, const char *src, size_t esz, int64_t n, int64_t step)
{
    if (n <= 0) return;
    if (step == 1) { memcpy(dst, src, (size_t)n * esz); return; }
    switch (esz) {
    case 1:
        for (int64_t i = 0; i < n; i++) dst[i] = src[i * step];
        break;
    case 2:
        for (int64_t i = 0; i < n; i++) memcpy(dst + 2 * i, src + 2 * i * step, 2);
        break;
    case 4:
        for (int64_t i = 0; i < n; i++) memcpy(dst + 4 * i, src + 4 * i * step, 4);
        break;
    default:
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + (size_t)i * esz, src + (size_t)(i * step) * esz, esz);
        break;
    }
}

static et_status check_rows(const char *op, const char *what, size_t esz, int64_t N, int64_t OH,
                            int64_t OW, int64_t r0, int64_t R)
{
    if (esz == 0 || N <= 0 || OH <= 0 || OW <= 0 || R <= 0 || r0 < 0 || r0 > N * OH - R)
        return et_error(ET_ERR_VALUE, "%s: %s: bad chunk: element size %zu, rows [%lld, %lld) "
                        "of N*OH = %lld*%lld, OW %lld", op, what, esz, (long long)r0,
                        (long long)(r0 + R), (long long)N, (long long)OH, (long long)OW);
    return ET_OK;
}

et_status et_prep_im2col_rows(const char *op, const void *x, void *cols, size_t esz, int64_t N,
                              int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW,
                              const int64_t stride[2], const int64_t pad_lo[2],
                              const int64_t dilation[2], int64_t OH, int64_t OW, int64_t r0,
                              int64_t R)
{
    ET_TRY(check_rows(op, "im2col", esz, N, OH, OW, r0, R));
    if (C <= 0 || H <= 0 || W <= 0 || KH <= 0 || KW <= 0 || stride[0] <= 0 || stride[1] <= 0 ||
        dilation[0] <= 0 || dilation[1] <= 0 || pad_lo[0] < 0 || pad_lo[1] < 0)
        return et_error(ET_ERR_VALUE, "%s: im2col: bad geometry: input (%lld, %lld, %lld), "
                        "kernel (%lld, %lld), stride (%lld, %lld), dilation (%lld, %lld), "
                        "pad_lo (%lld, %lld)", op, (long long)C, (long long)H, (long long)W,
                        (long long)KH, (long long)KW, (long long)stride[0],
                        (long long)stride[1], (long long)dilation[0], (long long)dilation[1],
                        (long long)pad_lo[0], (long long)pad_lo[1]);
    const int64_t rows = C * KH * KW, ncol = R * OW;
    const int64_t s0 = stride[0], s1 = stride[1], p0 = pad_lo[0], p1 = pad_lo[1];
    const int64_t d0 = dilation[0], d1 = dilation[1];
    const char *xp = x;
    char *cp = cols;
    /* one (cols row, image row) pair per iteration: OW elements written, every
     * pair a disjoint destination; collapsed so that both a few cols rows
     * (3-channel stem: 147) and a few image rows (7x7 maps) split evenly */
#pragma omp parallel for collapse(2) schedule(static) if (rows * ncol > 65536)
    for (int64_t k = 0; k < rows; k++)
        for (int64_t i = 0; i < R; i++) {
            const int64_t kw = k % KW, kh = (k / KW) % KH, c = k / (KW * KH);
            const int64_t r = r0 + i, n = r / OH, oh = r % OH;
            const int64_t ih = oh * s0 - p0 + kh * d0;
            char *dst = cp + (size_t)(k * ncol + i * OW) * esz;
            if (ih < 0 || ih >= H) { memset(dst, 0, (size_t)OW * esz); continue; }
            const char *src = xp + (size_t)(((n * C + c) * H + ih) * W) * esz;
            /* iw = ow*s1 + off lies in [0, W) for ow in [lo, hi) */
            const int64_t off = kw * d1 - p1;
            int64_t lo = off >= 0 ? 0 : (-off + s1 - 1) / s1;
            int64_t hi = off > W - 1 ? 0 : (W - 1 - off) / s1 + 1;
            if (lo > OW) lo = OW;
            if (hi > OW) hi = OW;
            if (hi < lo) hi = lo;
            memset(dst, 0, (size_t)lo * esz);
            copy_strided(dst + (size_t)lo * esz, src + (size_t)(lo * s1 + off) * esz, esz,
                         hi - lo, s1);
            memset(dst + (size_t)hi * esz, 0, (size_t)(OW - hi) * esz);
        }
    return ET_OK;
}

et_status et_prep_rows_gather(const char *op, const void *dy, void *dst, size_t esz, int64_t N,
                              int64_t OC, int64_t OH, int64_t OW, int64_t r0, int64_t R)
{
    ET_TRY(check_rows(op, "rows gather", esz, N, OH, OW, r0, R));
    if (OC <= 0)
        return et_error(ET_ERR_VALUE, "%s: rows gather: %lld channels", op, (long long)OC);
    const int64_t OHW = OH * OW, ncol = R * OW;
    const char *sp = dy;
    char *dp = dst;
#pragma omp parallel for schedule(static) if (OC * ncol > 65536)
    for (int64_t o = 0; o < OC; o++) {
        char *d = dp + (size_t)(o * ncol) * esz;
        /* runs of consecutive rows of one image are contiguous in dy */
        for (int64_t r = r0; r < r0 + R;) {
            const int64_t n = r / OH, oh = r % OH;
            int64_t len = OH - oh;
            if (len > r0 + R - r) len = r0 + R - r;
            memcpy(d, sp + (size_t)((n * OC + o) * OHW + oh * OW) * esz, (size_t)(len * OW) * esz);
            d += (size_t)(len * OW) * esz;
            r += len;
        }
    }
    return ET_OK;
}
