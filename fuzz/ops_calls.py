"""Random calls, valid and malformed, into every op of edgetrain._C and
edgetrain.nn.functional: the generator of fuzz/fuzz_ops.py and of the
malformed-call property in tests/test_properties.py.

A call is a JSON-able spec, so the input of a crash can be kept and replayed:

    {"fn": "_C.conv2d_forward", "args": [ARG, ...], "ctx": {"backend": "ref",
     "precision": "int8"}, "mutated": [2]}

    ARG  {"a": [dtype, shape, layout, fill, seed]}   a numpy array
         {"t": [dtype, shape, layout, fill, seed, requires_grad]}  an edgetrain Tensor
         {"x": "nan" | "inf" | "-inf" | "obj" | "bytes" | "none"}
         {"tuple": [ARG, ...]}, [ARG, ...] (a list), {"v": any JSON value}

make_call(rng) draws a function, builds a VALID call for a small random
configuration (shapes consistent, values in range), then replaces 0-3
arguments by hostile ones: another dtype, ndim or shape; a non-contiguous,
negative-stride, misaligned, read-only, zero-stride or Fortran layout;
NaN/Inf/subnormal/huge/out-of-range values (int64 indices and targets past
the end); extreme ints (-1, 0, 64, -2^31, -2^63; with `huge` also 2^31-1,
2^31, 2^32, 2^62, 2^63-1, 2^64, 10^30); wrong types
(None, str, float, object, bytes, nested lists). run_call(spec) executes it
and, for nn.functional, runs backward through the result.

CLEAN is what a malformed call may raise: edgetrain's errors (ShapeError /
DtypeError / UnsupportedError / BackendError, all EdgetrainError), ValueError,
TypeError, IndexError (dim out of range, as torch), NotImplementedError,
OverflowError (a Python int too large for a C long: CPython's own argument
conversion) and MemoryError (a genuinely huge output; BINDINGS.md: "MemoryError
for failed allocations"). Anything else, or a crash, is a finding.
`huge=False` leaves out the hostile ints that make genuinely huge outputs
(safe to run inside pytest, without the fuzz child's memory limit).
"""
from __future__ import annotations

import math

import numpy as np

DTYPES_BAD = ["float64", "float16", "int8", "uint8", "int16", "int32", "int64", "uint16",
              "bool", "complex64", "object"]
LAYOUTS = ["c", "T", "step", "neg", "unaligned", "readonly", "f", "zerostride"]
FILLS = ["randn", "zeros", "nan", "inf", "big", "tiny", "int", "neg", "idxbad"]
# small and negative extremes: safe anywhere (outputs stay small)
EXTREME_INTS = [-1, 0, 1, 2, 3, 7, 64, -2 ** 31, -2 ** 63]
# ints that make genuinely huge (or overflowing) sizes: only under the fuzz
# child's address-space limit (huge=True)
HUGE_INTS = [2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 64, 10 ** 30, -2 ** 64]
MAX_ELEMS = 1 << 16              # arrays are built small; hugeness comes from ints


# ---------------------------------------------------------------------------
# building arguments
def _fill(rng, fill, n, dtype):
    if fill == "zeros":
        v = np.zeros(n)
    elif fill == "int":
        v = rng.integers(-3, 10, n).astype(np.float64)
    elif fill == "neg":
        v = -np.abs(rng.standard_normal(n)) - 1
    elif fill == "big":
        v = rng.standard_normal(n) * 1e38
    elif fill == "tiny":
        v = rng.standard_normal(n) * 1e-42          # float32 subnormals
    elif fill == "idxbad":
        v = rng.choice([-1.0, -2.0 ** 40, 2.0 ** 40, 7.0, 1e6], n)
    else:
        v = rng.standard_normal(n)
        if fill in ("nan", "inf") and n:
            v[rng.integers(n)] = np.nan if fill == "nan" else np.inf
    if dtype == "object":
        return np.array(list(v), dtype=object)
    if dtype == "bfloat16":          # bf16 bits in uint16
        f = v.astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)
    with np.errstate(all="ignore"):
        if np.dtype(dtype).kind in "iub":
            info = np.iinfo(dtype) if np.dtype(dtype).kind != "b" else None
            if info is not None:
                v = np.nan_to_num(v, nan=0, posinf=info.max, neginf=info.min)
                v = np.clip(np.rint(v), info.min, info.max)
            return v.astype(dtype)
        return v.astype(dtype)


def build_array(dtype, shape, layout="c", fill="randn", seed=0):
    """A numpy array of `shape` (values from `fill`) laid out as `layout`."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if n > MAX_ELEMS or any(s < 0 for s in shape):
        shape, n = (2, 2), 4          # never build big arrays here
    if layout in ("T", "f") and len(shape) >= 2:
        base = _fill(rng, fill, n, dtype).reshape(shape[::-1])
        return base.T if layout == "T" else np.asfortranarray(base.T)
    if layout == "step" and shape:
        big = _fill(rng, fill, 2 * n, dtype).reshape(shape[:-1] + (2 * shape[-1],))
        return big[..., ::2]
    if layout == "neg" and shape:
        return _fill(rng, fill, n, dtype).reshape(shape)[..., ::-1]
    a = _fill(rng, fill, n, dtype).reshape(shape)
    if layout == "unaligned" and a.dtype.itemsize > 1 and a.dtype != object:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = np.frombuffer(buf.data, dtype=a.dtype, count=n, offset=1).reshape(shape)
        u[...] = a
        return u
    if layout == "readonly":
        a.flags.writeable = False
    if layout == "zerostride" and n:
        return np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * len(shape)), shape)
    return a


def build(arg):
    """ARG spec -> Python value (see the module docstring)."""
    if isinstance(arg, list):
        return [build(a) for a in arg]
    if not isinstance(arg, dict):
        return arg
    if "a" in arg:
        return build_array(*arg["a"])
    if "t" in arg:
        import edgetrain as et
        dtype, shape, layout, fill, seed, rg = arg["t"]
        a = build_array(dtype, shape, layout, fill, seed)
        if a.dtype == object:
            return a                   # not a Tensor: the op must refuse it
        t = et.from_numpy(a)
        if rg and a.dtype.kind == "f":
            t.requires_grad_(True)
        return t
    if "tuple" in arg:
        return tuple(build(a) for a in arg["tuple"])
    if "x" in arg:
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "obj": object(),
                "bytes": b"\x00\x01", "none": None}[arg["x"]]
    return arg.get("v")


def A(rng, dtype, shape, layout="c", fill="randn"):
    return {"a": [dtype, list(shape), layout, fill, rng.getrandbits(32)]}


def T(rng, dtype, shape, layout="c", fill="randn", grad=True):
    return {"t": [dtype, list(shape), layout, fill, rng.getrandbits(32), grad]}


def V(v):
    return {"v": v}


def tup(*vals):
    return {"tuple": [V(v) for v in vals]}


# ---------------------------------------------------------------------------
# valid calls for small random configurations
def _conv_cfg(rng):
    G = rng.choice([1, 1, 2, 3])
    cg, ocg = rng.randint(1, 3), rng.randint(1, 3)
    K = (rng.randint(1, 3), rng.randint(1, 3))
    s = (rng.randint(1, 2), rng.randint(1, 2))
    p = (rng.randint(0, 2), rng.randint(0, 2))
    d = (rng.randint(1, 2), rng.randint(1, 2))
    eff = [d[i] * (K[i] - 1) + 1 for i in range(2)]
    H = max(1, eff[0] - 2 * p[0]) + rng.randint(0, 5)
    W = max(1, eff[1] - 2 * p[1]) + rng.randint(0, 5)
    N = rng.randint(1, 3)
    OH = (H + 2 * p[0] - eff[0]) // s[0] + 1
    OW = (W + 2 * p[1] - eff[1]) // s[1] + 1
    return dict(N=N, C=cg * G, OC=ocg * G, G=G, K=K, s=s, p=p, d=d, H=H, W=W, OH=OH, OW=OW)


def _backend(rng, backends):
    return rng.choice(backends)


def _calls(rng, backends):
    """name -> a function returning (args, ctx) for a valid call."""
    f32 = "float32"
    prec = ["fp32", "bf16", "fp16", "int8"]

    def conv(c=None):
        c = c or _conv_cfg(rng)
        x = A(rng, f32, (c["N"], c["C"], c["H"], c["W"]))
        w = A(rng, f32, (c["OC"], c["C"] // c["G"]) + c["K"])
        b = A(rng, f32, (c["OC"],)) if rng.random() < 0.5 else None
        dy = A(rng, f32, (c["N"], c["OC"], c["OH"], c["OW"]))
        return c, x, w, b, dy

    def mm():
        M, K, N = rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 6)
        ta, tb = rng.random() < 0.5, rng.random() < 0.5
        return M, K, N, ta, tb

    def lowp_dt():
        return rng.choice(["int8", "bfloat16", "float16"])

    def lowp_arr(dt, shape, first):
        if dt == "int8":
            return A(rng, rng.choice(["uint8", "int8"]) if first else "int8", shape, fill="int")
        return A(rng, "bfloat16" if dt == "bfloat16" else "float16", shape)

    def pool():
        N, C = rng.randint(1, 2), rng.randint(1, 3)
        k = (rng.randint(1, 3), rng.randint(1, 3))
        s = (rng.randint(1, 2), rng.randint(1, 2))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        H, W = k[0] + rng.randint(0, 5), k[1] + rng.randint(0, 5)
        OH = (H + 2 * p[0] - k[0]) // s[0] + 1
        OW = (W + 2 * p[1] - k[1]) // s[1] + 1
        return N, C, H, W, k, s, p, OH, OW

    calls = {}

    def reg(name):
        def deco(f):
            calls[name] = f
            return f
        return deco

    @reg("_C.matmul")
    def _():
        M, K, N, ta, tb = mm()
        return [A(rng, f32, (K, M) if ta else (M, K)), A(rng, f32, (N, K) if tb else (K, N)),
                V(ta), V(tb), A(rng, f32, (N,)) if rng.random() < 0.5 else V(None),
                V(_backend(rng, backends))], {}

    @reg("_C.matmul_lowp")
    def _():
        M, K, N, ta, tb = mm()
        dt = lowp_dt()
        bias = A(rng, f32, (N,)) if dt != "int8" and rng.random() < 0.5 else V(None)
        return [lowp_arr(dt, (K, M) if ta else (M, K), True),
                lowp_arr(dt, (N, K) if tb else (K, N), False), V(ta), V(tb), bias,
                V(_backend(rng, backends)), V(dt)], {}

    @reg("_C.conv2d_primitive")
    def _():
        c, x, w, b, _dy = conv()
        return [x, w, b or V(None), V(list(c["s"])), V(list(c["p"])),
                V([rng.randint(0, 2), rng.randint(0, 2)]), V(list(c["d"])), V(c["G"]),
                V(_backend(rng, backends))], {}

    @reg("_C.conv2d_primitive_lowp")
    def _():
        c = _conv_cfg(rng)
        dt = lowp_dt()
        return [lowp_arr(dt, (c["N"], c["C"], c["H"], c["W"]), True),
                lowp_arr(dt, (c["OC"], c["C"] // c["G"]) + c["K"], False), V(None),
                V(list(c["s"])), V(list(c["p"])), V(list(c["p"])), V(list(c["d"])), V(c["G"]),
                V(dt), V(_backend(rng, backends))], {}

    @reg("_C.conv2d_forward")
    def _():
        c, x, w, b, _dy = conv()
        return [x, w, b or V(None), V(list(c["s"])), V(list(c["p"])), V(list(c["d"])), V(c["G"]),
                V(_backend(rng, backends))], {}

    @reg("_C.conv2d_backward")
    def _():
        c, x, w, _b, dy = conv()
        return [dy, x, w, V(list(c["s"])), V(list(c["p"])), V(list(c["d"])), V(c["G"]),
                V(rng.random() < 0.8), V(rng.random() < 0.8), V(rng.random() < 0.8),
                V(_backend(rng, backends))], {}

    @reg("_C.conv2d_backward_data")
    def _():
        c, x, w, _b, dy = conv()
        return [dy, w, V([c["N"], c["C"], c["H"], c["W"]]), V(list(c["s"])), V(list(c["p"])),
                V(list(c["d"])), V(c["G"]), V(_backend(rng, backends))], {}

    @reg("_C.conv2d_backward_weight")
    def _():
        c, x, w, _b, dy = conv()
        return [dy, x, V([c["OC"], c["C"] // c["G"], *c["K"]]), V(list(c["s"])), V(list(c["p"])),
                V(list(c["d"])), V(c["G"]), V(_backend(rng, backends))], {}

    @reg("_C.conv2d_forward_lowp")
    def _():
        c, x, w, b, _dy = conv()
        return [x, w, b or V(None), V(list(c["s"])), V(list(c["p"])), V(list(c["d"])), V(c["G"]),
                V(rng.choice(prec)), V(_backend(rng, backends)), V(rng.random() < 0.3),
                V(rng.random() < 0.5)], {}

    @reg("_C.conv2d_backward_lowp")
    def _():
        c, x, w, _b, dy = conv()
        xq = V(None)
        xs = V(None)
        if rng.random() < 0.3:
            xq = A(rng, "int8", (c["N"], c["C"], c["H"], c["W"]), fill="int")
            xs = V(0.05)
        return [dy, x, w, V(list(c["s"])), V(list(c["p"])), V(list(c["d"])), V(c["G"]),
                V(True), V(True), V(rng.random() < 0.5), V(rng.choice(prec)), V(rng.choice(prec)),
                V(rng.getrandbits(64)), V(rng.getrandbits(16)), V(_backend(rng, backends)),
                V(False), xq, xs], {}

    @reg("_C.linear_forward")
    def _():
        M, K, N, _, _ = mm()
        return [A(rng, f32, (M, K)), A(rng, f32, (N, K)),
                A(rng, f32, (N,)) if rng.random() < 0.5 else V(None),
                V(_backend(rng, backends))], {}

    @reg("_C.linear_backward")
    def _():
        M, K, N, _, _ = mm()
        return [A(rng, f32, (M, N)), A(rng, f32, (M, K)), A(rng, f32, (N, K)), V(True), V(True),
                V(rng.random() < 0.5), V(_backend(rng, backends))], {}

    @reg("_C.linear_forward_lowp")
    def _():
        M, K, N, _, _ = mm()
        return [A(rng, f32, (M, K)), A(rng, f32, (N, K)),
                A(rng, f32, (N,)) if rng.random() < 0.5 else V(None), V(rng.choice(prec)),
                V(_backend(rng, backends)), V(rng.random() < 0.3), V(rng.random() < 0.5)], {}

    @reg("_C.linear_backward_lowp")
    def _():
        M, K, N, _, _ = mm()
        return [A(rng, f32, (M, N)), A(rng, f32, (M, K)), A(rng, f32, (N, K)), V(True), V(True),
                V(True), V(rng.choice(prec)), V(rng.choice(prec)), V(rng.getrandbits(64)),
                V(0), V(_backend(rng, backends))], {}

    @reg("_C.relu_forward")
    def _():
        return [A(rng, f32, [rng.randint(0, 4) for _ in range(rng.randint(0, 4))])], {}

    @reg("_C.relu_backward")
    def _():
        shp = [rng.randint(0, 4) for _ in range(rng.randint(0, 4))]
        return [A(rng, f32, shp), A(rng, f32, shp)], {}

    @reg("_C.max_pool2d_forward")
    def _():
        N, C, H, W, k, s, p, _, _ = pool()
        return [A(rng, f32, (N, C, H, W)), V(list(k)), V(list(s)), V(list(p)), V(1),
                V(rng.random() < 0.3)], {}

    @reg("_C.max_pool2d_backward")
    def _():
        N, C, H, W, k, s, p, OH, OW = pool()
        idx = {"a": ["int64", [N, C, OH, OW], "c", "zeros", 0]}   # index 0: valid
        return [A(rng, f32, (N, C, OH, OW)), idx, V([N, C, H, W])], {}

    @reg("_C.avg_pool2d_forward")
    def _():
        N, C, H, W, k, s, p, _, _ = pool()
        return [A(rng, f32, (N, C, H, W)), V(list(k)), V(list(s)), V(list(p)),
                V(rng.random() < 0.3), V(rng.random() < 0.5)], {}

    @reg("_C.avg_pool2d_backward")
    def _():
        N, C, H, W, k, s, p, OH, OW = pool()
        return [A(rng, f32, (N, C, OH, OW)), V([N, C, H, W]), V(list(k)), V(list(s)), V(list(p)),
                V(False), V(rng.random() < 0.5)], {}

    @reg("_C.adaptive_avg_pool2d_forward")
    def _():
        return [A(rng, f32, (1, 2, rng.randint(1, 7), rng.randint(1, 7))),
                V([rng.randint(1, 4), rng.randint(1, 4)])], {}

    @reg("_C.adaptive_avg_pool2d_backward")
    def _():
        oh, ow = rng.randint(1, 4), rng.randint(1, 4)
        return [A(rng, f32, (1, 2, oh, ow)), V([1, 2, rng.randint(1, 7), rng.randint(1, 7)])], {}

    @reg("_C.batch_norm_forward")
    def _():
        C = rng.randint(1, 3)
        shp = (rng.randint(2, 4), C) + ((rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.7 else ())
        return [A(rng, f32, shp), A(rng, f32, (C,)), A(rng, f32, (C,)), A(rng, f32, (C,)),
                A(rng, f32, (C,), fill="int"), V(rng.random() < 0.6), V(0.1), V(1e-5)], {}

    @reg("_C.batch_norm_backward")
    def _():
        C = rng.randint(1, 3)
        shp = (rng.randint(2, 4), C, 2, 2)
        return [A(rng, f32, shp), A(rng, f32, shp), A(rng, f32, (C,)), A(rng, f32, (C,)),
                A(rng, f32, (C,)), V(rng.random() < 0.6)], {}

    @reg("_C.log_softmax_forward")
    def _():
        return [A(rng, f32, (rng.randint(1, 4), rng.randint(1, 5)))], {}

    @reg("_C.log_softmax_backward")
    def _():
        shp = (rng.randint(1, 4), rng.randint(1, 5))
        return [A(rng, f32, shp), A(rng, f32, shp)], {}

    @reg("_C.nll_loss_forward")
    def _():
        N, C = rng.randint(1, 4), rng.randint(1, 5)
        return [A(rng, f32, (N, C)), {"a": ["int64", [N], "c", "zeros", 0]}], {}

    @reg("_C.nll_loss_backward")
    def _():
        N, C = rng.randint(1, 4), rng.randint(1, 5)
        return [{"a": ["int64", [N], "c", "zeros", 0]}, V(N), V(C), V(1.0)], {}

    @reg("_C.sgd_step")
    def _():
        shp = [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
        buf = rng.random() < 0.5           # a momentum needs a buffer
        return [A(rng, f32, shp), A(rng, f32, shp), A(rng, f32, shp) if buf else V(None),
                V(0.1), V(0.9 if buf else 0.0), V(0.0), V(1e-4), V(False), V(rng.random() < 0.5)], {}

    @reg("_C.adam_step")
    def _():
        shp = [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
        return [A(rng, f32, shp), A(rng, f32, shp), A(rng, f32, shp), A(rng, f32, shp, fill="zeros"),
                V(rng.randint(1, 5)), V(1e-3), V(0.9), V(0.999), V(1e-8), V(0.0)], {}

    @reg("_C.im2col")
    def _():
        c = _conv_cfg(rng)
        return [A(rng, f32, (c["N"], c["C"], c["H"], c["W"])), V(list(c["K"])), V(list(c["s"])),
                V(list(c["p"])), V(list(c["p"])), V(list(c["d"]))], {}

    @reg("_C.col2im")
    def _():
        c = _conv_cfg(rng)
        cols = A(rng, f32, (c["N"], c["C"] * c["K"][0] * c["K"][1], c["OH"] * c["OW"]))
        return [cols, V([c["N"], c["C"], c["H"], c["W"]]), V(list(c["K"])), V(list(c["s"])),
                V(list(c["p"])), V(list(c["p"])), V(list(c["d"]))], {}

    @reg("_C.quantize_per_tensor")
    def _():
        shp = [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]
        static = rng.random() < 0.3        # a static scale takes no qmax
        return [A(rng, f32, shp), V(rng.choice(["int8", "uint8"])), V(0.01 if static else None),
                V(0 if static else rng.choice([0, 63, 127]))], {}

    @reg("_C.quantize_per_channel")
    def _():
        return [A(rng, f32, [rng.randint(1, 4) for _ in range(rng.randint(1, 4))])], {}

    @reg("_C.quantize_stochastic")
    def _():
        shp = [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]
        return [A(rng, f32, shp), V(rng.getrandbits(64)), V(rng.getrandbits(8)),
                V(rng.choice([1, 63, 127]))], {}

    @reg("_C.dequantize")
    def _():
        shp = [rng.randint(1, 4), rng.randint(1, 4)]
        if rng.random() < 0.5:
            return [A(rng, "int8", shp, fill="int"), V(0.1)], {}
        return [A(rng, "int8", shp, fill="int"), A(rng, f32, (shp[0],), fill="int")], {}

    @reg("_C.dequantize_accumulator")
    def _():
        M, N = rng.randint(1, 4), rng.randint(1, 4)
        if rng.random() < 0.5:
            return [A(rng, "int32", (M, N), fill="int"), V(0.1), A(rng, f32, (N,), fill="int"),
                    A(rng, f32, (N,)), V("mn")], {}
        return [A(rng, "int32", (M, N, 2, 2), fill="int"), V(0.1), V(0.5), V(None), V("nchw")], {}

    @reg("_C.to_float16")
    def _():
        return [A(rng, f32, [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]),
                V(rng.random() < 0.5)], {}

    @reg("_C.from_float16")
    def _():
        return [A(rng, "float16", [rng.randint(0, 5) for _ in range(rng.randint(0, 3))]),
                V(rng.random() < 0.5)], {}

    @reg("_C.to_bfloat16")
    def _():
        return [A(rng, f32, [rng.randint(0, 5) for _ in range(rng.randint(0, 3))])], {}

    @reg("_C.from_bfloat16")
    def _():
        return [A(rng, "uint16", [rng.randint(0, 5) for _ in range(rng.randint(0, 3))],
                  fill="int")], {}

    @reg("_C.empty")
    def _():
        return [V([rng.randint(0, 4) for _ in range(rng.randint(0, 4))]),
                V(rng.choice(["float32", "int8", "uint8", "int32", "float16", "bfloat16", "int64"])),
                V(rng.random() < 0.5)], {}

    @reg("queue.submit_matmul")
    def _():
        M, K, N, ta, tb = mm()
        return [V(rng.choice([1, 2, 64])), A(rng, f32, (K, M) if ta else (M, K)),
                A(rng, f32, (N, K) if tb else (K, N)), A(rng, f32, (M, N), fill="zeros"),
                V(ta), V(tb), V(_backend(rng, backends))], {}

    @reg("_C.backend_supports")
    def _():
        return [V(_backend(rng, backends)), V(rng.choice(["matmul", "conv2d"])),
                V(rng.choice(["f32", "u8", "s8", "bf16", "f16"]))], {}

    # -- nn.functional: Tensors, autograd, the precision / backend contexts --
    @reg("F.conv2d")
    def _():
        c = _conv_cfg(rng)
        pad = list(c["p"]) if rng.random() < 0.8 else rng.choice(["same", "valid"])
        stride = list(c["s"]) if pad != "same" else [1, 1]
        return [T(rng, f32, (c["N"], c["C"], c["H"] + 2, c["W"] + 2)),
                T(rng, f32, (c["OC"], c["C"] // c["G"]) + c["K"]),
                T(rng, f32, (c["OC"],)) if rng.random() < 0.5 else V(None), V(stride), V(pad),
                V(list(c["d"])), V(c["G"])], {}

    @reg("F.linear")
    def _():
        M, K, N, _, _ = mm()
        lead = [M] if rng.random() < 0.7 else [2, M]
        return [T(rng, f32, lead + [K]), T(rng, f32, (N, K)),
                T(rng, f32, (N,)) if rng.random() < 0.5 else V(None)], {}

    @reg("F.max_pool2d")
    def _():
        N, C, H, W, k, s, p, _, _ = pool()
        return [T(rng, f32, (N, C, H, W)), V(list(k)), V(list(s)), V(list(p)), V(1),
                V(rng.random() < 0.3), V(rng.random() < 0.3)], {}

    @reg("F.avg_pool2d")
    def _():
        N, C, H, W, k, s, p, _, _ = pool()
        return [T(rng, f32, (N, C, H, W)), V(list(k)), V(list(s)), V(list(p)),
                V(rng.random() < 0.3), V(rng.random() < 0.5)], {}

    @reg("F.adaptive_avg_pool2d")
    def _():
        return [T(rng, f32, (1, 2, rng.randint(1, 7), rng.randint(1, 7))),
                V([rng.randint(1, 4), rng.randint(1, 4)])], {}

    @reg("F.batch_norm")
    def _():
        C = rng.randint(1, 3)
        shp = (rng.randint(2, 4), C, 2, 2)
        return [T(rng, f32, shp), T(rng, f32, (C,), grad=False),
                T(rng, f32, (C,), fill="int", grad=False), T(rng, f32, (C,)), T(rng, f32, (C,)),
                V(rng.random() < 0.6), V(0.1), V(1e-5)], {}

    @reg("F.log_softmax")
    def _():
        nd = rng.randint(1, 4)
        return [T(rng, f32, [rng.randint(1, 4) for _ in range(nd)]), V(rng.randint(-nd, nd - 1))], {}

    @reg("F.cross_entropy")
    def _():
        N, C = rng.randint(1, 4), rng.randint(1, 5)
        return [T(rng, f32, (N, C)), T(rng, "int64", (N,), fill="zeros", grad=False)], {}

    @reg("F.relu")
    def _():
        return [T(rng, f32, [rng.randint(0, 4) for _ in range(rng.randint(0, 4))])], {}

    @reg("F.hardtanh")
    def _():
        return [T(rng, f32, [rng.randint(1, 4), rng.randint(1, 4)]), V(-1.0), V(1.0)], {}

    @reg("F.dropout")
    def _():
        return [T(rng, f32, [rng.randint(1, 4), rng.randint(1, 4)]), V(rng.choice([0.0, 0.5, 1.0])),
                V(True)], {}

    @reg("F.pad")
    def _():
        return [T(rng, f32, [rng.randint(1, 4), rng.randint(1, 4)]),
                V([rng.randint(0, 2) for _ in range(rng.choice([2, 4]))])], {}

    return calls


# ---------------------------------------------------------------------------
# hostile replacements
def _hostile(rng, arg, huge):
    """A hostile replacement for one argument (often a near miss of `arg`)."""
    ints = EXTREME_INTS + (HUGE_INTS if huge else [])
    if isinstance(arg, dict) and ("a" in arg or "t" in arg):
        key = "a" if "a" in arg else "t"
        spec = list(arg[key])
        spec[4] = rng.getrandbits(32)
        m = rng.choice(["dtype", "shape", "ndim", "layout", "fill", "notarray", "empty"])
        if m == "dtype":
            spec[0] = rng.choice(DTYPES_BAD)
        elif m == "shape" and spec[1]:
            i = rng.randrange(len(spec[1]))
            spec[1] = list(spec[1])
            spec[1][i] = max(0, spec[1][i] + rng.choice([-1, 1, 2, 5]))
        elif m == "ndim":
            spec[1] = list(spec[1])[:rng.randint(0, max(0, len(spec[1]) - 1))] if rng.random() < 0.5 \
                else list(spec[1]) + [rng.randint(1, 3)]
        elif m == "layout":
            spec[2] = rng.choice(LAYOUTS)
        elif m == "fill":
            spec[3] = rng.choice(FILLS)
        elif m == "empty":
            spec[1] = [0 if rng.random() < 0.5 else s for s in spec[1]] or [0]
        else:
            return rng.choice([V(None), V(1.5), V("x"), V([1, 2]), {"x": "obj"}, {"x": "nan"},
                               V([[1.0, 2.0], [3.0, 4.0]])])
        return {key: spec}
    if isinstance(arg, dict) and "v" in arg:
        v = arg["v"]
        if isinstance(v, bool):
            return rng.choice([V(2), V("yes"), V(None), {"x": "obj"}, {"x": "nan"}])
        if isinstance(v, int):
            return rng.choice([V(rng.choice(ints)), V(-v), V(float(v)), V(None), V("1"),
                               {"x": "inf"}])
        if isinstance(v, float):
            return rng.choice([{"x": "nan"}, {"x": "inf"}, {"x": "-inf"}, V(-v), V(0.0), V(1e300),
                               V(-1.0), V(2 ** 70), V("0.1")])
        if isinstance(v, str):
            return rng.choice([V(""), V("nope"), V(v.upper()), V(v * 50), V(None), V(1),
                               {"x": "bytes"}])
        if isinstance(v, list):
            w = list(v)
            m = rng.choice(["len", "int", "neg", "type", "nested"])
            if m == "len":
                w = w[:-1] if w and rng.random() < 0.5 else w + [1]
            elif m == "int" and w:
                w[rng.randrange(len(w))] = rng.choice(ints)
            elif m == "neg" and w:
                w[rng.randrange(len(w))] = -1
            elif m == "type" and w:
                w[rng.randrange(len(w))] = rng.choice([1.5, "a", None, [1]])
            else:
                return V([w])
            return V(w)
        if v is None:
            return rng.choice([V(0), V("x"), V(1.5)])
    return rng.choice([V(None), V(rng.choice(ints)), V("?"), {"x": "obj"}])


def make_call(rng, backends, huge=True, names=None):
    """A random call spec: valid for a small configuration, then 0-3 args hostile."""
    calls = _calls(rng, backends)
    name = rng.choice(sorted(names or calls))
    args, _ = calls[name]()
    ctx = {}
    if name.startswith("F."):
        ctx = {"backend": _backend(rng, backends),
               "precision": rng.choice(["fp32", "fp32", "bf16", "fp16", "int8", "int8-mixed"])}
    k = rng.choice([0, 1, 1, 1, 2, 3])
    mutated = sorted(rng.sample(range(len(args)), min(k, len(args))))
    for i in mutated:
        args[i] = _hostile(rng, args[i], huge)
    return {"fn": name, "args": args, "ctx": ctx, "mutated": mutated}


def clean_exceptions():
    from edgetrain.errors import EdgetrainError
    return (EdgetrainError, ValueError, TypeError, IndexError, NotImplementedError,
            OverflowError, MemoryError)


def run_call(spec):
    """Executes a call spec; returns what the call returned."""
    import edgetrain as et
    from edgetrain import _C
    import edgetrain.nn.functional as F
    args = [build(a) for a in spec["args"]]
    name = spec["fn"]
    if name == "queue.submit_matmul":
        q = _C.Queue(args[0])
        try:
            return q.wait(q.submit_matmul(*args[1:]))
        finally:
            q.close()
    mod, fn = name.split(".", 1)
    f = getattr(_C if mod == "_C" else F, fn)
    if mod == "_C":
        return f(*args)
    ctx = spec.get("ctx", {})
    with et.backend(ctx.get("backend", "ref")), et.precision(ctx.get("precision", "fp32")):
        out = f(*args)
        first = out[0] if isinstance(out, tuple) else out
        if isinstance(first, et.Tensor) and first.requires_grad:
            first.sum().backward()
    return out
