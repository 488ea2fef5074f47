/* pooling.c - see pooling.h. Every kernel loops over the P = N*C planes,
 * which are independent, so OpenMP splits the planes between threads when
 * there is enough work to pay for the parallel region. */
#include "pooling.h"

#include <math.h>
#include <string.h>

/* Multiply-adds below which a parallel region is not worth starting. */
#define ET_POOL_PAR_MIN 65536
/* largest kernel/stride/padding/dilation and H/W accepted (2^31 - 1) */
#define ET_POOL_MAX_PARAM 2147483647LL

/* Floor division for a possibly negative numerator (PyTorch's div_rtn). */
static int64_t div_floor(int64_t a, int64_t b)
{
    int64_t q = a / b, r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) q--;
    return q;
}

/* pooling_output_shape of aten/src/ATen/native/Pool.h */
static int64_t pool_out(int64_t in, int64_t k, int64_t pad, int64_t s, int64_t d, int ceil_mode)
{
    int64_t out = div_floor(in + 2 * pad - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
    /* ceil_mode: the last window must start inside the input or left padding */
    if (ceil_mode && (out - 1) * s >= in + pad) out--;
    return out;
}

et_status et_pool2d_output_size(const char *op, const int64_t xs[4],
                                const et_pool2d_params *p, int64_t *oh, int64_t *ow)
{
    const int64_t *k = p->kernel, *s = p->stride, *pd = p->padding, *d = p->dilation;
#define DESC "input (%lld, %lld, %lld, %lld), kernel_size (%lld, %lld), stride (%lld, %lld), " \
             "padding (%lld, %lld), dilation (%lld, %lld), ceil_mode %s"
#define DARGS (long long)xs[0], (long long)xs[1], (long long)xs[2], (long long)xs[3], \
              (long long)k[0], (long long)k[1], (long long)s[0], (long long)s[1], \
              (long long)pd[0], (long long)pd[1], (long long)d[0], (long long)d[1], \
              p->ceil_mode ? "True" : "False"
    for (int i = 0; i < 4; i++)
        if (xs[i] < 0) return et_error(ET_ERR_VALUE, "%s: negative size in " DESC, op, DARGS);
    if (xs[1] < 1 || xs[2] < 1 || xs[3] < 1)
        return et_error(ET_ERR_VALUE, "%s: expected non-empty channels, height and width, got "
                        DESC, op, DARGS);
    if (k[0] <= 0 || k[1] <= 0)
        return et_error(ET_ERR_VALUE, "%s: kernel_size must be > 0, got " DESC, op, DARGS);
    if (s[0] <= 0 || s[1] <= 0)
        return et_error(ET_ERR_VALUE, "%s: stride must be > 0, got " DESC, op, DARGS);
    if (d[0] <= 0 || d[1] <= 0)
        return et_error(ET_ERR_VALUE, "%s: dilation must be > 0, got " DESC, op, DARGS);
    /* bounds that keep every index computation far from int64 overflow */
    for (int i = 0; i < 2; i++)
        if (k[i] > ET_POOL_MAX_PARAM || s[i] > ET_POOL_MAX_PARAM || d[i] > ET_POOL_MAX_PARAM ||
            pd[i] > ET_POOL_MAX_PARAM || xs[2 + i] > ET_POOL_MAX_PARAM)
            return et_error(ET_ERR_VALUE, "%s: sizes and parameters must be <= %lld, got " DESC,
                            op, (long long)ET_POOL_MAX_PARAM, DARGS);
    if (pd[0] < 0 || pd[1] < 0)
        return et_error(ET_ERR_VALUE, "%s: padding must be >= 0, got " DESC, op, DARGS);
    /* PyTorch's rule (pool2d_shape_check): pad <= kernel_size / 2 */
    if (pd[0] > k[0] / 2 || pd[1] > k[1] / 2)
        return et_error(ET_ERR_VALUE, "%s: pad should be smaller than or equal to half of "
                        "kernel size, got " DESC, op, DARGS);
    int64_t h = pool_out(xs[2], k[0], pd[0], s[0], d[0], p->ceil_mode);
    int64_t w = pool_out(xs[3], k[1], pd[1], s[1], d[1], p->ceil_mode);
    if (h < 1 || w < 1)
        return et_error(ET_ERR_VALUE, "%s: calculated output size (%lld, %lld) is too small "
                        "(must be >= 1) for " DESC, op, (long long)h, (long long)w, DARGS);
#undef DESC
#undef DARGS
    *oh = h;
    *ow = w;
    return ET_OK;
}

et_status et_max_pool2d_forward(const float *x, const int64_t xs[4],
                                const et_pool2d_params *p, float *y, int64_t *indices,
                                int64_t oh, int64_t ow)
{
    int64_t OH, OW;
    ET_TRY(et_pool2d_output_size("max_pool2d_forward", xs, p, &OH, &OW));
    if (OH != oh || OW != ow)
        return et_error(ET_ERR_VALUE, "max_pool2d_forward: output (%lld, %lld) != expected "
                        "(%lld, %lld)", (long long)oh, (long long)ow, (long long)OH, (long long)OW);
    const int64_t P = xs[0] * xs[1], H = xs[2], W = xs[3];
    const int64_t kh = p->kernel[0], kw = p->kernel[1], sh = p->stride[0], sw = p->stride[1];
    const int64_t ph = p->padding[0], pw = p->padding[1], dh = p->dilation[0], dw = p->dilation[1];
    const int64_t work = P * OH * OW * kh * kw;
    /* Output columns whose whole window lies inside the input (no column
     * clipping): [j_lo, j_hi). For them the window elements are visited
     * (h, w)-major as PyTorch does, but with the output column innermost, so
     * that consecutive outputs are independent (no compare->select chain
     * through one running max; the loop vectorises). */
    int64_t j_lo = (pw + sw - 1) / sw;
    int64_t num = W - 1 - (kw - 1) * dw + pw;
    int64_t j_hi = num >= 0 ? num / sw + 1 : 0;
    if (j_lo > OW) j_lo = OW;
    if (j_hi > OW) j_hi = OW;
    if (j_hi < j_lo) j_hi = j_lo;
    #pragma omp parallel for schedule(static) if(work > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < P; pl++) {
        const float *xp = x + pl * H * W;      /* (H, W) */
        float *yp = y + pl * OH * OW;          /* (OH, OW) */
        int64_t *ip = indices ? indices + pl * OH * OW : NULL;  /* (OH, OW) or none */
        for (int64_t i = 0; i < OH; i++) {
            int64_t h0 = i * sh - ph;
            int64_t h1 = h0 + (kh - 1) * dh + 1;
            if (h1 > H) h1 = H;
            while (h0 < 0) h0 += dh;
            float *yr = yp + i * OW;
            int64_t *ir = ip ? ip + i * OW : NULL;
            for (int64_t j = 0; j < OW; j++) {
                if (j == j_lo) j = j_hi;   /* interior columns: below */
                if (j >= OW) break;
                int64_t w0 = j * sw - pw;
                int64_t w1 = w0 + (kw - 1) * dw + 1;
                if (w1 > W) w1 = W;
                while (w0 < 0) w0 += dw;
                /* PyTorch starts from -inf at the first in-bounds element and
                 * lets a NaN win (the last NaN of the window). A window with
                 * no element (dilation past the edge) gives -inf and -1. */
                float best = -INFINITY;
                int64_t besti = (h0 < h1 && w0 < w1) ? h0 * W + w0 : -1;
                for (int64_t h = h0; h < h1; h += dh) {
                    const float *row = xp + h * W;
                    for (int64_t w = w0; w < w1; w += dw) {
                        float v = row[w];
                        if (v > best || isnan(v)) { best = v; besti = h * W + w; }
                    }
                }
                yr[j] = best;
                if (ir) ir[j] = besti;
            }
            if (j_lo >= j_hi) continue;
            for (int64_t j = j_lo; j < j_hi; j++) yr[j] = -INFINITY;
            if (!ir) {
                /* no indices (inference: nothing to backpropagate): the same
                 * max with the same NaN rule, 4 bytes per output instead of 12 */
                for (int64_t h = h0; h < h1; h += dh) {
                    const float *row = xp + h * W;
                    for (int64_t kk = 0; kk < kw; kk++) {
                        const int64_t off = kk * dw - pw;
                        #pragma omp simd
                        for (int64_t j = j_lo; j < j_hi; j++) {
                            float v = row[j * sw + off];
                            int take = (v > yr[j]) | (v != v);
                            yr[j] = take ? v : yr[j];
                        }
                    }
                }
                continue;
            }
            for (int64_t j = j_lo; j < j_hi; j++) ir[j] = h0 < h1 ? h0 * W + j * sw - pw : -1;
            for (int64_t h = h0; h < h1; h += dh) {
                const float *row = xp + h * W;
                for (int64_t kk = 0; kk < kw; kk++) {
                    const int64_t off = kk * dw - pw;   /* column of output j: j*sw + off */
                    const int64_t base = h * W + off;
                    #pragma omp simd
                    for (int64_t j = j_lo; j < j_hi; j++) {
                        float v = row[j * sw + off];
                        int take = (v > yr[j]) | (v != v);
                        yr[j] = take ? v : yr[j];
                        ir[j] = take ? base + j * sw : ir[j];
                    }
                }
            }
        }
    }
    return ET_OK;
}

et_status et_max_pool2d_backward(const float *dy, const int64_t *indices,
                                 int64_t planes, int64_t out_plane,
                                 float *dx, int64_t in_plane)
{
    if (planes < 0 || out_plane < 0 || in_plane < 0)
        return et_error(ET_ERR_VALUE, "max_pool2d_backward: negative sizes");
    /* validate every index first: no error can leave a parallel region */
    int64_t total = planes * out_plane;
    for (int64_t t = 0; t < total; t++) {
        int64_t id = indices[t];
        if (id != -1 && (id < 0 || id >= in_plane))
            return et_error(ET_ERR_VALUE, "max_pool2d_backward: index %lld at flat position "
                            "%lld is outside [0, %lld) (the input plane H*W)",
                            (long long)id, (long long)t, (long long)in_plane);
    }
    #pragma omp parallel for schedule(static) if(total + planes * in_plane > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * in_plane;
        const float *dyp = dy + pl * out_plane;
        const int64_t *ip = indices + pl * out_plane;
        memset(dxp, 0, (size_t)in_plane * sizeof(float));
        for (int64_t o = 0; o < out_plane; o++)
            if (ip[o] >= 0) dxp[ip[o]] += dyp[o];
    }
    return ET_OK;
}

static et_status avg_check(const char *op, const int64_t xs[4], const et_pool2d_params *p,
                           int64_t oh, int64_t ow)
{
    if (p->dilation[0] != 1 || p->dilation[1] != 1)
        return et_error(ET_ERR_VALUE, "%s: dilation must be 1, got (%lld, %lld)", op,
                        (long long)p->dilation[0], (long long)p->dilation[1]);
    int64_t OH, OW;
    ET_TRY(et_pool2d_output_size(op, xs, p, &OH, &OW));
    if (OH != oh || OW != ow)
        return et_error(ET_ERR_VALUE, "%s: output (%lld, %lld) != expected (%lld, %lld)", op,
                        (long long)oh, (long long)ow, (long long)OH, (long long)OW);
    return ET_OK;
}

/* The window of output (i, j) as PyTorch's cpu_avg_pool computes it:
 * clipped to the padded input for pool_size (the count_include_pad divisor,
 * which in ceil_mode excludes the extra region past the padding), then
 * clipped to the real input. Returns the divisor (0 for an empty window). */
static inline int64_t avg_window(int64_t i, int64_t j, int64_t H, int64_t W,
                                 const et_pool2d_params *p, int cip,
                                 int64_t *h0, int64_t *h1, int64_t *w0, int64_t *w1)
{
    int64_t a0 = i * p->stride[0] - p->padding[0];
    int64_t b0 = j * p->stride[1] - p->padding[1];
    int64_t a1 = a0 + p->kernel[0], b1 = b0 + p->kernel[1];
    if (a1 > H + p->padding[0]) a1 = H + p->padding[0];
    if (b1 > W + p->padding[1]) b1 = W + p->padding[1];
    int64_t pool_size = (a1 - a0) * (b1 - b0);
    if (a0 < 0) a0 = 0;
    if (b0 < 0) b0 = 0;
    if (a1 > H) a1 = H;
    if (b1 > W) b1 = W;
    *h0 = a0; *h1 = a1; *w0 = b0; *w1 = b1;
    if (a0 >= a1 || b0 >= b1) return 0;
    return cip ? pool_size : (a1 - a0) * (b1 - b0);
}

et_status et_avg_pool2d_forward(const float *x, const int64_t xs[4],
                                const et_pool2d_params *p, int count_include_pad,
                                float *y, int64_t oh, int64_t ow)
{
    ET_TRY(avg_check("avg_pool2d_forward", xs, p, oh, ow));
    const int64_t P = xs[0] * xs[1], H = xs[2], W = xs[3];
    const int64_t work = P * oh * ow * p->kernel[0] * p->kernel[1];
    #pragma omp parallel for schedule(static) if(work > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < P; pl++) {
        const float *xp = x + pl * H * W;   /* (H, W) */
        float *yp = y + pl * oh * ow;       /* (OH, OW) */
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0, h1, w0, w1;
                int64_t div = avg_window(i, j, H, W, p, count_include_pad, &h0, &h1, &w0, &w1);
                if (div == 0) { yp[i * ow + j] = 0.0f; continue; }
                float sum = 0.0f;
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++) sum += xp[h * W + w];
                yp[i * ow + j] = sum / (float)div;
            }
    }
    return ET_OK;
}

et_status et_avg_pool2d_backward(const float *dy, const int64_t xs[4],
                                 const et_pool2d_params *p, int count_include_pad,
                                 float *dx, int64_t oh, int64_t ow)
{
    ET_TRY(avg_check("avg_pool2d_backward", xs, p, oh, ow));
    const int64_t P = xs[0] * xs[1], H = xs[2], W = xs[3];
    const int64_t work = P * oh * ow * p->kernel[0] * p->kernel[1];
    #pragma omp parallel for schedule(static) if(work > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < P; pl++) {
        float *dxp = dx + pl * H * W;          /* (H, W) */
        const float *dyp = dy + pl * oh * ow;  /* (OH, OW) */
        memset(dxp, 0, (size_t)(H * W) * sizeof(float));
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                int64_t h0, h1, w0, w1;
                int64_t div = avg_window(i, j, H, W, p, count_include_pad, &h0, &h1, &w0, &w1);
                if (div == 0) continue;
                float g = dyp[i * ow + j] / (float)div;
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++) dxp[h * W + w] += g;
            }
    }
    return ET_OK;
}

static et_status adaptive_check(const char *op, const int64_t xs[4], int64_t oh, int64_t ow)
{
    for (int i = 0; i < 4; i++)
        if (xs[i] < 0) return et_error(ET_ERR_VALUE, "%s: negative size in input shape", op);
    if (xs[1] < 1 || xs[2] < 1 || xs[3] < 1)
        return et_error(ET_ERR_VALUE, "%s: expected non-empty channels, height and width, got "
                        "input (%lld, %lld, %lld, %lld)", op, (long long)xs[0], (long long)xs[1],
                        (long long)xs[2], (long long)xs[3]);
    if (oh < 1 || ow < 1 || oh > ET_POOL_MAX_PARAM || ow > ET_POOL_MAX_PARAM ||
        xs[2] > ET_POOL_MAX_PARAM || xs[3] > ET_POOL_MAX_PARAM)
        return et_error(ET_ERR_VALUE, "%s: output_size (%lld, %lld) must be in [1, 2^31) (input "
                        "(%lld, %lld, %lld, %lld))", op, (long long)oh, (long long)ow,
                        (long long)xs[0], (long long)xs[1], (long long)xs[2], (long long)xs[3]);
    return ET_OK;
}

/* PyTorch's adaptive bin edges: [floor(i*in/out), ceil((i+1)*in/out)) */
static inline int64_t bin_start(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
static inline int64_t bin_end(int64_t i, int64_t out, int64_t in)
{
    return ((i + 1) * in + out - 1) / out;
}

et_status et_adaptive_avg_pool2d_forward(const float *x, const int64_t xs[4],
                                         float *y, int64_t oh, int64_t ow)
{
    ET_TRY(adaptive_check("adaptive_avg_pool2d_forward", xs, oh, ow));
    const int64_t P = xs[0] * xs[1], H = xs[2], W = xs[3];
    const int64_t work = P * (oh > H ? oh : H) * (ow > W ? ow : W);
    #pragma omp parallel for schedule(static) if(work > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < P; pl++) {
        const float *xp = x + pl * H * W;   /* (H, W) */
        float *yp = y + pl * oh * ow;       /* (OH, OW) */
        for (int64_t i = 0; i < oh; i++) {
            int64_t h0 = bin_start(i, oh, H), h1 = bin_end(i, oh, H);
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0 = bin_start(j, ow, W), w1 = bin_end(j, ow, W);
                /* float lanes per row (vectorised, and shorter rounding
                 * chains than one serial sum), rows summed in double */
                double sum = 0.0;
                for (int64_t h = h0; h < h1; h++) {
                    float rs = 0.0f;
                    #pragma omp simd reduction(+:rs)
                    for (int64_t w = w0; w < w1; w++) rs += xp[h * W + w];
                    sum += rs;
                }
                /* divided twice, as PyTorch does (sum / kh / kw) */
                yp[i * ow + j] = (float)sum / (float)(h1 - h0) / (float)(w1 - w0);
            }
        }
    }
    return ET_OK;
}

et_status et_adaptive_avg_pool2d_backward(const float *dy, const int64_t xs[4],
                                          float *dx, int64_t oh, int64_t ow)
{
    ET_TRY(adaptive_check("adaptive_avg_pool2d_backward", xs, oh, ow));
    const int64_t P = xs[0] * xs[1], H = xs[2], W = xs[3];
    const int64_t work = P * (oh > H ? oh : H) * (ow > W ? ow : W);
    #pragma omp parallel for schedule(static) if(work > ET_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < P; pl++) {
        float *dxp = dx + pl * H * W;          /* (H, W) */
        const float *dyp = dy + pl * oh * ow;  /* (OH, OW) */
        memset(dxp, 0, (size_t)(H * W) * sizeof(float));
        for (int64_t i = 0; i < oh; i++) {
            int64_t h0 = bin_start(i, oh, H), h1 = bin_end(i, oh, H);
            for (int64_t j = 0; j < ow; j++) {
                int64_t w0 = bin_start(j, ow, W), w1 = bin_end(j, ow, W);
                float g = dyp[i * ow + j] / (float)(h1 - h0) / (float)(w1 - w0);
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++) dxp[h * W + w] += g;
            }
        }
    }
    return ET_OK;
}
