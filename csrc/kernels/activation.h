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

#endif
