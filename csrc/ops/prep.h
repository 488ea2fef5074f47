/* prep.h - operand preparation for the backward passes, byte-size generic.
 *
 * Why: dx and dw of conv2d are forward convolutions of REARRANGED operands
 * (see conv2d.h). In low precision the rearranging runs on the quantized /
 * converted operands (1-byte int8, 2-byte bf16/f16, 4-byte f32), so each
 * helper copies elements of `esz` bytes. The zero they insert is all-zero
 * bytes, which is 0 in every dtype (f32, bf16, f16, s8, u8). Per-tensor
 * quantization commutes with these moves, so quantizing first and moving
 * bytes afterwards gives the same operands as the other way round.
 * The fp32 path (conv2d.c) uses the same helpers with esz = 4.
 */
#ifndef ET_OPS_PREP_H
#define ET_OPS_PREP_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"
#include "conv2d.h"

/* Geometry of the backward-data conv of one spatial dim set: the stride-1,
 * dilation-d conv of dy zero-dilated by the stride, cropped by crop_lo at the
 * start and to dd elements, padded by (pad_lo, pad_hi). copy = 0 when dy can
 * be used as is (stride 1, nothing cropped). */
typedef struct et_prep_dx_geom {
    int64_t pad_lo[2], pad_hi[2], crop_lo[2], dd[2];
    int copy;
} et_prep_dx_geom;
/* in: x's (H, W); k: (KH, KW); o: dy's (OH, OW). dd[i] <= 0 when the crop
 * leaves nothing: padding beyond the dilated kernel's reach with a stride that
 * skips x, so every output reads padding only and no dy element reaches x
 * (e.g. H 1, K 1, stride 3, padding 1): dx is all zeros then, see
 * et_prep_dx_unreached. */
void et_prep_dx_geometry(const et_conv2d_params *p, const int64_t in[2], const int64_t k[2],
                         const int64_t o[2], et_prep_dx_geom *g);

/* 1 when no element of dy reaches x (dx == 0 exactly, no product to run). */
int et_prep_dx_unreached(const et_prep_dx_geom *g);

/* Geometry of the backward-weight conv (stride d, dilation s, pad_lo p,
 * pad_hi making the output >= K); ko: its output (KHo, KWo) >= (KH, KW). */
typedef struct et_prep_dw_geom {
    int64_t pad_lo[2], pad_hi[2], ko[2];
} et_prep_dw_geom;
void et_prep_dw_geometry(const et_conv2d_params *p, const int64_t in[2], const int64_t k[2],
                         const int64_t o[2], et_prep_dw_geom *g);

/* dst (NC, dd0, dd1) = zeros with dst[nc, oh*s0 - crop0, ow*s1 - crop1] = src[nc, oh, ow]
 * (positions outside [0, dd) dropped). src (NC, OH, OW). */
void et_prep_dilate(const void *src, void *dst, size_t esz, int64_t NC, int64_t OH, int64_t OW,
                    const int64_t stride[2], const int64_t crop_lo[2], const int64_t dd[2]);

/* wt (C, OC/G, KH, KW): wt[g*Cg + c, o, kh, kw] = w[g*OCg + o, c, KH-1-kh, KW-1-kw]
 * from w (OC, Cg, KH, KW). */
void et_prep_flip_transpose(const void *w, void *wt, size_t esz, int64_t OC, int64_t Cg,
                            int64_t KH, int64_t KW, int64_t G);

/* xt (C/G, G*N, HW): xt[c, g*N + n] = x[n, g*Cg + c] from x (N, C, HW).
 * G = 1 is the plain batch/channel swap (dy (N, OC, OHW) -> (OC, N, OHW)). */
void et_prep_group_swap(const void *x, void *xt, size_t esz, int64_t N, int64_t C, int64_t HW,
                        int64_t G);

/* dw (OC, Cg, KH, KW) = out (Cg, OC, KHo, KWo) transposed, cropped to KH, KW. */
void et_prep_crop_transpose(const void *out, void *dw, size_t esz, int64_t OC, int64_t Cg,
                            int64_t KH, int64_t KW, int64_t KHo, int64_t KWo);

/* dst (C, R) = src (R, C) transposed. */
void et_prep_transpose2d(const void *src, void *dst, size_t esz, int64_t R, int64_t C);

/* ---- backward-weight as im2col + matmul (conv2d.c, ET_CONV_DW) -------------
 * The output rows of a conv, (n, oh) flattened to r = n*OH + oh (0 <= r < N*OH),
 * are the unit of the batch chunking: a chunk is the rows [r0, r0 + R), i.e.
 * R*OW output positions, possibly across several images and never needing
 * whole images (the memory budget then holds even for one huge image). */

/* cols (C*KH*KW, R*OW) for the rows [r0, r0 + R):
 *   cols[(c*KH + kh)*KW + kw, (r - r0)*OW + ow]
 *     = x[n, c, oh*s0 - pad_lo0 + kh*d0, ow*s1 - pad_lo1 + kw*d1]   (n = r / OH, oh = r % OH)
 *     or 0 (all-zero bytes) outside the image: the padding.
 * x (N, C, H, W) contiguous, elements of esz bytes. The high padding (pad_hi)
 * only shows in OH / OW, which the caller passes (et_conv_out_size). Row
 * block g*Cg*KH*KW .. (g+1)*Cg*KH*KW is group g's (Cg*KH*KW, R*OW) operand.
 * OpenMP-parallel over (cols row, image row) pairs when large.
 * ET_ERR_VALUE (naming `op`) when a size is not positive or the rows fall
 * outside [0, N*OH). */
et_status et_prep_im2col_rows(const char *op, const void *x, void *cols, size_t esz, int64_t N,
                              int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW,
                              const int64_t stride[2], const int64_t pad_lo[2],
                              const int64_t dilation[2], int64_t OH, int64_t OW, int64_t r0,
                              int64_t R);

/* dst (OC, R*OW): dst[o, (r - r0)*OW + ow] = dy[n, o, oh, ow] (n = r / OH, oh = r % OH),
 * the same rows as et_prep_im2col_rows, channel-major so that row block
 * g*OCg .. (g+1)*OCg is group g's (OCg, R*OW) operand. dy (N, OC, OH, OW).
 * ET_ERR_VALUE as above. */
et_status et_prep_rows_gather(const char *op, const void *dy, void *dst, size_t esz, int64_t N,
                              int64_t OC, int64_t OH, int64_t OW, int64_t r0, int64_t R);

#endif
