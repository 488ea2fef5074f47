/* linear.c - see linear.h. */
#include "linear.h"

#include <stdio.h>
#include <string.h>

#include "../queue/queue.h"
#include "conv2d.h"
#include "offload.h"

et_status et_linear_shape(const char *op, const et_tensor *x, const et_tensor *w,
                          const et_tensor *bias, int64_t y[2])
{
    char sx[96], sw[96];
    et_shape_str(x, sx, sizeof sx);
    et_shape_str(w, sw, sizeof sw);
    if (x->ndim != 2 || w->ndim != 2)
        return et_error(ET_ERR_VALUE, "%s: input must be 2D (M, in_features) and weight 2D "
                        "(out_features, in_features), got input %s, weight %s", op, sx, sw);
    if (x->dtype != ET_F32 || w->dtype != ET_F32)
        return et_error(ET_ERR_TYPE, "%s: input %s and weight %s must be float32, got %s and %s",
                        op, sx, sw, et_dtype_name(x->dtype), et_dtype_name(w->dtype));
    if (x->shape[1] != w->shape[1])
        return et_error(ET_ERR_VALUE, "%s: in_features differ: input %s vs weight %s", op, sx, sw);
    if (x->shape[0] == 0 || x->shape[1] == 0 || w->shape[0] == 0)
        return et_error(ET_ERR_VALUE, "%s: empty dimension in input %s or weight %s", op, sx, sw);
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
    return ET_OK;
}

static et_matmul_args mm(const et_backend *be, const et_tensor *a, const et_tensor *b,
                         const et_tensor *bias, et_tensor *y, int ta, int tb)
{
    et_matmul_args m;
    memset(&m, 0, sizeof m);
    m.backend = be;
    m.a = *a;
    m.b = *b;
    if (bias && bias->data) m.bias = *bias;
    m.y = *y;
    m.trans_a = ta;
    m.trans_b = tb;
    return m;
}

et_status et_linear_forward(const et_backend *be, const et_tensor *x, const et_tensor *w,
                            const et_tensor *bias, et_tensor *y)
{
    int64_t ys[2];
    ET_TRY(et_linear_shape("linear_forward", x, w, bias, ys));
    et_matmul_args m = mm(be, x, w, bias, y, 0, 1);   // (M,K) . (N,K)^T
    ET_TRY(et_matmul_check("linear_forward", &m));
    return et_offload_matmul("linear.fwd", -1, &m);
}

et_status et_linear_backward(const et_backend *be, const et_tensor *dy, const et_tensor *x,
                             const et_tensor *w, et_tensor *dx, et_tensor *dw, et_tensor *db)
{
    const char *op = "linear_backward";
    int64_t ys[2];
    ET_TRY(et_linear_shape(op, x, w, NULL, ys));
    char sd[96], sx[96], sw[96];
    if (dy->dtype != ET_F32 || dy->ndim != 2 || dy->shape[0] != ys[0] || dy->shape[1] != ys[1])
        return et_error(dy->dtype != ET_F32 ? ET_ERR_TYPE : ET_ERR_VALUE,
                        "%s: grad_output %s (%s) must be float32 of shape (%lld, %lld) "
                        "(input %s, weight %s)", op, et_shape_str(dy, sd, sizeof sd),
                        et_dtype_name(dy->dtype), (long long)ys[0], (long long)ys[1],
                        et_shape_str(x, sx, sizeof sx), et_shape_str(w, sw, sizeof sw));
    et_matmul_args mx, mw;
    if (dx) {
        mx = mm(be, dy, w, NULL, dx, 0, 0);   // (M,N) . (N,K) -> (M,K)
        ET_TRY(et_matmul_check(op, &mx));
    }
    if (dw) {
        mw = mm(be, dy, x, NULL, dw, 1, 0);   // (M,N)^T . (M,K) -> (N,K)
        ET_TRY(et_matmul_check(op, &mw));
    }
    if (db && (db->dtype != ET_F32 || db->ndim != 1 || db->shape[0] != ys[1]))
        return et_error(ET_ERR_VALUE, "%s: grad_bias must be float32 (%lld,)", op, (long long)ys[1]);
    et_queue *q = NULL;
    if (dx || dw) {
        q = et_queue_default();
        if (!q) return ET_ERR_BACKEND;
    }
    uint64_t tx = 0, tw = 0;
    et_status sx_ = ET_OK, sw_ = ET_OK;
    if (dx) sx_ = et_submit_matmul(q, "linear.bwd_data", -1, &mx, &tx);
    if (dw) sw_ = et_submit_matmul(q, "linear.bwd_weight", -1, &mw, &tw);
    if (db) {
        const int64_t M = ys[0], N = ys[1];
        const float *g = dy->data;   // (M, N)
        float *b = db->data;         // (N)
        for (int64_t j = 0; j < N; j++) b[j] = 0.0f;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) b[j] += g[i * N + j];
    }
    char msg[ET_ERRMSG_MAX] = "";
    et_status first = ET_OK;
    if (dx) {
        if (sx_ == ET_OK) sx_ = et_queue_wait(q, tx);
        if (sx_ != ET_OK) { first = sx_; snprintf(msg, sizeof msg, "%s", et_error_message()); }
    }
    if (dw) {
        if (sw_ == ET_OK) sw_ = et_queue_wait(q, tw);
        if (sw_ != ET_OK && first == ET_OK) { first = sw_; snprintf(msg, sizeof msg, "%s", et_error_message()); }
    }
    if (first != ET_OK) et_error_set_message(msg);
    return first;
}
