/* conv2d_dw.c - conv2d's weight gradient as im2col + matmul chunks (see
 * conv2d_dw.h), for f32 (conv2d.c) and bf16 / f16 operands (conv2d_lowp.c).
 *
 * Why this formulation: the conv formulation is a conv whose "kernel" is the
 * whole dy map (oneDNN's conv kernels are tuned for small kernels and large
 * outputs, not a 56x56 "kernel" producing 3x3: benchmarks/README.md). With
 * P = N*OH*OW output positions, Kg = Cg*KH*KW:
 *   dw_g (OCg, Kg) = dy_g (OCg, P) . cols_g (Kg, P)^T        per group g,
 * dy_g the channel-major dy rows g*OCg.., cols_g = im2col(x) rows g*Kg..;
 * dw (OC, Cg, KH, KW) is exactly the G blocks (OCg, Kg) stacked, so the
 * matmuls write dw in place, no transpose. The matmul is the backend's
 * forward MATMUL primitive (a = dy_g, b = cols_g with trans_b: both operands
 * have the reduction P as their contiguous dim), so the contract holds; in
 * bf16 / f16 it is the primitive's bf16/f16 x bf16/f16 -> f32 combination
 * (blas: sbgemm or exact widening to sgemm; onednn: native or widened in
 * the backend), which every backend lists in supports(): no ref fallback.
 *
 * Measured 2026-11-23 (fp32), resnet18 224 batch 32 shapes, 2 threads,
 * alternating A/B in one process on the shared 2-core machine (two runs):
 * the dw passes of one step take onednn 4.5-4.6 s (conv) vs 2.4 s (gemm),
 * blas 6.1 s vs 2.5-2.6 s; per layer gemm wins 1.3-8.7x (1x1 stride-2
 * downsamples most) except 256->512 s2 on 14x14 and 512 ch on 7x7
 * (0.88-1.18x, about even). The whole fp32 step on onednn: 11.3 s -> 8.7 s.
 * Depthwise 3x3 on 7x7 (512 groups: 2 KFLOP jobs) loses 3.5x with gemm,
 * hence the job-size floor of the auto rule; on 56x56 (58 KFLOP jobs) it
 * wins 2.8x. bf16 / fp16 (the low-precision pass, conversions included,
 * same A/B setup, 2026-11-24, load 3.3-3.7): bf16 onednn 4.9 -> 2.7 s, blas
 * 6.1 -> 2.8 s; fp16 onednn 5.2 -> 4.3 s, blas 7.2 -> 4.6 s. fp16 gains
 * less because both backends run the f16 matmul widened to f32 (both
 * operands converted per job: a (64, 12544) x (576, 12544)^T product takes
 * ~45 ms in f16 vs ~19 ms in bf16 and 14 ms in f32); per layer fp16 gemm
 * still wins except 7x7 stem / 512 ch on 7x7 on onednn (0.75-0.93x), so the
 * one rule stays. Script: benchmarks/bench_conv_dw.py (5th argument: the
 * precisions); tables in benchmarks/results/conv_dw_ab.md.
 * ref also gains (1.0-4.2x) but keeps conv: it is the oracle the other
 * backends are tested against, so its dw stays independent of this code.
 *
 * Bounded memory: the P positions are cut into chunks of R output rows
 * ((n, oh) pairs, prep.h), each chunk's cols (C*KH*KW, R*OW) and channel-major
 * dy (OC, R*OW) together within the budget (ET_CONV_DW_BUDGET, default
 * 16 MiB), counted in the operands' bytes (a bf16 chunk holds twice the rows
 * of an f32 one). Why 16 MiB: the chunk is written by im2col and read right
 * away by the matmul, so it should stay in the last-level cache (32 MiB L3 on
 * the 2-core test machine, shared). Measured on onednn (fp32), resnet18 b32
 * shapes, 2 threads: 64 MiB is 30-45% slower on the 56x56 / 14x14 layers
 * (128 MiB 70%); 8-32 MiB are equal within noise; 2 MiB loses ~15% on 512ch
 * 7x7 (short reductions and many CPU adds of the (512, 4608) partial). With
 * 16 MiB the largest layer (64 ch 3x3 on 56x56: 231 MiB of f32 cols for the
 * whole batch) still reduces over ~6000 positions per product. At least one
 * output row per chunk: only a row larger than the budget exceeds it.
 * Chunk 0 writes dw, later chunks a partial buffer (dw's size, f32) that the
 * CPU adds into dw in f32. Chunks run one after the other (the CPU builds
 * chunk k+1 after chunk k's products: on a CPU backend both would share the
 * cores).
 */
#include "conv2d_dw.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload.h"
#include "prep.h"

#define ET_DW_BUDGET_DEFAULT ((int64_t)16 << 20)

void et_dw_gemm_free(et_dw_gemm *g)
{
    et_aligned_free(g->cols);
    et_aligned_free(g->dyt);
    et_aligned_free(g->part);
    et_aligned_free(g->tickets);
    g->cols = g->dyt = NULL;
    g->part = NULL;
    g->tickets = NULL;
}

/* ET_CONV_DW_BUDGET: bytes of the per-chunk buffers (a positive integer),
 * default 16 MiB; a tiny value forces chunking (tests). */
et_status et_dw_budget(const char *op, int64_t *bytes)
{
    const char *e = getenv("ET_CONV_DW_BUDGET");
    *bytes = ET_DW_BUDGET_DEFAULT;
    if (!e || !*e) return ET_OK;
    char *end = NULL;
    errno = 0;
    const long long v = strtoll(e, &end, 10);
    if (errno || end == e || *end || v <= 0)
        return et_error(ET_ERR_VALUE, "%s: environment variable ET_CONV_DW_BUDGET must be a "
                        "positive number of bytes, got '%.64s'", op, e);
    *bytes = v;
    return ET_OK;
}

/* Output rows per chunk R and chunk count: as many rows as the budget holds
 * (cols + channel-major dy of one row: (C*KH*KW + OC)*OW elements of esz
 * bytes), at least one, then evened out over the chunks. x (N, C, H, W),
 * dw (OC, Cg, KH, KW), dy (N, OC, OH, OW). */
static void dw_chunking(int64_t budget, size_t esz, const et_tensor *x, const et_tensor *dw,
                        const et_tensor *dy, int64_t *R, int64_t *nchunks)
{
    const int64_t rows = x->shape[0] * dy->shape[2];
    const int64_t row_bytes = (x->shape[1] * dw->shape[2] * dw->shape[3] + dw->shape[0]) *
                              dy->shape[3] * (int64_t)esz;
    int64_t r = budget / row_bytes;
    if (r < 1) r = 1;
    if (r > rows) r = rows;
    *nchunks = (rows + r - 1) / r;
    *R = (rows + *nchunks - 1) / *nchunks;
}

/* ET_CONV_DW: "conv" / "gemm" / "auto" (unset or empty = auto). Read at
 * every call (a getenv: cheap next to any conv). The auto rule (measured,
 * see the top comment): gemm on every backend but ref, unless the average
 * matmul job is tiny. The same rule for every operand dtype. */
et_status et_dw_pick(const char *op, const et_backend *be, const et_tensor *x,
                     const et_tensor *dw, const et_tensor *dy, size_t esz, int64_t budget,
                     int *gemm)
{
    const char *e = getenv("ET_CONV_DW");
    if (e && strcmp(e, "gemm") == 0) { *gemm = 1; return ET_OK; }
    if (e && strcmp(e, "conv") == 0) { *gemm = 0; return ET_OK; }
    if (e && *e && strcmp(e, "auto") != 0)
        return et_error(ET_ERR_VALUE, "%s: environment variable ET_CONV_DW must be 'conv', "
                        "'gemm' or 'auto', got '%.64s'", op, e);
    if (strcmp(be->name, "ref") == 0) { *gemm = 0; return ET_OK; }
    /* one job per (chunk, group): 2*OCg*Kg*R*OW FLOPs; below 32 KFLOP (depthwise
     * on small maps: 512 groups on 7x7 make 14 chunks x 512 products of 2 KFLOP)
     * the per-job queue and primitive overhead outweighs the conv */
    int64_t R, nchunks;
    dw_chunking(budget, esz, x, dw, dy, &R, &nchunks);
    const int64_t G = x->shape[1] / dw->shape[1];
    const double job = 2.0 * (double)(dw->shape[0] / G) *
                       (double)(dw->shape[1] * dw->shape[2] * dw->shape[3]) *
                       (double)(R * dy->shape[3]);
    *gemm = job >= 32768.0;
    return ET_OK;
}

/* rows [r0, r0 + len) of chunk k */
static void dwg_chunk(const et_dw_gemm *g, int64_t k, int64_t *r0, int64_t *len)
{
    *r0 = k * g->R;
    *len = g->rows - *r0 < g->R ? g->rows - *r0 : g->R;
}

static et_status dwg_prep(const char *op, et_dw_gemm *g, int64_t k)
{
    int64_t r0, len;
    dwg_chunk(g, k, &r0, &len);
    ET_TRY(et_prep_im2col_rows(op, g->x, g->cols, g->esz, g->N, g->C, g->H, g->W, g->KH,
                               g->KW, g->stride, g->pad_lo, g->dilation, g->OH, g->OW, r0, len));
    if (r0 % g->OH == 0 && len == g->OH) {
        /* one whole image: its dy (OC, OH*OW) already is the channel-major chunk */
        g->dya = g->dy + (size_t)((r0 / g->OH) * g->OC * g->OH * g->OW) * g->esz;
        return ET_OK;
    }
    g->dya = g->dyt;
    return et_prep_rows_gather(op, g->dy, g->dyt, g->esz, g->N, g->OC, g->OH, g->OW, r0, len);
}

et_status et_dw_gemm_make(const char *op, const et_backend *be, const et_tensor *dy,
                          const et_tensor *x, const et_conv2d_params *p, et_tensor *dw,
                          int64_t budget, et_dw_gemm *g)
{
    memset(g, 0, sizeof *g);
    if (x->dtype != dy->dtype || dw->dtype != ET_F32 ||
        (x->dtype != ET_F32 && x->dtype != ET_BF16 && x->dtype != ET_F16))
        return et_error(ET_ERR_INTERNAL, "%s: gemm weight gradient of x %s, grad_output %s into "
                        "%s (wants f32/bf16/f16 operands of one dtype, f32 out)", op,
                        et_dtype_name(x->dtype), et_dtype_name(dy->dtype),
                        et_dtype_name(dw->dtype));
    g->be = be;
    g->dt = x->dtype;
    g->esz = et_dtype_size(x->dtype);
    g->x = x->data;
    g->dy = dy->data;
    g->dw = dw->data;
    g->N = x->shape[0], g->C = x->shape[1], g->H = x->shape[2], g->W = x->shape[3];
    g->OC = dw->shape[0], g->KH = dw->shape[2], g->KW = dw->shape[3];
    g->OH = dy->shape[2], g->OW = dy->shape[3];
    g->G = p->groups, g->OCg = g->OC / g->G, g->Kg = dw->shape[1] * g->KH * g->KW;
    for (int i = 0; i < 2; i++) {
        g->stride[i] = p->stride[i];
        g->dilation[i] = p->dilation[i];
        g->pad_lo[i] = p->padding[i];   /* pad_hi shows only in OH, OW */
    }
    g->rows = g->N * g->OH;
    dw_chunking(budget, g->esz, x, dw, dy, &g->R, &g->nchunks);
    const size_t ncol = (size_t)(g->R * g->OW);
    g->cols = et_aligned_alloc((size_t)(g->C * g->KH * g->KW) * ncol * g->esz);
    g->dyt = et_aligned_alloc((size_t)g->OC * ncol * g->esz);
    g->tickets = et_aligned_alloc((size_t)g->G * sizeof(uint64_t));
    if (g->nchunks > 1) g->part = et_aligned_alloc((size_t)(g->OC * g->Kg) * sizeof(float));
    if (!g->cols || !g->dyt || !g->tickets || (g->nchunks > 1 && !g->part)) {
        et_dw_gemm_free(g);
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the im2col chunk (%lld x %lld %s) "
                        "and grad_output chunk (%lld x %lld %s)", op,
                        (long long)(g->C * g->KH * g->KW), (long long)ncol,
                        et_dtype_name(g->dt), (long long)g->OC, (long long)ncol,
                        et_dtype_name(g->dt));
    }
    et_status st = dwg_prep(op, g, 0);
    if (st != ET_OK) et_dw_gemm_free(g);
    return st;
}

/* The G matmuls of chunk k (prepared), into dw (k = 0) or part. */
static et_status dwg_submit(const char *op, et_dw_gemm *g, et_queue *q, int64_t k)
{
    int64_t r0, len;
    dwg_chunk(g, k, &r0, &len);
    const int64_t P = len * g->OW;
    float *out = k == 0 ? g->dw : g->part;
    /* each product's useful FLOPs: the pass's 2*N*OC*OH*OW*Kg split over chunks and groups */
    const int64_t flops = 2 * g->OCg * g->Kg * P;
    for (int64_t gi = 0; gi < g->G; gi++) {
        et_matmul_args m;
        memset(&m, 0, sizeof m);
        m.backend = g->be;
        int64_t as[2] = {g->OCg, P}, bs[2] = {g->Kg, P}, ys[2] = {g->OCg, g->Kg};
        ET_TRY(et_tensor_view(&m.a, (void *)(g->dya + (size_t)(gi * g->OCg * P) * g->esz),
                              g->dt, 2, as));
        ET_TRY(et_tensor_view(&m.b, (char *)g->cols + (size_t)(gi * g->Kg * P) * g->esz, g->dt,
                              2, bs));
        ET_TRY(et_tensor_view(&m.y, out + gi * g->OCg * g->Kg, ET_F32, 2, ys));
        m.trans_b = 1;   // y (OCg, Kg) f32 = a (OCg, P) . b (Kg, P)^T
        ET_TRY(et_matmul_check(op, &m));
        ET_TRY(et_submit_matmul(q, "conv2d.bwd_weight", flops, &m, &g->tickets[g->nsub]));
        g->nsub++;
    }
    return ET_OK;
}

/* Waits for every submitted ticket; the first failure's status and message. */
static et_status dwg_wait(et_dw_gemm *g, et_queue *q)
{
    char msg[ET_ERRMSG_MAX] = "";
    et_status first = ET_OK;
    for (int64_t i = 0; i < g->nsub; i++) {
        const et_status st = et_queue_wait(q, g->tickets[i]);
        if (st != ET_OK && first == ET_OK) {
            first = st;
            snprintf(msg, sizeof msg, "%s", et_error_message());
        }
    }
    g->nsub = 0;
    if (first != ET_OK) et_error_set_message(msg);
    return first;
}

/* dw (OC*Kg) += part, in f32 */
static void dwg_add(et_dw_gemm *g)
{
    const int64_t n = g->OC * g->Kg;
    float *d = g->dw;
    const float *s = g->part;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) d[i] += s[i];
}

et_status et_dw_gemm_start(const char *op, et_dw_gemm *g, et_queue *q)
{
    return dwg_submit(op, g, q, 0);
}

/* Waits what is in flight, keeping the message of the failure `st`. */
static et_status dwg_drain(et_dw_gemm *g, et_queue *q, et_status st)
{
    char msg[ET_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s", et_error_message());
    (void)dwg_wait(g, q);
    et_error_set_message(msg);
    return st;
}

et_status et_dw_gemm_finish(const char *op, et_dw_gemm *g, et_queue *q, et_status started)
{
    /* a failed submit of chunk 0 still waits what it queued */
    if (started != ET_OK) return dwg_drain(g, q, started);
    ET_TRY(dwg_wait(g, q));
    for (int64_t k = 1; k < g->nchunks; k++) {
        ET_TRY(dwg_prep(op, g, k));
        const et_status st = dwg_submit(op, g, q, k);
        if (st != ET_OK) return dwg_drain(g, q, st);
        ET_TRY(dwg_wait(g, q));
        dwg_add(g);
    }
    return ET_OK;
}
