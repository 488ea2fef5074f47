/* conv2d_lowp.c - see conv2d_lowp.h for the math; shapes are commented inline. */
#include "conv2d_lowp.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../quant/convert.h"
#include "../quant/quantize.h"
#include "../quant/wcache.h"
#include "conv2d_dw.h"
#include "offload.h"
#include "prep.h"

/* ---- precision names, buffers, operand makers ------------------------------ */

et_status et_prec_from_name(const char *op, const char *arg, const char *name, et_prec *out)
{
    static const struct { const char *n; et_prec p; } tab[] = {
        {"fp32", ET_PREC_FP32}, {"float32", ET_PREC_FP32}, {"bf16", ET_PREC_BF16},
        {"bfloat16", ET_PREC_BF16}, {"fp16", ET_PREC_FP16}, {"float16", ET_PREC_FP16},
        {"int8", ET_PREC_INT8}};
    for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(name, tab[i].n) == 0) { *out = tab[i].p; return ET_OK; }
    return et_error(ET_ERR_VALUE, "%s: %s must be one of 'fp32', 'bf16', 'fp16', 'int8', got '%s'",
                    op, arg, name ? name : "(null)");
}

const char *et_prec_name(et_prec p)
{
    switch (p) {
    case ET_PREC_FP32: return "fp32";
    case ET_PREC_BF16: return "bf16";
    case ET_PREC_FP16: return "fp16";
    case ET_PREC_INT8: return "int8";
    }
    return "?";
}

et_dtype et_prec_dtype(et_prec p)
{
    switch (p) {
    case ET_PREC_BF16: return ET_BF16;
    case ET_PREC_FP16: return ET_F16;
    case ET_PREC_INT8: return ET_S8;
    default: return ET_F32;
    }
}

void *et_lowp_alloc(et_lowp_bufs *b, size_t bytes)
{
    if (b->n >= (int)(sizeof b->p / sizeof b->p[0])) return NULL;
    void *q = et_aligned_alloc(bytes ? bytes : 64);
    if (q) b->p[b->n++] = q;
    return q;
}

void et_lowp_free(et_lowp_bufs *b)
{
    for (int i = 0; i < b->n; i++) et_aligned_free(b->p[i]);
    b->n = 0;
}

et_status et_lowp_convert(const float *src, int64_t n, et_prec prec, void *dst)
{
    switch (prec) {
    case ET_PREC_BF16: return et_convert_f32_to_bf16(src, dst, n);
    case ET_PREC_FP16: return et_convert_f32_to_f16(src, dst, n);
    case ET_PREC_FP32: memcpy(dst, src, (size_t)n * sizeof(float)); return ET_OK;
    default: return et_error(ET_ERR_INTERNAL, "lowp: convert to int8 is a quantization");
    }
}

et_status et_lowp_check_xq(const char *op, const et_tensor *xq, float scale, const et_tensor *like)
{
    char s1[96], s2[96];
    et_shape_str(xq, s1, sizeof s1);
    et_shape_str(like, s2, sizeof s2);
    const int q8 = xq->dtype == ET_U8 || xq->dtype == ET_S8;
    if (!q8 && xq->dtype != ET_BF16 && xq->dtype != ET_F16)
        return et_error(ET_ERR_TYPE, "%s: x_q %s must be uint8 or int8 (an int8 forward's) or "
                        "bf16/f16 bits (a 16-bit forward's), got %s", op, s1,
                        et_dtype_name(xq->dtype));
    if (xq->ndim != like->ndim ||
        memcmp(xq->shape, like->shape, sizeof(int64_t) * (size_t)like->ndim) != 0)
        return et_error(ET_ERR_VALUE, "%s: x_q %s must have the input's shape %s", op, s1, s2);
    if (q8 && (!isfinite(scale) || scale < FLT_MIN))
        return et_error(ET_ERR_VALUE, "%s: x_scale must be finite and >= %g, got %g", op,
                        (double)FLT_MIN, (double)scale);
    return ET_OK;
}

et_status et_lowp_saved_out(const char *op, const et_tensor *xq_out, et_dtype dt, const et_tensor *x,
                            void **buf)
{
    *buf = NULL;
    if (!xq_out || !xq_out->data) return ET_OK;
    if (xq_out->dtype != dt || xq_out->ndim != x->ndim ||
        memcmp(xq_out->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) != 0)
        return et_error(ET_ERR_VALUE, "%s: the saved-input buffer must be %s of the input's shape",
                        op, et_dtype_name(dt));
    *buf = xq_out->data;
    return ET_OK;
}

et_status et_lowp_saved_x(const char *op, const float *x, const et_tensor *xq, float x_scale,
                          int x_nonneg, int64_t n, et_prec pr, et_lowp_bufs *bufs,
                          const void **out, et_dtype *dt, float *sx)
{
    *sx = 1.0f;
    /* already in the pass's form: an int8 forward's x_q for an int8 pass, a
     * bf16/f16 forward's bits for a pass of that precision (bit-identical to
     * converting x again: rounding is idempotent) */
    if (xq && (pr == ET_PREC_INT8 ? (xq->dtype == ET_U8 || xq->dtype == ET_S8)
                                   : xq->dtype == et_prec_dtype(pr))) {
        *out = xq->data;
        *dt = xq->dtype;
        *sx = x_scale;
        return ET_OK;
    }
    const float *xf = x;
    if (!xf) {   /* only the saved x_q: back to f32 first (operand preparation) */
        float *b = et_lowp_alloc(bufs, (size_t)n * sizeof(float));
        if (!b)
            return et_error(ET_ERR_NOMEM, "%s: cannot allocate the widened input (%lld bytes)", op,
                            (long long)(n * 4));
        const int64_t t0 = et_prof_begin();
        switch (xq->dtype) {
        case ET_U8: ET_TRY(et_dequantize_u8(xq->data, 1, n, &x_scale, 0, b)); break;
        case ET_S8: ET_TRY(et_dequantize_s8(xq->data, 1, n, &x_scale, 0, b)); break;
        case ET_BF16: ET_TRY(et_convert_bf16_to_f32(xq->data, b, n)); break;
        default: ET_TRY(et_convert_f16_to_f32(xq->data, b, n)); break;
        }
        et_prof_end(t0, xq->dtype == ET_BF16 || xq->dtype == ET_F16 ? "widen.input"
                                                                      : "dequantize.input",
                    xq->dtype == ET_BF16 ? "bf16" : xq->dtype == ET_F16 ? "fp16" : "int8",
                    n * (xq->dtype == ET_BF16 || xq->dtype == ET_F16 ? 6 : 5));
        xf = b;
    }
    if (pr == ET_PREC_FP32) {
        *out = xf;
        *dt = ET_F32;
        return ET_OK;
    }
    const int q8 = pr == ET_PREC_INT8;
    void *b = et_lowp_alloc(bufs, (size_t)n * (q8 ? 1 : 2));
    if (!b)
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the %s input (%lld bytes)", op,
                        q8 ? "quantized" : "converted", (long long)(n * (q8 ? 1 : 2)));
    const int64_t t0 = et_prof_begin();
    if (q8) ET_TRY(et_lowp_quantize_x(xf, n, x_nonneg, b, sx));
    else ET_TRY(et_lowp_convert(xf, n, pr, b));
    et_prof_end(t0, q8 ? "quantize.input" : "convert.input", et_prec_name(pr), n * (q8 ? 5 : 6));
    *out = b;
    *dt = q8 ? (x_nonneg ? ET_U8 : ET_S8) : et_prec_dtype(pr);
    return ET_OK;
}

et_status et_lowp_quantize_x(const float *x, int64_t n, int nonneg, void *q, float *scale)
{
    /* 7-bit by default (quantize.h: reduce range) */
    return nonneg ? et_quantize_per_tensor_u8_qmax(x, n, et_quant_act_qmax(1), q, scale)
                  : et_quantize_per_tensor_s8_qmax(x, n, et_quant_act_qmax(0), q, scale);
}

#define LP_ALLOC(ptr, bytes, what)                                                        \
    do {                                                                                  \
        (ptr) = et_lowp_alloc(&bufs, (size_t)(bytes));                                    \
        if (!(ptr)) {                                                                     \
            st = et_error(ET_ERR_NOMEM, "%s: cannot allocate %s (%lld bytes)", op, what,  \
                          (long long)(bytes));                                            \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)
#define LP_TRY(expr) do { st = (expr); if (st != ET_OK) goto done; } while (0)
/* LP_TRY timed as a profiler CPU range (core/profile.h; off: one atomic load):
 * label e.g. "quantize.input", prec its precision name, bytes read + written */
#define LP_PROF(label, prec, bytes, expr)                                        \
    do {                                                                          \
        const int64_t lp_t0_ = et_prof_begin();                                   \
        LP_TRY(expr);                                                             \
        et_prof_end(lp_t0_, (label), (prec), (int64_t)(bytes));                   \
    } while (0)

static et_status check_out(const char *op, const char *what, const et_tensor *t, const int64_t *shape,
                           int ndim)
{
    char s1[96];
    int ok = t->dtype == ET_F32 && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char s2[96] = "(";
        size_t k = 1;
        for (int i = 0; i < ndim; i++)
            k += (size_t)snprintf(s2 + k, sizeof s2 - k, i ? ", %lld" : "%lld", (long long)shape[i]);
        snprintf(s2 + k, sizeof s2 - k, ")");
        return et_error(ET_ERR_VALUE, "%s: %s %s (%s) must be float32 of shape %s", op, what,
                        et_shape_str(t, s1, sizeof s1), et_dtype_name(t->dtype), s2);
    }
    return ET_OK;
}

static void conv_args_init(et_conv2d_args *a, const et_backend *be, int64_t groups)
{
    memset(a, 0, sizeof *a);
    a->backend = be;
    a->groups = groups;
}

/* ---- prepacked weights ------------------------------------------------------------ */

et_status et_lowp_weight_s8(const float *w, int64_t oc, int64_t k, int cache, et_lowp_bufs *bufs,
                            et_wcache_ref *ref, const int8_t **wq, const float **sw)
{
    const char *op = "quantize_per_channel";
    const int64_t t0 = et_prof_begin();
    if (cache) ET_TRY(et_wcache_quantize_s8(w, oc, k, ref));
    if (ref->entry) {
        /* hit: one memcmp of w against the stored copy (2 x 4 bytes per
         * weight); miss: the quantizer's pass too, into the cache */
        et_prof_end(t0, ref->hit ? "prepack.check" : "quantize.weight", "int8",
                    oc * k * (ref->hit ? 8 : 13));
        *wq = ref->wq;
        *sw = ref->sw;
        return ET_OK;
    }
    /* not cached (a trained weight, disabled, or over the capacity): quantize
     * into call buffers */
    int8_t *q = et_lowp_alloc(bufs, (size_t)(oc * k));
    float *s = et_lowp_alloc(bufs, (size_t)oc * sizeof(float));
    if (!q || !s)
        return et_error(ET_ERR_NOMEM, "%s: cannot allocate the quantized weight (%lld bytes)", op,
                        (long long)(oc * k));
    ET_TRY(et_quantize_per_channel_s8(w, oc, k, q, s));
    et_prof_end(t0, "quantize.weight", "int8", oc * k * 5);
    *wq = q;
    *sw = s;
    return ET_OK;
}

/* ---- forward ------------------------------------------------------------------ */

et_status et_conv2d_forward_lowp(const et_backend *be, const et_tensor *x, const et_tensor *w,
                                 const et_tensor *bias, const et_conv2d_params *p, et_prec prec,
                                 int x_nonneg, int cache_w, et_tensor *y, et_tensor *xq_out,
                                 float *xscale_out)
{
    const char *op = "conv2d_forward_lowp";
    int64_t ys[4];
    ET_TRY(et_conv2d_shape(op, x, w, bias, p, ys));
    ET_TRY(check_out(op, "output", y, ys, 4));
    const int64_t N = ys[0], OC = ys[1], OHW = ys[2] * ys[3];
    const int64_t nx = et_tensor_numel(x), nw = et_tensor_numel(w);
    const int has_bias = bias && bias->data;
    et_lowp_bufs bufs = {.n = 0};
    et_status st = ET_OK;
    et_conv2d_args a;
    conv_args_init(&a, be, p->groups);
    for (int i = 0; i < 2; i++) {
        a.stride[i] = p->stride[i];
        a.dilation[i] = p->dilation[i];
        a.pad_lo[i] = a.pad_hi[i] = p->padding[i];
    }
    int32_t *acc = NULL;   // (N, OC, OH, OW) int8 accumulator
    float sx = 1.0f;
    const float *sw = NULL;   // (OC,)
    et_wcache_ref wref_local, *wref = &wref_local;   // the prepacked weight, pinned until done
    memset(wref, 0, sizeof *wref);
    if (prec == ET_PREC_FP32) {
        a.x = *x;
        a.w = *w;
        if (has_bias) a.bias = *bias;
        a.y = *y;
    } else if (prec == ET_PREC_BF16 || prec == ET_PREC_FP16) {
        const et_dtype dt = et_prec_dtype(prec);
        void *xb, *wb;   // x (N, C, H, W), w (OC, C/G, KH, KW) as 16-bit bits
        /* x converted into the caller's buffer when it keeps it for backward */
        LP_TRY(et_lowp_saved_out(op, xq_out, dt, x, &xb));
        if (!xb) LP_ALLOC(xb, nx * 2, "the converted input");
        LP_ALLOC(wb, nw * 2, "the converted weight");
        LP_PROF("convert.input", et_prec_name(prec), nx * 6,
                et_lowp_convert(x->data, nx, prec, xb));
        LP_PROF("convert.weight", et_prec_name(prec), nw * 6,
                et_lowp_convert(w->data, nw, prec, wb));
        LP_TRY(et_tensor_view(&a.x, xb, dt, 4, x->shape));
        LP_TRY(et_tensor_view(&a.w, wb, dt, 4, w->shape));
        if (has_bias) a.bias = *bias;
        a.y = *y;
    } else {
        const et_dtype xdt = x_nonneg ? ET_U8 : ET_S8;
        void *xq;
        LP_TRY(et_lowp_saved_out(op, xq_out, xdt, x, &xq));
        if (!xq) LP_ALLOC(xq, nx, "the quantized input");
        const int8_t *wq;   // (OC, C/G*KH*KW)
        LP_ALLOC(acc, N * OC * OHW * sizeof(int32_t), "the int32 accumulator");
        LP_PROF("quantize.input", "int8", nx * 5,
                et_lowp_quantize_x(x->data, nx, x_nonneg, xq, &sx));
        LP_TRY(et_lowp_weight_s8(w->data, OC, nw / OC, cache_w, &bufs, wref, &wq, &sw));
        if (xscale_out) *xscale_out = sx;
        LP_TRY(et_tensor_view(&a.x, xq, xdt, 4, x->shape));
        LP_TRY(et_tensor_view(&a.w, (void *)wq, ET_S8, 4, w->shape));
        LP_TRY(et_tensor_view(&a.y, acc, ET_S32, 4, ys));
    }
    LP_TRY(et_conv2d_check(op, &a));
    LP_TRY(et_offload_conv2d("conv2d.fwd", -1, &a));
    if (prec == ET_PREC_INT8)   /* y = acc * (sx * sw[oc]) + b[oc] */
        LP_PROF("dequantize.output", "int8", N * OC * OHW * 8,
                et_dequantize_acc_nchw(acc, N, OC, OHW, sx, sw, has_bias ? bias->data : NULL,
                                       y->data));
done:
    et_wcache_release(wref);   /* after the job: it read wref->wq (and its blocked layout) */
    et_lowp_free(&bufs);
    return st;
}

/* ---- backward ------------------------------------------------------------------ */

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

static size_t esz_of(et_dtype dt) { return et_dtype_size(dt); }

et_status et_conv2d_backward_lowp(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                  const et_tensor *w, const et_conv2d_params *p,
                                  const et_lowp_bwd_opts *o, et_tensor *dx, et_tensor *dw,
                                  et_tensor *db)
{
    const char *op = "conv2d_backward_lowp";
    int64_t ys[4];
    char sd[96], sx_[96], sw_[96];
    ET_TRY(et_conv2d_shape(op, x, w, NULL, p, ys));
    if (dy->dtype != ET_F32)
        return et_error(ET_ERR_TYPE, "%s: grad_output %s must be float32, got %s", op,
                        et_shape_str(dy, sd, sizeof sd), et_dtype_name(dy->dtype));
    if (dy->ndim != 4 || dy->shape[0] != ys[0] || dy->shape[1] != ys[1] ||
        dy->shape[2] != ys[2] || dy->shape[3] != ys[3])
        return et_error(ET_ERR_VALUE, "%s: grad_output %s must have the output shape "
                        "(%lld, %lld, %lld, %lld) (input %s, weight %s)", op,
                        et_shape_str(dy, sd, sizeof sd), (long long)ys[0], (long long)ys[1],
                        (long long)ys[2], (long long)ys[3], et_shape_str(x, sx_, sizeof sx_),
                        et_shape_str(w, sw_, sizeof sw_));
    if (dx) ET_TRY(check_out(op, "grad_input", dx, x->shape, 4));
    if (dw) ET_TRY(check_out(op, "grad_weight", dw, w->shape, 4));
    if (db) ET_TRY(check_out(op, "grad_bias", db, w->shape, 1));
    const et_tensor *xq = o->x_q && o->x_q->data ? o->x_q : NULL;
    if (xq) ET_TRY(et_lowp_check_xq(op, xq, o->x_scale, x));
    if (dw && !x->data && !xq)
        return et_error(ET_ERR_VALUE, "%s: grad_weight needs the input x or its quantized x_q", op);

    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t OC = w->shape[0], Cg = w->shape[1], KH = w->shape[2], KW = w->shape[3];
    const int64_t OH = ys[2], OW = ys[3], G = p->groups;
    const int64_t in[2] = {H, W}, K[2] = {KH, KW}, O[2] = {OH, OW};
    const int64_t ndy = N * OC * OH * OW, nx = N * C * H * W, nw = OC * Cg * KH * KW;
    et_lowp_bufs bufs = {.n = 0};
    et_status st = ET_OK;
    et_queue *q = NULL;
    et_conv2d_args ax, aw;
    conv_args_init(&ax, be, G);
    conv_args_init(&aw, be, G);
    int8_t *dyq = NULL;   // (N, OC, OH, OW) stochastic s8, shared by both int8 passes
    float sdy = 1.0f;
    int32_t *accx = NULL;            // (N, C, H, W) int8 dx accumulator
    float *swt = NULL;               // (C,) scales of the flipped/transposed weight
    void *dwout = NULL;              // (nch, C/G, OC, KHo, KWo) s32, one per batch chunk
    et_conv2d_args *aws = NULL;      // (nch,) weight-gradient jobs
    uint64_t *tws = NULL;            // (nch,) their tickets
    int64_t nb = N, nch = 0, nout = 0;
    float *dwf = NULL;               // (C/G, OC, KHo, KWo) f32 (int8: dequantized)
    float dw_scale = 1.0f;
    int gemm = 0;                    // dw as im2col + matmul chunks (conv2d_dw.h), not int8
    et_dw_gemm pg;                   // its chunk buffers
    memset(&pg, 0, sizeof pg);
    et_prep_dw_geom gw;

    if (dx) {
        /* no dy element reaches x (padding beyond the kernel's reach with a
         * stride skipping x): dx is exactly zero, no product to run */
        et_prep_dx_geom g0;
        et_prep_dx_geometry(p, in, K, O, &g0);
        if (et_prep_dx_unreached(&g0)) {
            memset(dx->data, 0, (size_t)nx * sizeof(float));
            dx = NULL;
        }
    }
    if ((dx && o->prec_dx == ET_PREC_INT8) || (dw && o->prec_dw == ET_PREC_INT8)) {
        LP_ALLOC(dyq, ndy, "the quantized grad_output");
        LP_PROF("quantize.grad_output", "int8", ndy * 5,
                et_quantize_stochastic_s8_qmax(dy->data, ndy, et_quant_act_qmax(0), o->seed,
                                               o->offset, dyq, &sdy));
    }

    /* dx = conv(dilate_s(dy) padded, flip(w) transposed), stride 1, dilation d */
    if (dx) {
        const et_prec pr = o->prec_dx;
        const et_dtype dt = et_prec_dtype(pr);
        const size_t es = esz_of(dt);
        et_prep_dx_geom g;
        et_prep_dx_geometry(p, in, K, O, &g);
        for (int i = 0; i < 2; i++) {
            ax.stride[i] = 1;
            ax.dilation[i] = p->dilation[i];
            ax.pad_lo[i] = g.pad_lo[i];
            ax.pad_hi[i] = g.pad_hi[i];
        }
        const void *dyo;   // dy (N, OC, OH, OW) in the pass's dtype
        if (pr == ET_PREC_FP32) dyo = dy->data;
        else if (pr == ET_PREC_INT8) dyo = dyq;
        else {
            void *b;
            LP_ALLOC(b, ndy * 2, "the converted grad_output");
            LP_PROF("convert.grad_output", et_prec_name(pr), ndy * 6,
                    et_lowp_convert(dy->data, ndy, pr, b));
            dyo = b;
        }
        int64_t dshape[4] = {N, OC, OH, OW};
        if (g.copy) {
            void *b;   // (N, OC, dd0, dd1)
            LP_ALLOC(b, (size_t)(N * OC * g.dd[0] * g.dd[1]) * es, "the dilated grad_output");
            et_prep_dilate(dyo, b, es, N * OC, OH, OW, p->stride, g.crop_lo, g.dd);
            dyo = b;
            dshape[2] = g.dd[0];
            dshape[3] = g.dd[1];
        }
        LP_TRY(et_tensor_view(&ax.x, (void *)dyo, dt, 4, dshape));
        /* w flipped and transposed in f32, then made the pass's dtype: its
         * output channels are x's input channels, so int8 scales are per c */
        float *wt;   // (C, OC/G, KH, KW)
        LP_ALLOC(wt, nw * sizeof(float), "the transposed weight");
        et_prep_flip_transpose(w->data, wt, sizeof(float), OC, Cg, KH, KW, G);
        void *wo = wt;
        if (pr == ET_PREC_INT8) {
            LP_ALLOC(wo, nw, "the quantized transposed weight");
            LP_ALLOC(swt, C * sizeof(float), "the transposed-weight scales");
            LP_PROF("quantize.weight", "int8", nw * 5,
                    et_quantize_per_channel_s8(wt, C, nw / C, wo, swt));
        } else if (pr != ET_PREC_FP32) {
            LP_ALLOC(wo, nw * 2, "the converted transposed weight");
            LP_PROF("convert.weight", et_prec_name(pr), nw * 6, et_lowp_convert(wt, nw, pr, wo));
        }
        const int64_t wshape[4] = {C, OC / G, KH, KW};
        LP_TRY(et_tensor_view(&ax.w, wo, dt, 4, wshape));
        if (pr == ET_PREC_INT8) {
            LP_ALLOC(accx, nx * sizeof(int32_t), "the int32 grad_input accumulator");
            LP_TRY(et_tensor_view(&ax.y, accx, ET_S32, 4, x->shape));
        } else {
            ax.y = *dx;
        }
        LP_TRY(et_conv2d_check(op, &ax));
    }

    /* dw = conv(x as (C/G, G*N, H, W), dy as (OC, N, OH, OW)), stride d, dilation s */
    if (dw) {
        const et_prec pr = o->prec_dw;
        et_prep_dw_geometry(p, in, K, O, &gw);
        for (int i = 0; i < 2; i++) {
            aw.stride[i] = p->dilation[i];
            aw.dilation[i] = p->stride[i];
            aw.pad_lo[i] = gw.pad_lo[i];
            aw.pad_hi[i] = gw.pad_hi[i];
        }
        const void *xo;   // x (N, C, H, W) in the pass's dtype xdt (int8: scale sx)
        et_dtype xdt;
        float sx;
        LP_TRY(et_lowp_saved_x(op, x->data, xq, o->x_scale, o->x_nonneg, nx, pr, &bufs, &xo,
                               &xdt, &sx));
        const void *dyo;
        const et_dtype ddt = et_prec_dtype(pr);
        if (pr == ET_PREC_FP32) dyo = dy->data;
        else if (pr == ET_PREC_INT8) dyo = dyq;
        else {
            void *b;
            LP_ALLOC(b, ndy * 2, "the converted grad_output");
            LP_PROF("convert.grad_output", et_prec_name(pr), ndy * 6,
                    et_lowp_convert(dy->data, ndy, pr, b));
            dyo = b;
        }
        /* bf16 / fp16 / fp32: im2col + matmul chunks of the converted operands
         * when ET_CONV_DW (and its auto rule) says so, as the fp32 op does
         * (conv2d_dw.h): dw (OC, Cg, KH, KW) f32 written in place, chunks
         * summed in f32. int8 keeps the conv formulation below (its int8 conv
         * already runs at the forward conv's rate) and ignores ET_CONV_DW. */
        if (pr != ET_PREC_INT8) {
            int64_t budget;
            LP_TRY(et_dw_budget(op, &budget));
            LP_TRY(et_dw_pick(op, be, x, dw, dy, esz_of(ddt), budget, &gemm));
            if (gemm) {
                et_tensor xv, dv;   // x (N, C, H, W), dy (N, OC, OH, OW) in the pass's dtype
                LP_TRY(et_tensor_view(&xv, (void *)xo, xdt, 4, x->shape));
                LP_TRY(et_tensor_view(&dv, (void *)dyo, ddt, 4, dy->shape));
                LP_TRY(et_dw_gemm_make(op, be, &dv, &xv, p, dw, budget, &pg));   /* chunk 0 ready */
            }
        }
        if (!gemm) {   /* conv formulation: x', dy' group-swapped, one job per batch chunk */
            const size_t xes = esz_of(xdt), des = esz_of(ddt);
            /* int8: the s32 sum over N*OH*OW products of |x_q * dy_q| <= qmax*127
             * must stay below 2^31, so the batch is split in chunks whose s32
             * results are added in int64 on the CPU (one job per chunk). */
            nb = N;
            if (pr == ET_PREC_INT8) {
                const int64_t qx = xdt == ET_U8 ? 255 : 127;
                const int64_t lim = (int64_t)2147483647 / (qx * 127);
                nb = lim / (OH * OW);
                if (nb < 1) nb = 1;   /* a single image above the limit: not split further */
                if (nb > N) nb = N;
            }
            nch = (N + nb - 1) / nb;
            void *xb, *db_;   // x' chunks (Cg, G*nb_k, H, W), dy' chunks (OC, nb_k, OH, OW),
                              // back to back
            LP_ALLOC(xb, nx * xes, "the transposed input");
            LP_ALLOC(db_, ndy * des, "the transposed grad_output");
            LP_ALLOC(aws, nch * sizeof(et_conv2d_args), "the weight-gradient jobs");
            LP_ALLOC(tws, nch * sizeof(uint64_t), "the weight-gradient tickets");
            nout = Cg * OC * gw.ko[0] * gw.ko[1];
            const int64_t os[4] = {Cg, OC, gw.ko[0], gw.ko[1]};
            LP_ALLOC(dwf, nout * sizeof(float), "the weight-gradient buffer");
            if (pr == ET_PREC_INT8) {
                LP_ALLOC(dwout, nch * nout * sizeof(int32_t),
                         "the int32 weight-gradient accumulators");
                dw_scale = sx * sdy;   /* rounded to float32 once, as the epilogue */
            }
            for (int64_t k = 0; k < nch; k++) {
                const int64_t n0 = k * nb, nk = (n0 + nb <= N ? nb : N - n0);
                char *xk = (char *)xb + (size_t)(n0 * C * H * W) * xes;
                char *dk = (char *)db_ + (size_t)(n0 * OC * OH * OW) * des;
                et_prep_group_swap((const char *)xo + (size_t)(n0 * C * H * W) * xes, xk, xes,
                                   nk, C, H * W, G);
                et_prep_group_swap((const char *)dyo + (size_t)(n0 * OC * OH * OW) * des, dk,
                                   des, nk, OC, OH * OW, 1);
                et_conv2d_args *a = &aws[k];
                *a = aw;
                const int64_t xs[4] = {Cg, G * nk, H, W};   // x' (C/G, G*nk, H, W)
                const int64_t ds[4] = {OC, nk, OH, OW};     // dy' (OC, nk, OH, OW)
                LP_TRY(et_tensor_view(&a->x, xk, xdt, 4, xs));
                LP_TRY(et_tensor_view(&a->w, dk, ddt, 4, ds));
                if (pr == ET_PREC_INT8)
                    LP_TRY(et_tensor_view(&a->y, (int32_t *)dwout + k * nout, ET_S32, 4, os));
                else
                    LP_TRY(et_tensor_view(&a->y, dwf, ET_F32, 4, os));
                LP_TRY(et_conv2d_check(op, a));
            }
        }
    }

    if (dx || dw) {
        q = et_queue_default();
        if (!q) { st = ET_ERR_BACKEND; goto done; }
    }
    {
        uint64_t tx = 0;
        et_status s1 = ET_OK, s2 = ET_OK;
        int64_t nsub = 0;   /* dw jobs submitted */
        /* FLOPs: each pass does the forward's useful count; a dw chunk of nk
         * images (its dy' is (OC, nk, OH, OW)) its share */
        if (dx)
            s1 = et_submit_conv2d(q, "conv2d.bwd_data",
                                  et_conv2d_pass_flops(N, OC, OH, OW, Cg, KH, KW), &ax, &tx);
        if (dw)
            for (; nsub < nch && s2 == ET_OK; nsub++) {
                s2 = et_submit_conv2d(q, "conv2d.bwd_weight",
                                      et_conv2d_pass_flops(aws[nsub].w.shape[1], OC, OH, OW, Cg,
                                                           KH, KW),
                                      &aws[nsub], &tws[nsub]);
                if (s2 != ET_OK) break;
            }
        if (dw && gemm) s2 = et_dw_gemm_start(op, &pg, q);   /* chunk 0's G matmuls */
        if (db) bias_grad(dy, db);   /* on the CPU while the jobs run */
        /* wait for every submitted ticket before freeing the buffers they read */
        char msg[ET_ERRMSG_MAX] = "";
        if (dx) {
            if (s1 == ET_OK) s1 = et_queue_wait(q, tx);
            if (s1 != ET_OK) { st = s1; snprintf(msg, sizeof msg, "%s", et_error_message()); }
        }
        if (dw && gemm) {   /* the later chunks, one after the other */
            s2 = et_dw_gemm_finish(op, &pg, q, s2);   /* waits chunk 0 even when it failed */
            if (s2 != ET_OK && st == ET_OK) { st = s2; snprintf(msg, sizeof msg, "%s", et_error_message()); }
        } else if (dw) {
            if (s2 != ET_OK && st == ET_OK) { st = s2; snprintf(msg, sizeof msg, "%s", et_error_message()); }
            for (int64_t k = 0; k < nsub; k++) {
                et_status sk = et_queue_wait(q, tws[k]);
                if (sk != ET_OK && st == ET_OK) { st = sk; snprintf(msg, sizeof msg, "%s", et_error_message()); }
            }
        }
        if (st != ET_OK) { et_error_set_message(msg); goto done; }
    }
    if (dx && o->prec_dx == ET_PREC_INT8)   /* dx = acc * (sdy * swt[c]) */
        LP_PROF("dequantize.grad_input", "int8", nx * 8,
                et_dequantize_acc_nchw(accx, N, C, H * W, sdy, swt, NULL, dx->data));
    if (dw && !gemm) {   /* gemm wrote dw in place */
        if (o->prec_dw == ET_PREC_INT8 && nch == 1)   /* dw' = acc * (sx * sdy) */
            LP_PROF("dequantize.grad_weight", "int8", nout * 8,
                    et_dequantize_s32(dwout, 1, nout, &dw_scale, 0, dwf));
        else if (o->prec_dw == ET_PREC_INT8) {        /* chunks: exact int64 sum first */
            const int32_t *acc = dwout;
            for (int64_t i = 0; i < nout; i++) {
                int64_t t = 0;
                for (int64_t k = 0; k < nch; k++) t += acc[k * nout + i];
                dwf[i] = (float)t * dw_scale;
            }
        }
        et_prep_crop_transpose(dwf, dw->data, sizeof(float), OC, Cg, KH, KW, gw.ko[0], gw.ko[1]);
    }
done:
    et_dw_gemm_free(&pg);
    et_lowp_free(&bufs);
    return st;
}
