/* conv2d.h - conv2d forward / backward-data / backward-weight, every product
 * expressed as a FORWARD conv2d primitive and run through the offload queue.
 *
 *   y  = conv(x, w) + b                         (one conv2d job)
 *   dx = conv(dilate_s(dy) padded by d(K-1)-p,  (one conv2d job, stride 1,
 *             flip(w) transposed per group)       dilation d, groups G)
 *   dw = conv(x as (C/G, G*N, H, W),            (one conv2d job, stride d,
 *             dy as (OC, N, OH, OW)) -> (C/G, OC, KH, KW) -> (OC, C/G, KH, KW)
 *                                                  dilation s, groups G)
 *   db = sum of dy over N, OH, OW               (CPU, while the jobs run)
 * dw has a second formulation, im2col + matmul (groups x chunks matmul jobs,
 * im2col chunks bounded in memory), chosen per call by ET_CONV_DW=conv|gemm|auto
 * (auto: gemm except on ref and for tiny jobs): see conv2d_dw.h, shared with
 * the bf16 / fp16 weight gradients of conv2d_lowp.h.
 * No backward primitive anywhere: an inference engine has none.
 *
 * Shapes: x (N, C, H, W), w (OC, C/G, KH, KW), b (OC), y/dy (N, OC, OH, OW);
 * PyTorch's output size OH = (H + 2p - d(KH-1) - 1)/s + 1. float32, contiguous.
 * The functions validate their arguments (messages name `op` and shapes),
 * prepare operands on the CPU, submit to et_queue_default() and wait.
 */
#ifndef ET_OPS_CONV2D_H
#define ET_OPS_CONV2D_H

#include <stdint.h>

#include "../backends/backend.h"
#include "../queue/queue.h"

typedef struct et_conv2d_params {
    int64_t stride[2], padding[2], dilation[2], groups;   /* [0] height, [1] width */
} et_conv2d_params;

/* Validates x / w / bias (bias NULL or bias->data NULL: none) and params for
 * `op` and writes y's shape (N, OC, OH, OW). */
et_status et_conv2d_shape(const char *op, const et_tensor *x, const et_tensor *w,
                          const et_tensor *bias, const et_conv2d_params *p, int64_t y[4]);

/* y (N, OC, OH, OW) preallocated. */
et_status et_conv2d_forward(const et_backend *be, const et_tensor *x, const et_tensor *w,
                            const et_tensor *bias, const et_conv2d_params *p, et_tensor *y);

/* dx (N, C, H, W) preallocated; w (OC, C/G, KH, KW). */
et_status et_conv2d_backward_data(const et_backend *be, const et_tensor *dy, const et_tensor *w,
                                  const et_conv2d_params *p, et_tensor *dx);

/* dw (OC, C/G, KH, KW) preallocated; x (N, C, H, W). */
et_status et_conv2d_backward_weight(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                    const et_conv2d_params *p, et_tensor *dw);

/* Any of dx / dw / db may be NULL (not wanted). dx and dw jobs are submitted
 * back to back, db is summed on the CPU meanwhile, then both are waited. */
et_status et_conv2d_backward(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                             const et_tensor *w, const et_conv2d_params *p,
                             et_tensor *dx, et_tensor *dw, et_tensor *db);

/* Submits one job to the default queue and waits for it (blocking offload). */
et_status et_offload_sync(et_job_fn fn, const void *arg, size_t size);

#endif
