/* conv2d_dw.h - conv2d's weight gradient as im2col + matmul chunks, shared by
 * the fp32 path (conv2d.c) and the bf16 / fp16 (and "fp32") passes of the
 * low-precision path (conv2d_lowp.c). int8 keeps the conv formulation.
 *
 * The weight gradient has two formulations, both forward primitives only:
 *   conv : the forward conv of rearranged operands (conv2d.h): one conv2d
 *          job whose "kernel" is the dy map (plans in conv2d.c / conv2d_lowp.c).
 *   gemm : im2col + the backend's MATMUL primitive (this file), chunked over
 *          the output rows under a memory budget:
 *            dw_g (OCg, Kg) = dy_g (OCg, P) . cols_g (Kg, P)^T     per group g,
 *          P = N*OH*OW positions, Kg = Cg*KH*KW. dw (OC, Cg, KH, KW) is the G
 *          blocks (OCg, Kg) stacked, so the matmuls write dw in place.
 * Operands: x (N, C, H, W) and dy (N, OC, OH, OW) of ONE dtype, f32 or (the
 * low-precision passes, already converted) bf16 / f16; im2col and the dy row
 * gather move their bytes (prep.h, esz 4 or 2), the matmul primitive is
 * f32 x f32 -> f32 or bf16/f16 x bf16/f16 -> f32 (backend.h). dw is always
 * f32; later chunks' products are added into it in f32 on the CPU.
 *
 * Environment (read at every call, so tests and A/B runs switch in-process):
 *   ET_CONV_DW=conv|gemm|auto   (unset / empty = auto)
 *   ET_CONV_DW_BUDGET=<bytes>   per-chunk buffers of the gemm formulation,
 *                               default 16 MiB (why: conv2d_dw.c)
 * Any other value is an ET_ERR_VALUE naming the variable and `op`.
 * auto: gemm on every backend except ref, unless one matmul job (a chunk of
 * one group) would be below 32 KFLOP; conv otherwise (measurements:
 * conv2d_dw.c).
 */
#ifndef ET_OPS_CONV2D_DW_H
#define ET_OPS_CONV2D_DW_H

#include <stdint.h>

#include "../backends/backend.h"
#include "../queue/queue.h"
#include "conv2d.h"

/* One gemm weight-gradient pass in flight. Borrowed: x, dy, dw (the caller
 * keeps them alive until et_dw_gemm_finish returned); owned: the buffers. */
typedef struct et_dw_gemm {
    const et_backend *be;
    et_dtype dt;                // of x, dy, cols and the dy chunk: ET_F32, ET_BF16 or ET_F16
    size_t esz;                 // its element size (4 or 2)
    const char *x, *dy;         // x (N, C, H, W), dy (N, OC, OH, OW), elements of esz bytes
    float *dw;                  // (OC, Cg, KH, KW) f32
    int64_t N, C, H, W, OC, KH, KW, OH, OW, G, OCg, Kg;
    int64_t stride[2], dilation[2], pad_lo[2];
    int64_t rows, R, nchunks;   // N*OH output rows, R rows per chunk
    void *cols;                 // (C*KH*KW, R*OW) this chunk's im2col
    void *dyt;                  // (OC, R*OW) this chunk's channel-major dy
    const char *dya;            // dyt, or dy itself when the chunk is one whole image
    float *part;                // (OC, Kg) f32 products of chunks >= 1; NULL with one chunk
    uint64_t *tickets;          // (G) of the chunk in flight
    int64_t nsub;               // tickets submitted and not yet waited
} et_dw_gemm;

/* ET_CONV_DW_BUDGET in bytes (default 16 MiB); ET_ERR_VALUE naming `op`. */
et_status et_dw_budget(const char *op, int64_t *bytes);

/* ET_CONV_DW and the auto rule: *gemm = 1 for the im2col + matmul
 * formulation. x (N, C, H, W), dw (OC, Cg, KH, KW), dy (N, OC, OH, OW): only
 * their shapes are read; esz the operand element size (4 f32, 2 bf16/f16),
 * which sets how many rows a chunk of `budget` bytes holds. */
et_status et_dw_pick(const char *op, const et_backend *be, const et_tensor *x,
                     const et_tensor *dw, const et_tensor *dy, size_t esz, int64_t budget,
                     int *gemm);

/* Allocates the chunk buffers and prepares chunk 0. x and dy: the same dtype
 * (f32 / bf16 / f16), shapes as above; dw f32 (OC, Cg, KH, KW). On failure
 * nothing stays allocated. */
et_status et_dw_gemm_make(const char *op, const et_backend *be, const et_tensor *dy,
                          const et_tensor *x, const et_conv2d_params *p, et_tensor *dw,
                          int64_t budget, et_dw_gemm *g);

/* Submits chunk 0's G matmul jobs (labelled "conv2d.bwd_weight", each with
 * its share of the pass's useful FLOPs). The caller may submit other jobs
 * (dx) around it, then calls et_dw_gemm_finish with this call's status. */
et_status et_dw_gemm_start(const char *op, et_dw_gemm *g, et_queue *q);

/* started == ET_OK: waits for chunk 0, then prepares, runs and adds every
 * later chunk in turn. Otherwise waits for whatever chunk 0 had queued and
 * returns `started` with its message kept. Every submitted ticket is waited
 * before it returns (the buffers can then be freed). */
et_status et_dw_gemm_finish(const char *op, et_dw_gemm *g, et_queue *q, et_status started);

void et_dw_gemm_free(et_dw_gemm *g);   /* idempotent; a zeroed struct is fine */

#endif
