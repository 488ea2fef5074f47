/* im2col.c - see im2col.h. */
#include "im2col.h"

#include <omp.h>
#include <string.h>

et_status et_im2col_f32(const float *x, int64_t C, int64_t H, int64_t W,
                        int64_t KH, int64_t KW, const int64_t stride[2],
                        const int64_t pad_lo[2], const int64_t dilation[2],
                        int64_t OH, int64_t OW, float *cols)
{
    const int64_t rows = C * KH * KW, ncol = OH * OW;
    const int64_t s0 = stride[0], s1 = stride[1], p0 = pad_lo[0], p1 = pad_lo[1];
    const int64_t d0 = dilation[0], d1 = dilation[1];
    /* parallel only when there is enough work to pay the fork */
#pragma omp parallel for schedule(static) if (rows * ncol > 32768 && !omp_in_parallel())
    for (int64_t r = 0; r < rows; r++) {
        const int64_t kw = r % KW, kh = (r / KW) % KH, c = r / (KW * KH);
        const float *xc = x + c * H * W;
        float *dst = cols + r * ncol;
        for (int64_t oh = 0; oh < OH; oh++) {
            const int64_t ih = oh * s0 - p0 + kh * d0;
            float *drow = dst + oh * OW;
            if (ih < 0 || ih >= H) { memset(drow, 0, (size_t)OW * sizeof(float)); continue; }
            const float *xrow = xc + ih * W;
            const int64_t off = kw * d1 - p1;   /* iw = ow*s1 + off */
            if (s1 == 1) {
                /* contiguous: valid ow range [lo, hi) */
                int64_t lo = off < 0 ? -off : 0;
                int64_t hi = W - off; if (hi > OW) hi = OW;
                if (lo > OW) lo = OW;
                if (hi < lo) hi = lo;
                for (int64_t ow = 0; ow < lo; ow++) drow[ow] = 0.0f;
                if (hi > lo) memcpy(drow + lo, xrow + lo + off, (size_t)(hi - lo) * sizeof(float));
                for (int64_t ow = hi; ow < OW; ow++) drow[ow] = 0.0f;
            } else {
                for (int64_t ow = 0; ow < OW; ow++) {
                    const int64_t iw = ow * s1 + off;
                    drow[ow] = (iw >= 0 && iw < W) ? xrow[iw] : 0.0f;
                }
            }
        }
    }
    return ET_OK;
}

et_status et_col2im_f32(const float *cols, int64_t C, int64_t H, int64_t W,
                        int64_t KH, int64_t KW, const int64_t stride[2],
                        const int64_t pad_lo[2], const int64_t dilation[2],
                        int64_t OH, int64_t OW, float *x)
{
    const int64_t ncol = OH * OW;
    const int64_t s0 = stride[0], s1 = stride[1], p0 = pad_lo[0], p1 = pad_lo[1];
    const int64_t d0 = dilation[0], d1 = dilation[1];
    /* one channel per iteration: channels write disjoint planes */
#pragma omp parallel for schedule(static) if (C * KH * KW * ncol > 32768 && !omp_in_parallel())
    for (int64_t c = 0; c < C; c++) {
        float *xc = x + c * H * W;
        memset(xc, 0, (size_t)(H * W) * sizeof(float));
        for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
                const float *src = cols + ((c * KH + kh) * KW + kw) * ncol;
                for (int64_t oh = 0; oh < OH; oh++) {
                    const int64_t ih = oh * s0 - p0 + kh * d0;
                    if (ih < 0 || ih >= H) continue;
                    float *xrow = xc + ih * W;
                    const float *srow = src + oh * OW;
                    for (int64_t ow = 0; ow < OW; ow++) {
                        const int64_t iw = ow * s1 - p1 + kw * d1;
                        if (iw >= 0 && iw < W) xrow[iw] += srow[ow];
                    }
                }
            }
    }
    return ET_OK;
}
