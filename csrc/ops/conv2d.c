/* conv2d.c - see conv2d.h for the math; shapes are commented inline.
 *
 * The weight gradient has two formulations, both forward primitives only:
 *   conv : the forward conv of rearranged operands described in conv2d.h
 *          (dw_plan below): one conv2d job whose "kernel" is the dy map.
 *   gemm : im2col + the backend's MATMUL primitive, chunked over the output
 *          rows under a memory budget (dw_gemm below): per group
 *          dw_g (OCg, Kg) = dy_g (OCg, P) . cols_g (Kg, P)^T.
 * Environment (read at every call, so tests and A/B runs switch in-process):
 *   ET_CONV_DW=conv|gemm|auto   (unset / empty = auto)
 *   ET_CONV_DW_BUDGET=<bytes>   per-chunk buffers of the gemm formulation,
 *                               default 16 MiB (why: see dw_gemm)
 * Any other ET_CONV_DW value is an ET_ERR_VALUE naming the variable.
 * auto: gemm on every backend except ref, unless one matmul job (a chunk of
 * one group) would be below 32 KFLOP; conv otherwise. Measured 2026-11-23,
 * resnet18 224 batch 32 shapes, 2 threads, alternating A/B in one process on
 * the shared 2-core machine (two runs): the dw passes of one step take onednn
 * 4.5-4.6 s (conv) vs 2.4 s (gemm), blas 6.1 s vs 2.5-2.6 s; per layer gemm
 * wins 1.3-8.7x (1x1 stride-2 downsamples most) except 256->512 s2 on 14x14
 * and 512 ch on 7x7 (0.88-1.18x, about even). The whole fp32 step on onednn:
 * 11.3 s -> 8.7 s. Depthwise 3x3 on 7x7 (512 groups: 2 KFLOP jobs) loses
 * 3.5x with gemm, hence the job-size floor; on 56x56 (58 KFLOP jobs) it wins
 * 2.8x. Script: benchmarks/bench_conv_dw.py; figures in
 * benchmarks/results/conv_dw_ab.md.
 * ref also gains (1.0-4.2x) but keeps conv: it is the oracle the other
 * backends are tested against, so its dw stays independent of this code.
 */
#include "conv2d.h"
#include "offload.h"
#include "prep.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(et_conv2d_args) <= ET_JOB_ARG_MAX, "conv2d job args exceed a queue slot");
_Static_assert(sizeof(et_matmul_args) <= ET_JOB_ARG_MAX, "matmul job args exceed a queue slot");


et_status et_offload_sync(et_job_fn fn, const void *arg, size_t size)
{
    et_queue *q = et_queue_default();
    if (!q) return ET_ERR_BACKEND;   /* et_queue_default set the message */
    uint64_t t;
    ET_TRY(et_queue_submit(q, fn, arg, size, &t));
    return et_queue_wait(q, t);
}

et_status et_conv2d_shape(const char *op, const et_tensor *x, const et_tensor *w,
                          const et_tensor *bias, const et_conv2d_params *p, int64_t y[4])
{
    char sx[96], sw[96];
    et_shape_str(x, sx, sizeof sx);
    et_shape_str(w, sw, sizeof sw);
    if (x->ndim != 4)
        return et_error(ET_ERR_VALUE, "%s: input must be 4D (N, C, H, W), got shape %s (weight %s)",
                        op, sx, sw);
    if (w->ndim != 4)
        return et_error(ET_ERR_VALUE, "%s: weight must be 4D (OC, C/groups, KH, KW), got shape %s "
                        "(input %s)", op, sw, sx);
    if (x->dtype != ET_F32 || w->dtype != ET_F32)
        return et_error(ET_ERR_TYPE, "%s: input %s and weight %s must be float32, got %s and %s",
                        op, sx, sw, et_dtype_name(x->dtype), et_dtype_name(w->dtype));
    const int64_t G = p->groups;
    if (G <= 0)
        return et_error(ET_ERR_VALUE, "%s: groups must be positive, got %lld (input %s, weight %s)",
                        op, (long long)G, sx, sw);
    for (int i = 0; i < 2; i++) {
        if (p->stride[i] <= 0)
            return et_error(ET_ERR_VALUE, "%s: stride must be positive, got (%lld, %lld) "
                            "(input %s, weight %s)", op, (long long)p->stride[0],
                            (long long)p->stride[1], sx, sw);
        if (p->dilation[i] <= 0)
            return et_error(ET_ERR_VALUE, "%s: dilation must be positive, got (%lld, %lld) "
                            "(input %s, weight %s)", op, (long long)p->dilation[0],
                            (long long)p->dilation[1], sx, sw);
        if (p->padding[i] < 0)
            return et_error(ET_ERR_VALUE, "%s: padding must be non-negative, got (%lld, %lld) "
                            "(input %s, weight %s)", op, (long long)p->padding[0],
                            (long long)p->padding[1], sx, sw);
    }
    for (int i = 0; i < 4; i++)
        if (x->shape[i] == 0 || w->shape[i] == 0)
            return et_error(ET_ERR_VALUE, "%s: empty dimension in input %s or weight %s", op, sx, sw);
    if (w->shape[0] % G != 0)
        return et_error(ET_ERR_VALUE, "%s: out_channels %lld not divisible by groups %lld "
                        "(input %s, weight %s)", op, (long long)w->shape[0], (long long)G, sx, sw);
    if (x->shape[1] != w->shape[1] * G)
        return et_error(ET_ERR_VALUE, "%s: input channels %lld != weight in_channels*groups %lld "
                        "(input %s, weight %s, groups %lld)", op, (long long)x->shape[1],
                        (long long)(w->shape[1] * G), sx, sw, (long long)G);
    int64_t out[2];
    for (int i = 0; i < 2; i++) {
        out[i] = et_conv_out_size(x->shape[2 + i], w->shape[2 + i], p->stride[i], p->padding[i],
                                  p->padding[i], p->dilation[i]);
        if (out[i] <= 0)
            return et_error(ET_ERR_VALUE, "%s: kernel (%lld, %lld) with dilation (%lld, %lld) "
                            "spans (%lld, %lld), larger than the padded input (%lld, %lld) "
                            "(input %s, weight %s, padding (%lld, %lld))", op,
                            (long long)w->shape[2], (long long)w->shape[3],
                            (long long)p->dilation[0], (long long)p->dilation[1],
                            (long long)(p->dilation[0] * (w->shape[2] - 1) + 1),
                            (long long)(p->dilation[1] * (w->shape[3] - 1) + 1),
                            (long long)(x->shape[2] + 2 * p->padding[0]),
                            (long long)(x->shape[3] + 2 * p->padding[1]), sx, sw,
                            (long long)p->padding[0], (long long)p->padding[1]);
    }
    if (bias && bias->data) {
        char sb[96];
        et_shape_str(bias, sb, sizeof sb);
        if (bias->dtype != ET_F32)
            return et_error(ET_ERR_TYPE, "%s: bias %s must be float32, got %s", op, sb,
                            et_dtype_name(bias->dtype));
        if (bias->ndim != 1 || bias->shape[0] != w->shape[0])
            return et_error(ET_ERR_VALUE, "%s: bias %s must be (%lld,) (weight %s)", op, sb,
                            (long long)w->shape[0], sw);
    }
    y[0] = x->shape[0];
    y[1] = w->shape[0];
    y[2] = out[0];
    y[3] = out[1];
    return ET_OK;
}

static void fill_args(et_conv2d_args *a, const et_backend *be, int64_t groups)
{
    memset(a, 0, sizeof *a);
    a->backend = be;
    a->groups = groups;
}

et_status et_conv2d_forward(const et_backend *be, const et_tensor *x, const et_tensor *w,
                            const et_tensor *bias, const et_conv2d_params *p, et_tensor *y)
{
    int64_t ys[4];
    ET_TRY(et_conv2d_shape("conv2d_forward", x, w, bias, p, ys));
    et_conv2d_args a;
    fill_args(&a, be, p->groups);
    a.x = *x;
    a.w = *w;
    if (bias && bias->data) a.bias = *bias;
    a.y = *y;
    for (int i = 0; i < 2; i++) {
        a.stride[i] = p->stride[i];
        a.dilation[i] = p->dilation[i];
        a.pad_lo[i] = a.pad_hi[i] = p->padding[i];
    }
    ET_TRY(et_conv2d_check("conv2d_forward", &a));
    return et_offload_conv2d("conv2d.fwd", -1, &a);
}

/* ---- backward-data plan ------------------------------------------------ */

typedef struct dx_plan {
    et_conv2d_args args;
    float *dyd;   // (N, OC, Hd, Wd) zero-dilated, cropped dy; NULL when dy is used as is
    float *wt;    // (C, OC/G, KH, KW) flipped, per-group transposed w
} dx_plan;

static void dx_plan_free(dx_plan *pl)
{
    et_aligned_free(pl->dyd);
    et_aligned_free(pl->wt);
    pl->dyd = pl->wt = NULL;
}

static et_status dx_plan_make(const char *op, const et_backend *be, const et_tensor *dy,
                              const et_tensor *w, const et_conv2d_params *p, et_tensor *dx,
                              dx_plan *pl)
{
    memset(pl, 0, sizeof *pl);
    const int64_t N = dx->shape[0], C = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    const int64_t OC = w->shape[0], Cg = w->shape[1], KH = w->shape[2], KW = w->shape[3];
    const int64_t OH = dy->shape[2], OW = dy->shape[3], G = p->groups, OCg = OC / G;
    const int64_t in[2] = {H, W}, K[2] = {KH, KW}, O[2] = {OH, OW};
    et_prep_dx_geom geo;   /* the same geometry as the low-precision path (prep.h) */
    et_prep_dx_geometry(p, in, K, O, &geo);
    fill_args(&pl->args, be, G);
    for (int i = 0; i < 2; i++) {
        pl->args.pad_lo[i] = geo.pad_lo[i];
        pl->args.pad_hi[i] = geo.pad_hi[i];
        pl->args.stride[i] = 1;
        pl->args.dilation[i] = p->dilation[i];
    }
    int64_t dshape[4] = {N, OC, geo.dd[0], geo.dd[1]};
    if (geo.copy) {
        const size_t n = (size_t)(N * OC * geo.dd[0] * geo.dd[1]);
        pl->dyd = et_aligned_alloc(n * sizeof(float));
        if (!pl->dyd) return et_error(ET_ERR_NOMEM, "%s: cannot allocate dilated grad_output "
                                      "(%lld, %lld, %lld, %lld)", op, (long long)N, (long long)OC,
                                      (long long)geo.dd[0], (long long)geo.dd[1]);
        et_prep_dilate(dy->data, pl->dyd, sizeof(float), N * OC, OH, OW, p->stride,
                       geo.crop_lo, geo.dd);
        ET_TRY(et_tensor_view(&pl->args.x, pl->dyd, ET_F32, 4, dshape));
    } else {
        pl->args.x = *dy;
    }
    const size_t nw = (size_t)(OC * Cg * KH * KW);
    pl->wt = et_aligned_alloc(nw * sizeof(float));
    if (!pl->wt) {
        dx_plan_free(pl);
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the transposed weight (%lld floats)",
                        op, (long long)nw);
    }
    et_prep_flip_transpose(w->data, pl->wt, sizeof(float), OC, Cg, KH, KW, G);
    int64_t wshape[4] = {C, OCg, KH, KW};
    et_status st = et_tensor_view(&pl->args.w, pl->wt, ET_F32, 4, wshape);
    if (st == ET_OK) {
        pl->args.y = *dx;
        st = et_conv2d_check(op, &pl->args);
    }
    if (st != ET_OK) dx_plan_free(pl);
    return st;
}

/* ---- backward-weight plan -------------------------------------------------- */

typedef struct dw_plan {
    et_conv2d_args args;
    float *xt;    // (C/G, G*N, H, W): xt[c, g*N + n] = x[n, g*C/G + c]; NULL when x is used as is
    float *dyt;   // (OC, N, OH, OW): dyt[o, n] = dy[n, o]; NULL when dy is used as is
    float *out;   // (C/G, OC, KHo, KWo), KHo >= KH (leftover rows), cropped on finish
} dw_plan;

static void dw_plan_free(dw_plan *pl)
{
    et_aligned_free(pl->xt);
    et_aligned_free(pl->dyt);
    et_aligned_free(pl->out);
    pl->xt = pl->dyt = pl->out = NULL;
}

static et_status dw_plan_make(const char *op, const et_backend *be, const et_tensor *dy,
                              const et_tensor *x, const et_conv2d_params *p, const et_tensor *dw,
                              dw_plan *pl)
{
    memset(pl, 0, sizeof *pl);
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t OC = dw->shape[0], Cg = dw->shape[1], KH = dw->shape[2], KW = dw->shape[3];
    const int64_t OH = dy->shape[2], OW = dy->shape[3], G = p->groups;
    const int64_t in[2] = {H, W}, K[2] = {KH, KW}, O[2] = {OH, OW};
    et_prep_dw_geom geo;   /* the same geometry as the low-precision path (prep.h) */
    et_prep_dw_geometry(p, in, K, O, &geo);
    fill_args(&pl->args, be, G);
    for (int i = 0; i < 2; i++) {
        pl->args.stride[i] = p->dilation[i];
        pl->args.dilation[i] = p->stride[i];
        pl->args.pad_lo[i] = geo.pad_lo[i];
        pl->args.pad_hi[i] = geo.pad_hi[i];
    }
    et_status st = ET_OK;
    /* x' (C/G, G*N, H, W) */
    int64_t xs[4] = {Cg, G * N, H, W};
    if (N == 1 && G == 1) {
        ET_TRY(et_tensor_view(&pl->args.x, x->data, ET_F32, 4, xs));   /* same bytes */
    } else {
        pl->xt = et_aligned_alloc((size_t)(N * C * H * W) * sizeof(float));
        if (!pl->xt) return et_error(ET_ERR_NOMEM, "%s: cannot allocate transposed input %lld floats",
                                     op, (long long)(N * C * H * W));
        et_prep_group_swap(x->data, pl->xt, sizeof(float), N, C, H * W, G);
        ET_TRY(et_tensor_view(&pl->args.x, pl->xt, ET_F32, 4, xs));
    }
    /* dy' (OC, N, OH, OW) */
    int64_t ds[4] = {OC, N, OH, OW};
    if (N == 1) {
        st = et_tensor_view(&pl->args.w, dy->data, ET_F32, 4, ds);
    } else {
        pl->dyt = et_aligned_alloc((size_t)(N * OC * OH * OW) * sizeof(float));
        if (!pl->dyt) {
            dw_plan_free(pl);
            return et_error(ET_ERR_NOMEM, "%s: cannot allocate transposed grad_output", op);
        }
        et_prep_group_swap(dy->data, pl->dyt, sizeof(float), N, OC, OH * OW, 1);
        st = et_tensor_view(&pl->args.w, pl->dyt, ET_F32, 4, ds);
    }
    if (st != ET_OK) { dw_plan_free(pl); return st; }
    int64_t os[4] = {Cg, OC, geo.ko[0], geo.ko[1]};
    pl->out = et_aligned_alloc((size_t)(Cg * OC * geo.ko[0] * geo.ko[1]) * sizeof(float));
    if (!pl->out) {
        dw_plan_free(pl);
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the weight-gradient buffer", op);
    }
    st = et_tensor_view(&pl->args.y, pl->out, ET_F32, 4, os);
    if (st == ET_OK) st = et_conv2d_check(op, &pl->args);
    if (st != ET_OK) dw_plan_free(pl);
    return st;
}

/* out (C/G, OC, KHo, KWo) -> dw (OC, C/G, KH, KW), cropping the leftover rows. */
static void dw_plan_finish(const dw_plan *pl, et_tensor *dw)
{
    et_prep_crop_transpose(pl->out, dw->data, sizeof(float), dw->shape[0], dw->shape[1],
                           dw->shape[2], dw->shape[3], pl->args.y.shape[2], pl->args.y.shape[3]);
}

/* ---- backward-weight as im2col + matmul (ET_CONV_DW=gemm) -------------------
 *
 * The same dw as the conv formulation above, as matrix products instead of a
 * conv whose "kernel" is the whole dy map (oneDNN's conv kernels are tuned
 * for small kernels and large outputs, not a 56x56 "kernel" producing 3x3:
 * benchmarks/README.md). With P = N*OH*OW output positions, Kg = Cg*KH*KW:
 *   dw_g (OCg, Kg) = dy_g (OCg, P) . cols_g (Kg, P)^T        per group g,
 * dy_g the channel-major dy rows g*OCg.., cols_g = im2col(x) rows g*Kg..;
 * dw (OC, Cg, KH, KW) is exactly the G blocks (OCg, Kg) stacked, so the
 * matmuls write dw in place, no transpose. The matmul is the backend's
 * forward MATMUL primitive (a = dy_g, b = cols_g with trans_b: both operands
 * have the reduction P as their contiguous dim), so the contract holds.
 *
 * Bounded memory: the P positions are cut into chunks of R output rows
 * ((n, oh) pairs, prep.h), each chunk's cols (C*KH*KW, R*OW) and channel-major
 * dy (OC, R*OW) together within the budget (ET_CONV_DW_BUDGET, default
 * 16 MiB). Why 16 MiB: the chunk is written by im2col and read right away by
 * the matmul, so it should stay in the last-level cache (32 MiB L3 on the
 * 2-core test machine, shared). Measured on onednn, resnet18 b32 shapes,
 * 2 threads: 64 MiB is 30-45% slower on the 56x56 / 14x14 layers (128 MiB 70%);
 * 8-32 MiB are equal within noise; 2 MiB loses ~15% on 512ch 7x7 (short
 * reductions and many CPU adds of the (512, 4608) partial). With 16 MiB the
 * largest layer (64 ch 3x3 on 56x56: 231 MiB of cols for the whole batch)
 * still reduces over ~6000 positions per product. At least one output row
 * per chunk: only a row larger than the budget exceeds it.
 * Chunk 0 writes dw, later chunks a partial buffer (dw's size) that the CPU
 * adds into dw in fp32. Chunks run one after the other (the CPU builds chunk
 * k+1 after chunk k's products: on a CPU backend both would share the cores).
 */

#define ET_DW_BUDGET_DEFAULT ((int64_t)16 << 20)

typedef struct dw_gemm {
    const et_backend *be;
    const float *x, *dy;
    float *dw;
    int64_t N, C, H, W, OC, KH, KW, OH, OW, G, OCg, Kg;
    int64_t stride[2], dilation[2], pad_lo[2];
    int64_t rows, R, nchunks;   // N*OH output rows, R rows per chunk
    float *cols;       // (C*KH*KW, R*OW) this chunk's im2col
    float *dyt;        // (OC, R*OW) this chunk's channel-major dy
    const float *dya;  // dyt, or dy itself when the chunk is one whole image
    float *part;       // (OC, Kg) products of chunks >= 1; NULL with one chunk
    uint64_t *tickets; // (G) of the chunk in flight
    int64_t nsub;      // tickets submitted and not yet waited
} dw_gemm;

static void dwg_free(dw_gemm *g)
{
    et_aligned_free(g->cols);
    et_aligned_free(g->dyt);
    et_aligned_free(g->part);
    et_aligned_free(g->tickets);
    g->cols = g->dyt = g->part = NULL;
    g->tickets = NULL;
}

/* ET_CONV_DW_BUDGET: bytes of the per-chunk buffers (a positive integer),
 * default 16 MiB; a tiny value forces chunking (tests). */
static et_status dw_budget(const char *op, int64_t *bytes)
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
 * (cols + channel-major dy of one row: (C*KH*KW + OC)*OW floats), at least
 * one, then evened out over the chunks. x (N, C, H, W), dw (OC, Cg, KH, KW),
 * dy (N, OC, OH, OW). */
static void dw_chunking(int64_t budget, const et_tensor *x, const et_tensor *dw,
                        const et_tensor *dy, int64_t *R, int64_t *nchunks)
{
    const int64_t rows = x->shape[0] * dy->shape[2];
    const int64_t row_bytes = (x->shape[1] * dw->shape[2] * dw->shape[3] + dw->shape[0]) *
                              dy->shape[3] * (int64_t)sizeof(float);
    int64_t r = budget / row_bytes;
    if (r < 1) r = 1;
    if (r > rows) r = rows;
    *nchunks = (rows + r - 1) / r;
    *R = (rows + *nchunks - 1) / *nchunks;
}

/* ET_CONV_DW: "conv" / "gemm" / "auto" (unset or empty = auto). *gemm = 1
 * for the im2col + matmul formulation. Read at every call (a getenv: cheap
 * next to any conv) so tests and A/B runs can switch it in one process.
 * The auto rule (measured, see the file's top comment): gemm on every
 * backend but ref, unless the average matmul job is tiny. */
static et_status dw_pick(const char *op, const et_backend *be, const et_tensor *x,
                         const et_tensor *dw, const et_tensor *dy, int64_t budget, int *gemm)
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
    dw_chunking(budget, x, dw, dy, &R, &nchunks);
    const int64_t G = x->shape[1] / dw->shape[1];
    const double job = 2.0 * (double)(dw->shape[0] / G) *
                       (double)(dw->shape[1] * dw->shape[2] * dw->shape[3]) *
                       (double)(R * dy->shape[3]);
    *gemm = job >= 32768.0;
    return ET_OK;
}

/* rows [r0, r0 + len) of chunk k */
static void dwg_chunk(const dw_gemm *g, int64_t k, int64_t *r0, int64_t *len)
{
    *r0 = k * g->R;
    *len = g->rows - *r0 < g->R ? g->rows - *r0 : g->R;
}

static et_status dwg_prep(const char *op, dw_gemm *g, int64_t k)
{
    int64_t r0, len;
    dwg_chunk(g, k, &r0, &len);
    ET_TRY(et_prep_im2col_rows(op, g->x, g->cols, sizeof(float), g->N, g->C, g->H, g->W, g->KH,
                               g->KW, g->stride, g->pad_lo, g->dilation, g->OH, g->OW, r0, len));
    if (r0 % g->OH == 0 && len == g->OH) {
        /* one whole image: its dy (OC, OH*OW) already is the channel-major chunk */
        g->dya = g->dy + (r0 / g->OH) * g->OC * g->OH * g->OW;
        return ET_OK;
    }
    g->dya = g->dyt;
    return et_prep_rows_gather(op, g->dy, g->dyt, sizeof(float), g->N, g->OC, g->OH, g->OW, r0,
                               len);
}

static et_status dwg_make(const char *op, const et_backend *be, const et_tensor *dy,
                          const et_tensor *x, const et_conv2d_params *p, et_tensor *dw,
                          int64_t budget, dw_gemm *g)
{
    memset(g, 0, sizeof *g);
    g->be = be;
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
    dw_chunking(budget, x, dw, dy, &g->R, &g->nchunks);
    const size_t ncol = (size_t)(g->R * g->OW);
    g->cols = et_aligned_alloc((size_t)(g->C * g->KH * g->KW) * ncol * sizeof(float));
    g->dyt = et_aligned_alloc((size_t)g->OC * ncol * sizeof(float));
    g->tickets = et_aligned_alloc((size_t)g->G * sizeof(uint64_t));
    if (g->nchunks > 1) g->part = et_aligned_alloc((size_t)(g->OC * g->Kg) * sizeof(float));
    if (!g->cols || !g->dyt || !g->tickets || (g->nchunks > 1 && !g->part)) {
        dwg_free(g);
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the im2col chunk (%lld x %lld floats) "
                        "and grad_output chunk (%lld x %lld floats)", op,
                        (long long)(g->C * g->KH * g->KW), (long long)ncol, (long long)g->OC,
                        (long long)ncol);
    }
    et_status st = dwg_prep(op, g, 0);
    if (st != ET_OK) dwg_free(g);
    return st;
}

/* The G matmuls of chunk k (prepared), into dw (k = 0) or part. */
static et_status dwg_submit(const char *op, dw_gemm *g, et_queue *q, int64_t k)
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
        ET_TRY(et_tensor_view(&m.a, (void *)(g->dya + gi * g->OCg * P), ET_F32, 2, as));
        ET_TRY(et_tensor_view(&m.b, g->cols + gi * g->Kg * P, ET_F32, 2, bs));
        ET_TRY(et_tensor_view(&m.y, out + gi * g->OCg * g->Kg, ET_F32, 2, ys));
        m.trans_b = 1;   // y (OCg, Kg) = a (OCg, P) . b (Kg, P)^T
        ET_TRY(et_matmul_check(op, &m));
        ET_TRY(et_submit_matmul(q, "conv2d.bwd_weight", flops, &m, &g->tickets[g->nsub]));
        g->nsub++;
    }
    return ET_OK;
}

/* Waits for every submitted ticket; the first failure's status and message. */
static et_status dwg_wait(dw_gemm *g, et_queue *q)
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

/* dw (OC*Kg) += part, in fp32 */
static void dwg_add(dw_gemm *g)
{
    const int64_t n = g->OC * g->Kg;
    float *d = g->dw;
    const float *s = g->part;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) d[i] += s[i];
}

/* After chunk 0's submit: wait for it, then prepare, run and add every
 * later chunk in turn. Every submitted ticket is waited before returning. */
static et_status dwg_rest(const char *op, dw_gemm *g, et_queue *q)
{
    ET_TRY(dwg_wait(g, q));
    for (int64_t k = 1; k < g->nchunks; k++) {
        ET_TRY(dwg_prep(op, g, k));
        et_status st = dwg_submit(op, g, q, k);
        if (st != ET_OK) {
            char msg[ET_ERRMSG_MAX];
            snprintf(msg, sizeof msg, "%s", et_error_message());
            (void)dwg_wait(g, q);
            et_error_set_message(msg);
            return st;
        }
        ET_TRY(dwg_wait(g, q));
        dwg_add(g);
    }
    return ET_OK;
}

static void bias_grad(const et_tensor *dy, et_tensor *db)
{
    const int64_t N = dy->shape[0], OC = dy->shape[1], OHW = dy->shape[2] * dy->shape[3];
    const float *g = dy->data;   // (N, OC, OH*OW)
    float *b = db->data;         // (OC)
    for (int64_t o = 0; o < OC; o++) {
        double acc = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *row = g + (n * OC + o) * OHW;
            float s = 0.0f;
#pragma omp simd reduction(+:s)
            for (int64_t j = 0; j < OHW; j++) s += row[j];
            acc += s;
        }
        b[o] = (float)acc;
    }
}

static et_status check_grad(const char *op, const et_tensor *dy, const int64_t ys[4],
                            const et_tensor *x, const et_tensor *w)
{
    char sd[96], sx[96], sw[96];
    if (dy->dtype != ET_F32)
        return et_error(ET_ERR_TYPE, "%s: grad_output %s must be float32, got %s", op,
                        et_shape_str(dy, sd, sizeof sd), et_dtype_name(dy->dtype));
    if (dy->ndim != 4 || dy->shape[0] != ys[0] || dy->shape[1] != ys[1] ||
        dy->shape[2] != ys[2] || dy->shape[3] != ys[3])
        return et_error(ET_ERR_VALUE, "%s: grad_output %s must have the output shape "
                        "(%lld, %lld, %lld, %lld) (input %s, weight %s)", op,
                        et_shape_str(dy, sd, sizeof sd), (long long)ys[0], (long long)ys[1],
                        (long long)ys[2], (long long)ys[3], et_shape_str(x, sx, sizeof sx),
                        et_shape_str(w, sw, sizeof sw));
    return ET_OK;
}

static et_status check_out(const char *op, const char *what, const et_tensor *t, const et_tensor *like)
{
    char s1[96], s2[96];
    if (t->dtype != ET_F32 || t->ndim != like->ndim ||
        memcmp(t->shape, like->shape, sizeof(int64_t) * (size_t)like->ndim) != 0)
        return et_error(ET_ERR_VALUE, "%s: %s %s must be float32 of shape %s", op, what,
                        et_shape_str(t, s1, sizeof s1), et_shape_str(like, s2, sizeof s2));
    return ET_OK;
}

static et_status conv2d_backward(const char *op, const et_backend *be, const et_tensor *dy,
                                 const et_tensor *x, const et_tensor *w, const et_conv2d_params *p,
                                 et_tensor *dx, et_tensor *dw, et_tensor *db)
{
    int64_t ys[4];
    ET_TRY(et_conv2d_shape(op, x, w, NULL, p, ys));
    ET_TRY(check_grad(op, dy, ys, x, w));
    if (dx) ET_TRY(check_out(op, "grad_input", dx, x));
    if (dw) ET_TRY(check_out(op, "grad_weight", dw, w));
    if (db && (db->dtype != ET_F32 || db->ndim != 1 || db->shape[0] != w->shape[0]))
        return et_error(ET_ERR_VALUE, "%s: grad_bias must be float32 (%lld,)", op,
                        (long long)w->shape[0]);
    et_queue *q = NULL;
    if (dx) {
        /* padding beyond the kernel's reach with a stride skipping x: every
         * output reads padding only, so dx is exactly zero (and the
         * backward-data conv would have an empty operand) */
        const int64_t in[2] = {x->shape[2], x->shape[3]}, K[2] = {w->shape[2], w->shape[3]},
                      O[2] = {dy->shape[2], dy->shape[3]};
        et_prep_dx_geom geo;
        et_prep_dx_geometry(p, in, K, O, &geo);
        if (et_prep_dx_unreached(&geo)) {
            memset(dx->data, 0, (size_t)et_tensor_numel(dx) * sizeof(float));
            dx = NULL;
            if (!dw && !db) return ET_OK;
        }
    }
    if (dx || dw) {
        q = et_queue_default();
        if (!q) return ET_ERR_BACKEND;
    }
    int gemm = 0;   /* dw as im2col + matmul chunks (ET_CONV_DW) */
    int64_t budget = 0;
    if (dw) {
        ET_TRY(dw_budget(op, &budget));
        ET_TRY(dw_pick(op, be, x, dw, dy, budget, &gemm));
    }
    dx_plan px;
    dw_plan pw;
    dw_gemm pg;
    memset(&px, 0, sizeof px);
    memset(&pw, 0, sizeof pw);
    memset(&pg, 0, sizeof pg);
    if (dx) ET_TRY(dx_plan_make(op, be, dy, w, p, dx, &px));
    if (dw) {
        et_status st = gemm ? dwg_make(op, be, dy, x, p, dw, budget, &pg)   /* chunk 0 prepared */
                            : dw_plan_make(op, be, dy, x, p, dw, &pw);
        if (st != ET_OK) { dx_plan_free(&px); return st; }
    }
    /* submit both back to back; the CPU sums db while they run */
    uint64_t tx = 0, tw = 0;
    et_status sx = ET_OK, sw = ET_OK;
    /* each pass does the forward's useful FLOPs (the dx primitive's own count
     * includes the zeros of the dilated dy) */
    const int64_t flops = et_conv2d_pass_flops(x->shape[0], w->shape[0], dy->shape[2],
                                               dy->shape[3], w->shape[1], w->shape[2],
                                               w->shape[3]);
    if (dx) sx = et_submit_conv2d(q, "conv2d.bwd_data", flops, &px.args, &tx);
    if (dw) sw = gemm ? dwg_submit(op, &pg, q, 0)
                      : et_submit_conv2d(q, "conv2d.bwd_weight", flops, &pw.args, &tw);
    if (db) bias_grad(dy, db);
    /* wait for every submitted ticket before freeing the buffers they read */
    char msg[ET_ERRMSG_MAX] = "";
    et_status first = ET_OK;
    if (dx) {
        if (sx == ET_OK) sx = et_queue_wait(q, tx);
        if (sx != ET_OK) { first = sx; snprintf(msg, sizeof msg, "%s", et_error_message()); }
    }
    if (dw && gemm) {
        /* a failed submit of chunk 0 still waits what it queued */
        if (sw == ET_OK) sw = dwg_rest(op, &pg, q);
        else {
            char m2[ET_ERRMSG_MAX];
            snprintf(m2, sizeof m2, "%s", et_error_message());
            (void)dwg_wait(&pg, q);
            et_error_set_message(m2);
        }
        if (sw != ET_OK && first == ET_OK) { first = sw; snprintf(msg, sizeof msg, "%s", et_error_message()); }
    } else if (dw) {
        if (sw == ET_OK) sw = et_queue_wait(q, tw);
        if (sw != ET_OK && first == ET_OK) { first = sw; snprintf(msg, sizeof msg, "%s", et_error_message()); }
        if (sw == ET_OK) dw_plan_finish(&pw, dw);
    }
    dx_plan_free(&px);
    dw_plan_free(&pw);
    dwg_free(&pg);
    if (first != ET_OK) et_error_set_message(msg);
    return first;
}

et_status et_conv2d_backward(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                             const et_tensor *w, const et_conv2d_params *p,
                             et_tensor *dx, et_tensor *dw, et_tensor *db)
{
    return conv2d_backward("conv2d_backward", be, dy, x, w, p, dx, dw, db);
}

et_status et_conv2d_backward_data(const et_backend *be, const et_tensor *dy, const et_tensor *w,
                                  const et_conv2d_params *p, et_tensor *dx)
{
    /* dx's shape stands for x's (its values are not read) */
    return conv2d_backward("conv2d_backward_data", be, dy, dx, w, p, dx, NULL, NULL);
}

et_status et_conv2d_backward_weight(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                    const et_conv2d_params *p, et_tensor *dw)
{
    /* dw's shape stands for w's */
    return conv2d_backward("conv2d_backward_weight", be, dy, x, dw, p, NULL, dw, NULL);
}
