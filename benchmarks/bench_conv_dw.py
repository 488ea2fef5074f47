"""A/B timing of conv2d's weight-gradient pass: conv vs gemm formulation (ET_CONV_DW),
alternating turns in one process, after one warm-up call of each; medians of wall and
process CPU time per shape, and the resnet18 step total weighted by each shape's count.
From the repo root (PYTHONPATH=. so that this checkout's extension is the one imported):
  PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/bench_conv_dw.py [reps] [resnet18|grouped] \
      [backends, default onednn,blas] [modes, default conv,gemm] [precisions, default fp32]
precisions: comma list of fp32, bf16, fp16, int8. fp32 times the fp32 op
(_C.conv2d_backward_weight); the others the low-precision pass
(_C.conv2d_backward_lowp with only grad_weight wanted: the f32 -> bf16/fp16 conversion of x
and dy is inside the timed call, in both modes; int8 ignores ET_CONV_DW, conv only).
BENCH_ONLY=<substring> keeps the shapes whose name contains it."""
import os, sys, time, statistics
import numpy as np
from edgetrain import _C

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
which = sys.argv[2] if len(sys.argv) > 2 else "resnet18"
backends = (sys.argv[3] if len(sys.argv) > 3 else "onednn,blas").split(",")
modes = (sys.argv[4] if len(sys.argv) > 4 else "conv,gemm").split(",")
precs = (sys.argv[5] if len(sys.argv) > 5 else "fp32").split(",")
B = 32
# (name, count per resnet18 step, C, OC, H, k, stride, pad, groups)
R18 = [("conv1 3->64 7x7 s2 @224", 1, 3, 64, 224, 7, 2, 3, 1),
       ("64->64 3x3 @56", 4, 64, 64, 56, 3, 1, 1, 1),
       ("64->128 3x3 s2 @56", 1, 64, 128, 56, 3, 2, 1, 1),
       ("ds 64->128 1x1 s2 @56", 1, 64, 128, 56, 1, 2, 0, 1),
       ("128->128 3x3 @28", 3, 128, 128, 28, 3, 1, 1, 1),
       ("128->256 3x3 s2 @28", 1, 128, 256, 28, 3, 2, 1, 1),
       ("ds 128->256 1x1 s2 @28", 1, 128, 256, 28, 1, 2, 0, 1),
       ("256->256 3x3 @14", 3, 256, 256, 14, 3, 1, 1, 1),
       ("256->512 3x3 s2 @14", 1, 256, 512, 14, 3, 2, 1, 1),
       ("ds 256->512 1x1 s2 @14", 1, 256, 512, 14, 1, 2, 0, 1),
       ("512->512 3x3 @7", 3, 512, 512, 7, 3, 1, 1, 1)]
GROUPED = [("dw 128 3x3 @56 G=128", 1, 128, 128, 56, 3, 1, 1, 128),
           ("dw 256 3x3 s2 @28 G=256", 1, 256, 256, 28, 3, 2, 1, 256),
           ("dw 512 3x3 @7 G=512", 1, 512, 512, 7, 3, 1, 1, 512),
           ("g2 128->128 3x3 @28", 1, 128, 128, 28, 3, 1, 1, 2),
           ("g8 256->256 3x3 @14", 1, 256, 256, 14, 3, 1, 1, 8),
           ("g32 256->256 3x3 @14", 1, 256, 256, 14, 3, 1, 1, 32)]
shapes = {"resnet18": R18, "grouped": GROUPED}[which]
only = os.environ.get("BENCH_ONLY")
if only:
    shapes = [sh for sh in shapes if only in sh[0]]
rng = np.random.default_rng(0)
print(f"load average at start: {os.getloadavg()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
      f"budget={os.environ.get('ET_CONV_DW_BUDGET', 'default')}", flush=True)
tot = {}
for name, cnt, C, OC, H, k, s, p, g in shapes:
    x = rng.standard_normal((B, C, H, H), dtype=np.float32)
    OH = (H + 2 * p - k) // s + 1
    dy = rng.standard_normal((B, OC, OH, OH), dtype=np.float32)
    ws = (OC, C // g, k, k)
    w = np.zeros(ws, np.float32)   # lowp: only its shape is read when dx is not wanted
    flops = 2 * B * OC * OH * OH * (C // g) * k * k
    def dw_pass(be, prec):
        if prec == "fp32":
            return _C.conv2d_backward_weight(dy, x, ws, (s, s), (p, p), (1, 1), g, backend=be)
        return _C.conv2d_backward_lowp(dy, x, w, (s, s), (p, p), (1, 1), g, False, True, False,
                                       prec, prec, 0, 0, be)[1]
    for be, prec in ((b, q) for q in precs for b in backends):
        wall = {m: [] for m in modes}
        cpu = {m: [] for m in modes}
        for m in modes:  # warm-up (primitive creation, page faults)
            os.environ["ET_CONV_DW"] = m
            dw_pass(be, prec)
        for _ in range(reps):
            for m in modes:
                os.environ["ET_CONV_DW"] = m
                c0, t0 = time.process_time(), time.perf_counter()
                dw_pass(be, prec)
                wall[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
        med = {m: statistics.median(wall[m]) for m in modes}
        cmed = {m: statistics.median(cpu[m]) for m in modes}
        for m in modes:
            tot[(be, prec, m)] = tot.get((be, prec, m), 0.0) + cnt * med[m]
            tot[(be, prec, m, "cpu")] = tot.get((be, prec, m, "cpu"), 0.0) + cnt * cmed[m]
        cols = "  ".join(f"{m} {1e3 * med[m]:8.2f} ms ({flops / med[m] / 1e9:6.1f} GF/s, cpu {1e3 * cmed[m]:8.2f})"
                         for m in modes)
        ratio = med[modes[0]] / med[modes[-1]] if len(modes) > 1 else 1.0
        print(f"{name:26s} x{cnt} {be:6s} {prec:4s} {cols}  {modes[0]}/{modes[-1]} {ratio:5.2f}", flush=True)
print("total per step (count-weighted medians):")
for prec in precs:
    for be in backends:
        print(f"  {be} {prec}: " + "  ".join(f"{m} {tot[(be, prec, m)]:.3f} s "
                                            f"(cpu {tot[(be, prec, m, 'cpu')]:.3f} s)"
                                            for m in modes))
print(f"load average at end: {os.getloadavg()}")
