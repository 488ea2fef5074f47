/* linear_lowp.c - see linear_lowp.h. */
#include "linear_lowp.h"

#include <stdio.h>
#include <string.h>

#include "../queue/queue.h"
#include "../quant/quantize.h"
#include "offload.h"
#include "prep.h"

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

static et_matmul_args mm(const et_backend *be, int ta, int tb)
{
    et_matmul_args m;
    memset(&m, 0, sizeof m);
    m.backend = be;
    m.trans_a = ta;
    m.trans_b = tb;
    return m;
}

static et_status check_out2(const char *op, const char *what, const et_tensor *t, int ndim,
                            int64_t d0, int64_t d1)
{
    char s[96];
    if (t->dtype != ET_F32 || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        if (ndim == 2)
            return et_error(ET_ERR_VALUE, "%s: %s %s must be float32 of shape (%lld, %lld)", op,
                            what, et_shape_str(t, s, sizeof s), (long long)d0, (long long)d1);
        return et_error(ET_ERR_VALUE, "%s: %s %s must be float32 (%lld,)", op, what,
                        et_shape_str(t, s, sizeof s), (long long)d0);
    }
    return ET_OK;
}

/* an f32 operand (n values) in precision pr (fp32: as is; bf16/f16 converted) */
#define LP_OPERAND(dst, src, n, pr, what, label)                          \
    do {                                                                  \
        if ((pr) == ET_PREC_FP32) (dst) = (void *)(src);                  \
        else {                                                            \
            void *b_;                                                     \
            LP_ALLOC(b_, (n) * 2, what);                                  \
            LP_PROF((label), et_prec_name(pr), (n) * 6,                    \
                    et_lowp_convert((src), (n), (pr), b_));               \
            (dst) = b_;                                                   \
        }                                                                 \
    } while (0)

et_status et_linear_forward_lowp(const et_backend *be, const et_tensor *x, const et_tensor *w,
                                 const et_tensor *bias, et_prec prec, int x_nonneg, int cache_w,
                                 et_tensor *y, et_tensor *xq_out, float *xscale_out)
{
    const char *op = "linear_forward_lowp";
    int64_t ys[2];
    ET_TRY(et_linear_shape(op, x, w, bias, ys));
    ET_TRY(check_out2(op, "output", y, 2, ys[0], ys[1]));
    const int64_t M = ys[0], N = ys[1], K = x->shape[1];
    const int has_bias = bias && bias->data;
    et_lowp_bufs bufs = {.n = 0};
    et_status st = ET_OK;
    et_matmul_args m = mm(be, 0, 1);   // (M, K) . (N, K)^T
    int32_t *acc = NULL;               // (M, N)
    float sx = 1.0f;
    const float *sw = NULL;            // (N,)
    et_wcache_ref wref;                // the prepacked weight (conv2d_lowp.h), pinned until done
    memset(&wref, 0, sizeof wref);
    if (prec != ET_PREC_INT8) {
        const et_dtype dt = et_prec_dtype(prec);
        void *xo, *wo;
        /* x converted into the caller's buffer when it keeps it for backward */
        LP_TRY(et_lowp_saved_out(op, xq_out, dt, x, &xo));
        if (xo)
            LP_PROF("convert.input", et_prec_name(prec), M * K * 6,
                    et_lowp_convert(x->data, M * K, prec, xo));
        else
            LP_OPERAND(xo, x->data, M * K, prec, "the converted input", "convert.input");
        LP_OPERAND(wo, w->data, N * K, prec, "the converted weight", "convert.weight");
        LP_TRY(et_tensor_view(&m.a, xo, dt, 2, x->shape));
        LP_TRY(et_tensor_view(&m.b, wo, dt, 2, w->shape));
        if (has_bias) m.bias = *bias;
        m.y = *y;
    } else {
        const et_dtype xdt = x_nonneg ? ET_U8 : ET_S8;
        void *xq;
        LP_TRY(et_lowp_saved_out(op, xq_out, xdt, x, &xq));
        if (!xq) LP_ALLOC(xq, M * K, "the quantized input");
        const int8_t *wq;   // (N, K)
        LP_ALLOC(acc, M * N * sizeof(int32_t), "the int32 accumulator");
        LP_PROF("quantize.input", "int8", M * K * 5,
                et_lowp_quantize_x(x->data, M * K, x_nonneg, xq, &sx));
        LP_TRY(et_lowp_weight_s8(w->data, N, K, cache_w, &bufs, &wref, &wq, &sw));
        if (xscale_out) *xscale_out = sx;
        LP_TRY(et_tensor_view(&m.a, xq, xdt, 2, x->shape));
        LP_TRY(et_tensor_view(&m.b, (void *)wq, ET_S8, 2, w->shape));
        LP_TRY(et_tensor_view(&m.y, acc, ET_S32, 2, ys));
    }
    LP_TRY(et_matmul_check(op, &m));
    LP_TRY(et_offload_matmul("linear.fwd", -1, &m));
    if (prec == ET_PREC_INT8)
        LP_PROF("dequantize.output", "int8", M * N * 8,
                et_dequantize_acc_mn(acc, M, N, sx, sw, has_bias ? bias->data : NULL, y->data));
done:
    et_wcache_release(&wref);   /* after the job, which read wref.wq */
    et_lowp_free(&bufs);
    return st;
}

et_status et_linear_backward_lowp(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                                  const et_tensor *w, const et_lowp_bwd_opts *o, et_tensor *dx,
                                  et_tensor *dw, et_tensor *db)
{
    const char *op = "linear_backward_lowp";
    int64_t ys[2];
    ET_TRY(et_linear_shape(op, x, w, NULL, ys));
    char sd[96], sx_[96], sw_[96];
    if (dy->dtype != ET_F32 || dy->ndim != 2 || dy->shape[0] != ys[0] || dy->shape[1] != ys[1])
        return et_error(dy->dtype != ET_F32 ? ET_ERR_TYPE : ET_ERR_VALUE,
                        "%s: grad_output %s (%s) must be float32 of shape (%lld, %lld) "
                        "(input %s, weight %s)", op, et_shape_str(dy, sd, sizeof sd),
                        et_dtype_name(dy->dtype), (long long)ys[0], (long long)ys[1],
                        et_shape_str(x, sx_, sizeof sx_), et_shape_str(w, sw_, sizeof sw_));
    const int64_t M = ys[0], N = ys[1], K = x->shape[1];
    if (dx) ET_TRY(check_out2(op, "grad_input", dx, 2, M, K));
    if (dw) ET_TRY(check_out2(op, "grad_weight", dw, 2, N, K));
    if (db) ET_TRY(check_out2(op, "grad_bias", db, 1, N, 0));
    const et_tensor *xq = o->x_q && o->x_q->data ? o->x_q : NULL;
    if (xq) ET_TRY(et_lowp_check_xq(op, xq, o->x_scale, x));
    if (dw && !x->data && !xq)
        return et_error(ET_ERR_VALUE, "%s: grad_weight needs the input x or its quantized x_q", op);
    et_lowp_bufs bufs = {.n = 0};
    et_status st = ET_OK;
    et_matmul_args mx = mm(be, 0, 0), mw = mm(be, 0, 0);
    int8_t *dyq = NULL;   // (M, N) stochastic s8
    float sdy = 1.0f, *swt = NULL, dw_scale = 1.0f;
    int32_t *accx = NULL, *accw = NULL;   // (M, K), (K, N)
    float *dwt = NULL;                    // (K, N) f32
    et_matmul_args *mws = NULL;           // (nch,) grad_weight jobs (int8: row chunks of M)
    uint64_t *tws = NULL, tw1 = 0;
    int64_t mb = M, nch = 0;
    if ((dx && o->prec_dx == ET_PREC_INT8) || (dw && o->prec_dw == ET_PREC_INT8)) {
        LP_ALLOC(dyq, M * N, "the quantized grad_output");
        LP_PROF("quantize.grad_output", "int8", M * N * 5,
                et_quantize_stochastic_s8_qmax(dy->data, M * N, et_quant_act_qmax(0), o->seed,
                                               o->offset, dyq, &sdy));
    }
    if (dx) {
        const et_prec pr = o->prec_dx;
        if (pr != ET_PREC_INT8) {   /* (M, N) . (N, K) */
            const et_dtype dt = et_prec_dtype(pr);
            void *dyo, *wo;
            LP_OPERAND(dyo, dy->data, M * N, pr, "the converted grad_output", "convert.grad_output");
            LP_OPERAND(wo, w->data, N * K, pr, "the converted weight", "convert.weight");
            LP_TRY(et_tensor_view(&mx.a, dyo, dt, 2, dy->shape));
            LP_TRY(et_tensor_view(&mx.b, wo, dt, 2, w->shape));
            mx.y = *dx;
        } else {                     /* (M, N) . (K, N)^T, w^T quantized per row k */
            float *wt;
            int8_t *wtq;
            LP_ALLOC(wt, N * K * sizeof(float), "the transposed weight");
            LP_ALLOC(wtq, N * K, "the quantized transposed weight");
            LP_ALLOC(swt, K * sizeof(float), "the transposed-weight scales");
            LP_ALLOC(accx, M * K * sizeof(int32_t), "the int32 grad_input accumulator");
            et_prep_transpose2d(w->data, wt, sizeof(float), N, K);
            LP_PROF("quantize.weight", "int8", N * K * 5,
                    et_quantize_per_channel_s8(wt, K, N, wtq, swt));
            const int64_t wts[2] = {K, N}, xs[2] = {M, K};
            LP_TRY(et_tensor_view(&mx.a, dyq, ET_S8, 2, dy->shape));
            LP_TRY(et_tensor_view(&mx.b, wtq, ET_S8, 2, wts));
            LP_TRY(et_tensor_view(&mx.y, accx, ET_S32, 2, xs));
            mx.trans_b = 1;
        }
        LP_TRY(et_matmul_check(op, &mx));
    }
    if (dw) {
        const et_prec pr = o->prec_dw;
        if (pr != ET_PREC_INT8) {   /* (M, N)^T . (M, K) -> (N, K) */
            const et_dtype dt = et_prec_dtype(pr);
            void *dyo;
            const void *xo;
            et_dtype xdt;
            float sx_unused;
            LP_OPERAND(dyo, dy->data, M * N, pr, "the converted grad_output", "convert.grad_output");
            LP_TRY(et_lowp_saved_x(op, x->data, xq, o->x_scale, o->x_nonneg, M * K, pr, &bufs, &xo,
                                   &xdt, &sx_unused));
            LP_TRY(et_tensor_view(&mw.a, dyo, dt, 2, dy->shape));
            LP_TRY(et_tensor_view(&mw.b, (void *)xo, xdt, 2, x->shape));
            mw.trans_a = 1;
            mw.y = *dw;
            LP_TRY(et_matmul_check(op, &mw));
            mws = &mw;
            nch = 1;
        } else {                     /* (M, K)^T . (M, N) -> (K, N): the u8 side first */
            const void *xo;
            et_dtype xdt;
            float sx;
            LP_TRY(et_lowp_saved_x(op, x->data, xq, o->x_scale, o->x_nonneg, M * K, pr, &bufs, &xo,
                                   &xdt, &sx));
            /* the s32 sum over M products |x_q * dy_q| <= qmax*127 must stay below
             * 2^31: rows are split in chunks added in int64 (one job per chunk) */
            const int64_t lim = (int64_t)2147483647 / ((xdt == ET_U8 ? 255 : 127) * 127);
            mb = M < lim ? M : lim;
            nch = (M + mb - 1) / mb;
            LP_ALLOC(accw, nch * K * N * sizeof(int32_t), "the int32 grad_weight accumulators");
            LP_ALLOC(dwt, K * N * sizeof(float), "the transposed grad_weight");
            LP_ALLOC(mws, nch * sizeof(et_matmul_args), "the grad_weight jobs");
            LP_ALLOC(tws, nch * sizeof(uint64_t), "the grad_weight tickets");
            const int64_t ks[2] = {K, N};
            for (int64_t k = 0; k < nch; k++) {
                const int64_t m0 = k * mb, mk = m0 + mb <= M ? mb : M - m0;
                const int64_t xs[2] = {mk, K}, ds[2] = {mk, N};
                et_matmul_args *a = &mws[k];
                *a = mm(be, 1, 0);
                LP_TRY(et_tensor_view(&a->a, (char *)xo + m0 * K, xdt, 2, xs));
                LP_TRY(et_tensor_view(&a->b, dyq + m0 * N, ET_S8, 2, ds));
                LP_TRY(et_tensor_view(&a->y, accw + k * K * N, ET_S32, 2, ks));
                LP_TRY(et_matmul_check(op, a));
            }
            dw_scale = sx * sdy;
        }
    }
    et_queue *q = NULL;
    if (dx || dw) {
        q = et_queue_default();
        if (!q) { st = ET_ERR_BACKEND; goto done; }
    }
    {
        uint64_t tx = 0;
        if (!tws) tws = &tw1;
        et_status s1 = ET_OK, s2 = ET_OK;
        int64_t nsub = 0;
        if (dx) s1 = et_submit_matmul(q, "linear.bwd_data", -1, &mx, &tx);
        if (dw)
            for (; nsub < nch; nsub++) {
                s2 = et_submit_matmul(q, "linear.bwd_weight", -1, &mws[nsub], &tws[nsub]);
                if (s2 != ET_OK) break;
            }
        if (db) {   /* f32 on the CPU while the jobs run */
            const float *g = dy->data;   // (M, N)
            float *b = db->data;         // (N)
            for (int64_t j = 0; j < N; j++) b[j] = 0.0f;
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++) b[j] += g[i * N + j];
        }
        char msg[ET_ERRMSG_MAX] = "";
        if (dx) {
            if (s1 == ET_OK) s1 = et_queue_wait(q, tx);
            if (s1 != ET_OK) { st = s1; snprintf(msg, sizeof msg, "%s", et_error_message()); }
        }
        if (dw) {
            if (s2 != ET_OK && st == ET_OK) { st = s2; snprintf(msg, sizeof msg, "%s", et_error_message()); }
            for (int64_t k = 0; k < nsub; k++) {
                et_status sk = et_queue_wait(q, tws[k]);
                if (sk != ET_OK && st == ET_OK) { st = sk; snprintf(msg, sizeof msg, "%s", et_error_message()); }
            }
        }
        if (st != ET_OK) { et_error_set_message(msg); goto done; }
    }
    if (dx && o->prec_dx == ET_PREC_INT8)
        LP_PROF("dequantize.grad_input", "int8", M * K * 8,
                et_dequantize_acc_mn(accx, M, K, sdy, swt, NULL, dx->data));
    if (dw && o->prec_dw == ET_PREC_INT8) {
        if (nch == 1)
            LP_PROF("dequantize.grad_weight", "int8", K * N * 8,
                    et_dequantize_s32(accw, 1, K * N, &dw_scale, 0, dwt));
        else   /* chunks: exact int64 sum first */
            for (int64_t i = 0; i < K * N; i++) {
                int64_t t = 0;
                for (int64_t k = 0; k < nch; k++) t += accw[k * K * N + i];
                dwt[i] = (float)t * dw_scale;
            }
        et_prep_transpose2d(dwt, dw->data, sizeof(float), K, N);   // (K, N) -> (N, K)
    }
done:
    et_lowp_free(&bufs);
    return st;
}
