/* offload.c - see offload.h. */
#include "offload.h"

#include <string.h>

const char *et_job_precision(et_dtype first)
{
    switch (first) {
    case ET_F32: return "fp32";
    case ET_U8:
    case ET_S8: return "int8";
    case ET_BF16: return "bf16";
    case ET_F16: return "fp16";
    default: return NULL;
    }
}

static int64_t tensor_bytes(const et_tensor *t)
{
    return t->data ? et_tensor_numel(t) * (int64_t)et_dtype_size(t->dtype) : 0;
}

/* The backend that will run (op, dtype): b itself or its ref fallback, as
 * et_backend_resolve decides, without counting a fallback. */
static const char *runner(const et_backend *b, et_op op, et_dtype dt)
{
    if (!b) return NULL;
    return b->supports(op, dt) ? b->name : et_backend_ref.name;
}

void et_job_info_conv2d(et_job_info *info, const char *label, const et_conv2d_args *a,
                        int64_t flops)
{
    memset(info, 0, sizeof *info);
    info->label = label;
    info->precision = et_job_precision(a->x.dtype);
    info->backend = runner(a->backend, ET_OP_CONV2D, a->x.dtype);
    if (flops < 0)   /* the primitive's own: y (N, OC, OH, OW), w (OC, C/G, KH, KW) */
        flops = et_conv2d_pass_flops(a->y.shape[0], a->y.shape[1], a->y.shape[2],
                                     a->y.shape[3], a->w.shape[1], a->w.shape[2], a->w.shape[3]);
    info->flops = flops;
    info->bytes = tensor_bytes(&a->x) + tensor_bytes(&a->w) + tensor_bytes(&a->bias) +
                  tensor_bytes(&a->y);
}

void et_job_info_matmul(et_job_info *info, const char *label, const et_matmul_args *a,
                        int64_t flops)
{
    memset(info, 0, sizeof *info);
    info->label = label;
    info->precision = et_job_precision(a->a.dtype);
    info->backend = runner(a->backend, ET_OP_MATMUL, a->a.dtype);
    if (flops < 0) {   /* y (M, N) = op(a) (M, K) . op(b) (K, N) */
        const int64_t K = a->trans_a ? a->a.shape[0] : a->a.shape[1];
        flops = 2 * a->y.shape[0] * a->y.shape[1] * K;
    }
    info->flops = flops;
    info->bytes = tensor_bytes(&a->a) + tensor_bytes(&a->b) + tensor_bytes(&a->bias) +
                  tensor_bytes(&a->y);
}

et_status et_submit_conv2d(et_queue *q, const char *label, int64_t flops,
                           const et_conv2d_args *a, uint64_t *ticket)
{
    et_job_info info, *ip = NULL;
    if (et_prof_enabled()) {
        et_job_info_conv2d(&info, label, a, flops);
        ip = &info;
    }
    return et_queue_submit_info(q, et_conv2d_job, a, sizeof *a, ip, ticket);
}

et_status et_submit_matmul(et_queue *q, const char *label, int64_t flops,
                           const et_matmul_args *a, uint64_t *ticket)
{
    et_job_info info, *ip = NULL;
    if (et_prof_enabled()) {
        et_job_info_matmul(&info, label, a, flops);
        ip = &info;
    }
    return et_queue_submit_info(q, et_matmul_job, a, sizeof *a, ip, ticket);
}

et_status et_offload_conv2d(const char *label, int64_t flops, const et_conv2d_args *a)
{
    et_queue *q = et_queue_default();
    if (!q) return ET_ERR_BACKEND;   /* et_queue_default set the message */
    uint64_t t;
    ET_TRY(et_submit_conv2d(q, label, flops, a, &t));
    return et_queue_wait(q, t);
}

et_status et_offload_matmul(const char *label, int64_t flops, const et_matmul_args *a)
{
    et_queue *q = et_queue_default();
    if (!q) return ET_ERR_BACKEND;
    uint64_t t;
    ET_TRY(et_submit_matmul(q, label, flops, a, &t));
    return et_queue_wait(q, t);
}
