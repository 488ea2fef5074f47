/* conv2d.c - see conv2d.h for the math; shapes are commented inline.
 *
 * The weight gradient has two formulations, both forward primitives only:
 *   conv : the forward conv of rearranged operands described in conv2d.h
 *          (dw_plan below): one conv2d job whose "kernel" is the dy map.
 *   gemm : im2col + the backend's MATMUL primitive, chunked over the output
 *          rows under a memory budget: conv2d_dw.c, shared with the bf16 /
 *          fp16 passes of conv2d_lowp.c. Chosen per call by ET_CONV_DW and
 *          its auto rule (conv2d_dw.h; measurements in conv2d_dw.c).
 */
#include "conv2d.h"
#include "conv2d_dw.h"
#include "offload.h"
#include "prep.h"

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
        ET_TRY(et_dw_budget(op, &budget));
        ET_TRY(et_dw_pick(op, be, x, dw, dy, sizeof(float), budget, &gemm));
    }
    dx_plan px;
    dw_plan pw;
    et_dw_gemm pg;
    memset(&px, 0, sizeof px);
    memset(&pw, 0, sizeof pw);
    memset(&pg, 0, sizeof pg);
    if (dx) ET_TRY(dx_plan_make(op, be, dy, w, p, dx, &px));
    if (dw) {
        et_status st = gemm ? et_dw_gemm_make(op, be, dy, x, p, dw, budget, &pg)   /* chunk 0 prepared */
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
    if (dw) sw = gemm ? et_dw_gemm_start(op, &pg, q)
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
        sw = et_dw_gemm_finish(op, &pg, q, sw);   /* waits chunk 0 even when it failed */
        if (sw != ET_OK && first == ET_OK) { first = sw; snprintf(msg, sizeof msg, "%s", et_error_message()); }
    } else if (dw) {
        if (sw == ET_OK) sw = et_queue_wait(q, tw);
        if (sw != ET_OK && first == ET_OK) { first = sw; snprintf(msg, sizeof msg, "%s", et_error_message()); }
        if (sw == ET_OK) dw_plan_finish(&pw, dw);
    }
    dx_plan_free(&px);
    dw_plan_free(&pw);
    et_dw_gemm_free(&pg);
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
