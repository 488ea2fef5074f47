/* activation.h - elementwise activations on the CPU (float32, contiguous).
 *
 * Why on the CPU: they are memory-bound and cheap; shipping them to the
 * accelerator would cost more in transfers than it saves.
 */
#ifndef ET_KERNELS_ACTIVATION_H
#define ET_KERNELS_ACTIVATION_H

#include <stdint.h>

#include "../core/status.h"

/* y = max(x, 0); NaN stays NaN (as torch.relu). x, y: (n,) */
et_status et_relu_forward(const float *x, float *y, int64_t n);

/* dx = dy where y > 0, else 0 (PyTorch's threshold_backward on the output).
 * dy, y, dx: (n,) */
et_status et_relu_backward(const float *dy, const float *y, float *dx, int64_t n);

/* y = max(x, 0) as et_relu_forward, plus the bit mask of y > 0 that is all
 * the backward needs: bit (i % 8) of mask[i / 8] set iff y[i] > 0 (so clear for
 * x <= 0, -0 and NaN). 1 bit per element instead of the 32 of a saved y
 * (autograd's relu node keeps only the mask). x, y: (n,); mask: (ceil(n / 8),),
 * its unused high bits of the last byte cleared. */
et_status et_relu_forward_mask(const float *x, float *y, uint8_t *mask, int64_t n);

/* dx = dy where the mask bit is set, else +0: the same values as
 * et_relu_backward(dy, y) for the y whose mask it is. dy, dx: (n,); mask as
 * et_relu_forward_mask's. */
et_status et_relu_backward_mask(const float *dy, const uint8_t *mask, float *dx, int64_t n);

#endif
