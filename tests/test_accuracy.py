"""int8 training accuracy vs fp32 (issue 3): LeNet on the 10k MNIST subset.

The same run twice -- same initial weights, same batches in the same order, same
recipe -- once at the default fp32 policy and once with `et.precision("int8")`
in force (int8 forward, backward-data and backward-weight products; fp32 master
weights, BatchNorm and optimizer state). Each model is evaluated in the
precision it was trained in (the int8 model's test forward runs int8 products).

Recipe: 8,000 train / 2,000 test digits (../shared/data/mnist10k), inputs
normalised with MNIST's mean/std, LeNet+BN, SGD momentum 0.9, batch 64, lr 0.05
decayed linearly to 0 over the 250 steps of 2 epochs, seed 0, default backend
(onednn where built; a backend without an int8 primitive falls back to `ref`
with a RuntimeWarning, which this test ignores).

Thresholds are the issue's: int8 test accuracy >= 0.95, and at most 0.5 pp below
fp32 (fp32_acc - int8_acc <= 0.005; int8 above fp32 passes). One test digit is
0.05 pp.

Measured (onednn, 2 cores, at commit e1d8336: int8 conv on oneDNN, 7-bit
activations/gradients): seed 0: fp32 0.9760, int8 0.9735 (+0.25 pp). Over seeds
0-11 fp32 - int8 ranged from -0.25 to +0.30 pp (fp32 0.964-0.976); with the
earlier 8-bit kernels, -0.30 to +0.35 pp (seed 0: +0.15 pp). The margin to
0.5 pp is thus about the seed-to-seed spread. Why the lr decay: at a constant
lr 0.05 the final-epoch accuracy itself wanders by +-0.7 pp from one seed to
the next (fp32 - int8 from -0.80 to +0.45 pp over seeds 0-7), which would make
a 0.5 pp comparison a coin toss rather than a measurement.
Runtime about 10 s (fp32 ~4.5 s, int8 ~3.5 s of training) on this 2-core machine.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import edgetrain as et
from edgetrain.data import DataLoader, load_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SEED = 0
EPOCHS = 2
BATCH = 64
LR = 0.05
MIN_INT8_ACC = 0.95
MAX_DROP = 0.005          # fp32_acc - int8_acc, as a fraction (0.5 pp)
# onednn is the default backend where built (et.backend's own order otherwise)
BACKEND = "onednn" if "onednn" in et.backends() else et.get_backend()


@pytest.fixture(autouse=True)
def _restore_policy():
    prev = et.get_precision()
    et.set_precision("fp32")
    yield
    et.set_precision(prev)


@pytest.fixture(scope="module")
def mnist10k(mnist10k_dir):
    def norm(a):  # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28)
        return np.ascontiguousarray(((a.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None])

    x, y = load_mnist(mnist10k_dir, train=True)
    xt, yt = load_mnist(mnist10k_dir, train=False)
    assert (len(x), len(xt)) == (8000, 2000), (len(x), len(xt))
    return norm(x), y.astype(np.int64), norm(xt), yt.astype(np.int64)


def _train_and_eval(data, init_state, policy):
    """One training run at `policy`; returns (test accuracy, per-epoch mean train loss, seconds)."""
    x, y, xt, yt = data
    # Reseed: int8 backward passes draw their stochastic-rounding seeds from
    # edgetrain's generator; the batch order comes from the loader's own seed.
    et.manual_seed(SEED)
    model = et.models.lenet()
    model.load_state_dict(init_state)
    opt = et.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    crit = et.nn.CrossEntropyLoss()
    loader = DataLoader((x, y), batch_size=BATCH, shuffle=True, seed=SEED)
    total = EPOCHS * len(loader)
    epoch_losses = []
    t0 = time.perf_counter()
    with et.backend(BACKEND), et.precision(policy):
        for epoch in range(EPOCHS):
            model.train()
            losses = []
            for i, (bx, by) in enumerate(loader):
                step = epoch * len(loader) + i
                for g in opt.param_groups:          # linear decay to 0 over the run
                    g["lr"] = LR * (1.0 - step / total)
                opt.zero_grad()
                loss = crit(model(bx), by)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            epoch_losses.append(float(np.mean(losses)))
        # evaluation in the training precision (still inside et.precision(policy))
        model.eval()
        correct = 0
        with et.no_grad():
            for i in range(0, len(xt), 1000):
                logits = np.asarray(model(et.from_numpy(xt[i:i + 1000])).numpy())   # (1000, 10)
                correct += int((logits.argmax(1) == yt[i:i + 1000]).sum())
    return correct / len(xt), epoch_losses, time.perf_counter() - t0


@pytest.mark.filterwarnings("ignore:backend .* has no int8:RuntimeWarning")   # onednn -> ref
def test_lenet_mnist10k_int8_accuracy_matches_fp32(mnist10k):
    et.manual_seed(SEED)
    init_state = {k: np.array(v, copy=True) for k, v in et.models.lenet().state_dict().items()}

    fp32_acc, fp32_losses, fp32_s = _train_and_eval(mnist10k, init_state, "fp32")
    int8_acc, int8_losses, int8_s = _train_and_eval(mnist10k, init_state, "int8")
    report = (f"backend {BACKEND}: fp32 acc {fp32_acc:.4f} (epoch losses "
              f"{np.round(fp32_losses, 4).tolist()}, {fp32_s:.1f} s); int8 acc {int8_acc:.4f} "
              f"(epoch losses {np.round(int8_losses, 4).tolist()}, {int8_s:.1f} s); "
              f"fp32 - int8 = {100 * (fp32_acc - int8_acc):+.2f} pp")
    print(report)
    # sanity of the reference itself: a broken fp32 run would make the comparison vacuous
    assert fp32_acc >= MIN_INT8_ACC, "fp32 reference below target: " + report
    assert int8_acc >= MIN_INT8_ACC, f"int8 accuracy below {MIN_INT8_ACC}: " + report
    # 1e-9: the accuracies are multiples of 1/2000, their difference is not exact in floats
    assert fp32_acc - int8_acc <= MAX_DROP + 1e-9, (
        f"int8 more than {100 * MAX_DROP:.1f} pp below fp32: " + report)
