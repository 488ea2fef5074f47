/* im2col.h - unfold / fold of convolution patches (float32).
 *
 * Why: a conv2d forward is a matrix product once the input patches are laid
 * out as columns: y_g (OC/G, OH*OW) = w_g (OC/G, C/G*KH*KW) . cols_g. The
 * ref and blas backends use this; col2im (the adjoint, summing overlaps) is
 * exposed for tests and CPU-side code. Padding is asymmetric: pad_lo is
 * (top, left); the bottom/right padding only shows up in OH/OW, which the
 * caller passes. Index [0] = height, [1] = width everywhere.
 *
 * Row r of cols is (c, kh, kw) flattened (c*KH + kh)*KW + kw; column is
 * oh*OW + ow; cols[r][oh*OW+ow] = x[c][oh*s0 - pl0 + kh*d0][ow*s1 - pl1 + kw*d1]
 * or 0 outside the image.
 */
#ifndef ET_IM2COL_H
#define ET_IM2COL_H

#include <stdint.h>

#include "../core/status.h"

/* x (C, H, W) -> cols (C*KH*KW, OH*OW). Parallel (OpenMP) over rows when large. */
et_status et_im2col_f32(const float *x, int64_t C, int64_t H, int64_t W,
                        int64_t KH, int64_t KW, const int64_t stride[2],
                        const int64_t pad_lo[2], const int64_t dilation[2],
                        int64_t OH, int64_t OW, float *cols);

/* cols (C*KH*KW, OH*OW) -> x (C, H, W): x is zeroed first, then every
 * column entry is added back to the pixel it came from. */
et_status et_col2im_f32(const float *cols, int64_t C, int64_t H, int64_t W,
                        int64_t KH, int64_t KW, const int64_t stride[2],
                        const int64_t pad_lo[2], const int64_t dilation[2],
                        int64_t OH, int64_t OW, float *x);

#endif
