/* offload.h - labelled submits of the two forward primitives to a queue.
 *
 * Why: the profiler (core/profile.h) names every accelerator job by the op
 * pass it performs ("conv2d.fwd", "conv2d.bwd_data", "conv2d.bwd_weight",
 * "linear.fwd", ...) and counts its useful FLOPs, which only the submitter
 * knows (a backward-data conv runs over the zero-dilated dy: its primitive
 * does more multiply-adds than the pass needs). These helpers build the job
 * info (label, precision from the first operand's dtype, the backend that
 * will run it, FLOPs, bytes of the operands) only when profiling is on: off,
 * they cost one relaxed atomic load more than et_queue_submit.
 */
#ifndef ET_OPS_OFFLOAD_H
#define ET_OPS_OFFLOAD_H

#include <stdint.h>

#include "../backends/backend.h"
#include "../queue/queue.h"

/* Useful FLOPs of one conv2d pass (forward, backward-data and backward-weight
 * alike): 2 * N * OC * OH * OW * (C/G) * KH * KW. */
static inline int64_t et_conv2d_pass_flops(int64_t N, int64_t OC, int64_t OH, int64_t OW,
                                           int64_t Cg, int64_t KH, int64_t KW)
{
    return 2 * N * OC * OH * OW * Cg * KH * KW;
}

/* "fp32", "int8" (u8 / s8 operands), "bf16", "fp16" of a primitive's first operand. */
const char *et_job_precision(et_dtype first);

/* flops < 0: the primitive's own count (matmul 2*M*N*K, conv from its args). */
void et_job_info_conv2d(et_job_info *info, const char *label, const et_conv2d_args *a,
                        int64_t flops);
void et_job_info_matmul(et_job_info *info, const char *label, const et_matmul_args *a,
                        int64_t flops);

et_status et_submit_conv2d(et_queue *q, const char *label, int64_t flops,
                           const et_conv2d_args *a, uint64_t *ticket);
et_status et_submit_matmul(et_queue *q, const char *label, int64_t flops,
                           const et_matmul_args *a, uint64_t *ticket);

/* Submit to the default queue and wait (blocking offload), labelled. */
et_status et_offload_conv2d(const char *label, int64_t flops, const et_conv2d_args *a);
et_status et_offload_matmul(const char *label, int64_t flops, const et_matmul_args *a);

#endif
