/* pooling.h - 2-D max / average / adaptive-average pooling on the CPU.
 *
 * Why on the CPU: pooling is a cheap, memory-bound reduction that inference
 * engines do not differentiate; the backward passes are scatters that are
 * simplest next to autograd. Semantics are PyTorch's (CPU kernels of
 * aten/src/ATen/native/cpu/{MaxPool,AvgPool,AdaptiveAvgPool}Kernel.cpp):
 * output sizes, ceil_mode, padding rules, NaN propagation, divisors.
 *
 * Layout: x (N, C, H, W) contiguous float32, handled as P = N*C independent
 * planes; y (N, C, OH, OW). Max-pool indices are int64, flat h*W + w within
 * each plane, as PyTorch returns them.
 */
#ifndef ET_KERNELS_POOLING_H
#define ET_KERNELS_POOLING_H

#include <stdint.h>

#include "../core/status.h"

/* Hyper-parameters of a 2-D pooling window, [0] = height, [1] = width. */
typedef struct et_pool2d_params {
    int64_t kernel[2];
    int64_t stride[2];
    int64_t padding[2];
    int64_t dilation[2];   /* 1 for average pooling */
    int ceil_mode;
} et_pool2d_params;

/* Checks the parameters against an input of shape (N, C, H, W) and computes
 * PyTorch's output size (pooling_output_shape):
 *   out = floor_or_ceil((in + 2p - d*(k-1) - 1) / s) + 1, and in ceil_mode the
 *   last window must start inside the input or the left padding.
 * Errors (ET_ERR_VALUE) name `op`, the input shape and every parameter:
 * kernel/stride/dilation <= 0, padding < 0 or > kernel/2, output < 1. */
et_status et_pool2d_output_size(const char *op, const int64_t xshape[4],
                                const et_pool2d_params *p, int64_t *oh, int64_t *ow);

/* y, indices: (N, C, OH, OW); OH/OW from et_pool2d_output_size. indices may
 * be NULL (no backward to feed, e.g. inference): y is the same, bit for bit. */
et_status et_max_pool2d_forward(const float *x, const int64_t xshape[4],
                                const et_pool2d_params *p, float *y, int64_t *indices,
                                int64_t oh, int64_t ow);

/* dx (N, C, H, W) = scatter-add of dy (N, C, OH, OW) at `indices`. An index
 * of -1 (an empty window) is skipped; any other index outside [0, H*W) is an
 * error naming it. dx is fully written. */
et_status et_max_pool2d_backward(const float *dy, const int64_t *indices,
                                 int64_t planes, int64_t out_plane,
                                 float *dx, int64_t in_plane);

/* Average pooling (dilation must be 1); count_include_pad: the divisor is the
 * window clipped to the padded input (PyTorch's pool_size), else the number
 * of real input elements in the window. */
et_status et_avg_pool2d_forward(const float *x, const int64_t xshape[4],
                                const et_pool2d_params *p, int count_include_pad,
                                float *y, int64_t oh, int64_t ow);
et_status et_avg_pool2d_backward(const float *dy, const int64_t xshape[4],
                                 const et_pool2d_params *p, int count_include_pad,
                                 float *dx, int64_t oh, int64_t ow);

/* Adaptive average pooling to (OH, OW): bin i covers
 * [floor(i*H/OH), ceil((i+1)*H/OH)). OH, OW >= 1. */
et_status et_adaptive_avg_pool2d_forward(const float *x, const int64_t xshape[4],
                                         float *y, int64_t oh, int64_t ow);
et_status et_adaptive_avg_pool2d_backward(const float *dy, const int64_t xshape[4],
                                          float *dx, int64_t oh, int64_t ow);

#endif
