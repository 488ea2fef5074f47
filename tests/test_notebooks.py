"""The parity notebooks (notebooks/*.ipynb), executed headless, and their results.

Each notebook runs edgetrain and PyTorch on the same inputs and ends with a dict
RESULTS of the values it computed. Here every notebook runs in a fresh "python3"
kernel (nbclient) with notebooks/ as its working directory, on an in-memory copy
(the committed file is never written), with one extra cell appended that prints
RESULTS as JSON; the values are then checked against the tolerances the
notebook states in its first cell, which are those of the test suite:

- per_layer_parity: fp32 per-layer relative error <= 1e-4 (test_layers_parity.py);
  low-precision cosine vs torch fp32 >= 0.9999 (bf16, fp16) and >= 0.995 (int8,
  int8-mixed) per layer (test_lowp_ops.py, test_precision.py; issue 3, section 6).
- mnist_parity: LeNet, one epoch; fp32 per-step loss within 1e-3 of torch over the
  first 20 steps (test_training_parity.py), then, over the chaotic rest of the
  epoch, as close to torch's float64 run as torch fp32 is (x10, or 1e-3).
- resnet_parity: ResNet-18 logits / loss within 1e-4 (test_models.py), fp32
  gradients, 10 SGD steps within 5e-3 per-step loss (test_training_parity.py), and
  whole-network low-precision gradient floors.
The reasons for each tolerance are next to its assertion.

Also checked without running anything: the committed notebooks carry no outputs
and null execution counts, and equal what notebooks/make_notebooks.py writes.

Runtime, measured on this 2-core machine while it also ran a training benchmark:
per-layer ~10 s, MNIST ~45 s (mostly torch: 64 LeNet steps in fp32 and in
float64), ResNet-18 ~50 s; about 110 s in all.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

import edgetrain as et

REPO_ROOT = Path(__file__).resolve().parent.parent
NB_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ["per_layer_parity.ipynb", "mnist_parity.ipynb", "resnet_parity.ipynb"]
CELL_TIMEOUT = 600          # s per cell: generous, the machine is shared
MARK = "@@NOTEBOOK-RESULTS@@"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NB_DIR / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_notebook(name: str) -> dict:
    """Executes notebooks/<name> in memory and returns its RESULTS dict."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read the notebooks")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to execute the notebooks")
    pytest.importorskip("ipykernel", reason="the notebooks run in an ipykernel 'python3' kernel")
    pytest.importorskip("matplotlib", reason="the notebooks plot with matplotlib")
    pytest.importorskip("torch", reason="torch is the reference in every notebook")
    nb = nbformat.read(NB_DIR / name, as_version=4)
    # One more cell: RESULTS and the kernel's interpreter, as one JSON line.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json, sys as _sys\n"
        f"print({MARK!r} + _json.dumps({{'results': RESULTS, 'prefix': _sys.prefix}}))"))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    client.execute()        # a failing cell raises CellExecutionError with its traceback
    print(f"\n{name}: executed in {time.perf_counter() - t0:.1f} s")
    for out in nb.cells[-1].get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out["text"].splitlines():
                if line.startswith(MARK):
                    got = json.loads(line[len(MARK):])
                    # A 'python3' kernelspec of another interpreter (e.g. one in
                    # ~/.local/share/jupyter) would test another environment.
                    assert got["prefix"] == sys.prefix, (
                        f"the 'python3' kernel runs {got['prefix']}, not this environment "
                        f"{sys.prefix}: install ipykernel here or remove the other kernelspec")
                    return got["results"]
    raise AssertionError(f"{name}: no RESULTS printed; last cell outputs: {nb.cells[-1].get('outputs')}")


# ---------------------------------------------------------------------------
# committed files (plain JSON: no Jupyter package needed)

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = json.loads((NB_DIR / name).read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4, name
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{name}: no code cells"
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{name}: cells {dirty} carry outputs or execution counts (commit without outputs)"
    assert all("outputs" not in c and "execution_count" not in c
               for c in nb["cells"] if c["cell_type"] == "markdown"), name
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", name
    assert "RESULTS = {" in "".join(code[-1]["source"]), f"{name}: the last code cell must define RESULTS"


def test_committed_notebooks_match_generator():
    """The .ipynb files are what notebooks/make_notebooks.py writes (edit the
    generator, then run it)."""
    nbformat = pytest.importorskip("nbformat", reason="the generator writes with nbformat")
    gen = _load_generator()
    built = gen.notebooks()
    assert sorted(built) == sorted(NOTEBOOKS)
    for name, nb in built.items():
        on_disk = (NB_DIR / name).read_text(encoding="utf-8")
        assert on_disk == nbformat.writes(nb) + "\n", (
            f"{name} differs from notebooks/make_notebooks.py: run "
            f".venv/bin/python notebooks/make_notebooks.py")


# ---------------------------------------------------------------------------
# executed

def test_per_layer_parity():
    r = run_notebook("per_layer_parity.ipynb")
    # Every backend this build has was exercised, on enough layers to mean something.
    assert r["backends"] == ",".join(et.backends())
    assert r["n_fp32_runs"] == len(r["fp32_rel_err"]) >= 3 * len(et.backends()) + 5
    assert r["n_lowp_runs"] >= 4 * 3 * len(et.backends())
    # fp32: max |et - torch| / max |torch| <= 1e-4 for every output / gradient
    # (test_layers_parity.py: float32 summation-order noise is ~1e-6, a wrong
    # index or missing term O(1)).
    bad = {k: v for k, v in r["fp32_rel_err"].items() if not v <= 1e-4}
    assert not bad, f"fp32 relative error > 1e-4: {bad}"
    assert r["fp32_worst_rel_err"] <= 1e-4
    # Low precision, per layer: the cosine floors vs torch fp32 (worst of
    # y, dx, dW over backends): 8/11-bit mantissas with fp32 accumulation for
    # bf16/fp16; 7-bit activations and gradients with stochastic rounding for int8.
    floors = {"bf16": 0.9999, "fp16": 0.9999, "int8": 0.995, "int8-mixed": 0.995}
    bad = {k: v for k, v in r["lowp_cos"].items()
           if not v >= floors[k[k.rindex("[") + 1:-1]]}
    assert not bad, f"per-layer cosine below the floor: {bad}"
    for p, floor in floors.items():
        assert r["lowp_worst_cos"][p] >= floor, (p, r["lowp_worst_cos"][p])
    # The conv-BN-ReLU-pool-linear stack is not a per-layer measure: in int8 its
    # max-pool winners and ReLU signs change with the forward's ~2% error, which
    # reroutes part of the gradient (measured cosine 0.978-0.98; 0.995 with an
    # average pool). bf16/fp16 still meet the per-layer floor (measured 0.99998);
    # int8: >= 0.95, far above what a wrong gradient gives (near 0).
    stack_floor = {"bf16": 0.9999, "fp16": 0.9999, "int8": 0.95, "int8-mixed": 0.95}
    for p, floor in stack_floor.items():
        assert r["stack_cos"][p] >= floor, f"stack {p}: cosine {r['stack_cos'][p]:.6f} < {floor}"


def test_mnist_parity(mnist10k_dir, monkeypatch):
    # The kernel inherits the environment: the notebook reads the same data as conftest.
    monkeypatch.setenv("EDGETRAIN_MNIST10K", str(mnist10k_dir))
    r = run_notebook("mnist_parity.ipynb")
    assert r["steps"] == 64 and r["parity_steps"] == 20
    # Training made progress (loss 2.30 -> ~0.17 measured), so the comparison means something.
    assert r["loss_last"] < 0.5 * r["loss_first"], (r["loss_first"], r["loss_last"])
    # Precondition of the 1e-3 check: over the first 20 steps torch's own fp32 run
    # stays within 1e-4 of float64 (measured 2e-6): float32 rounding alone cannot
    # reach the tolerance there.
    assert r["torch_fp32_vs_fp64_loss_rel_first"] <= 1e-4, (
        "the recipe is chaotic within its first 20 steps: shorten the parity window")
    # First 20 steps: per-step loss |et - torch| / |torch| <= 1e-3, as
    # test_training_parity.py (lr 0.02: torch fp32 vs fp64 there <= 3e-7).
    assert r["fp32_loss_rel_first"] <= 1e-3, r["fp32_loss_rel_first"]
    # Whole epoch: chaotic (a tie or a ReLU sign resolved the other way grows
    # ~10x every few steps, in torch itself). edgetrain fp32 must stay as close to
    # the float64 trajectory as torch fp32 does, within 10x, or within 1e-3;
    # per-step loss and final state (per tensor max |diff| / max |ref|).
    lim = max(1e-3, 10 * r["torch_fp32_vs_fp64_loss_rel_epoch"])
    assert r["fp32_vs_fp64_loss_rel_epoch"] <= lim, (r["fp32_vs_fp64_loss_rel_epoch"], lim)
    lim = max(1e-3, 10 * r["torch_fp32_vs_fp64_state_rel"])
    assert r["fp32_vs_fp64_state_rel"] <= lim, (r["fp32_vs_fp64_state_rel"], lim)
    # Accuracy on the 2,000 test digits: every edgetrain run (fp32 and the
    # low-precision ones, evaluated in their own precision) >= 0.80 and within
    # 3 pp of torch fp32. Over seeds 0-7 of this recipe fp32 - int8 ranged from
    # -0.55 to +2.0 pp (one short epoch at constant lr is noisy); 3 pp = 1.5x that.
    acc = r["accuracy"]
    ref = acc["torch fp32"]
    for name in ("edgetrain fp32", "edgetrain int8", "edgetrain int8-mixed", "edgetrain bf16"):
        assert acc[name] >= 0.80, (name, acc[name])
        assert abs(acc[name] - ref) <= 0.03, f"{name}: accuracy {acc[name]:.4f} vs torch fp32 {ref:.4f}"


def test_resnet_parity():
    r = run_notebook("resnet_parity.ipynb")
    # One batch, fp32, train-mode BN: logits and loss max |et - torch| / max |torch|
    # <= 1e-4 (test_models.py's logits tolerance; measured ~2e-6 and ~1e-7).
    assert r["logits_rel_err"] <= 1e-4, r["logits_rel_err"]
    assert r["loss_rel_err"] <= 1e-4, r["loss_rel_err"]
    # fp32 gradients vs the float64 gradient: cosine >= 0.999 for every one of the
    # 62 parameter tensors. A float32 ReLU sign flip near 0 moves one channel's
    # gradient (and everything before it) by a few % of a tensor's max, so a
    # per-tensor max-relative bound would judge summation order; the cosine of
    # such a tensor stays > 0.9999. fp16's whole-network error is ~1e-2.
    assert r["n_params"] == 62
    assert r["grad_min_cos_vs_fp64"] >= 0.999, r["grad_min_cos_vs_fp64"]
    # 10 SGD steps at lr 2e-4 (test_training_parity.py: float32's own drift over
    # 20 steps 9e-5 at this lr): per-step loss rel <= 5e-3, and every conv/fc
    # weight's update within 0.1 of its norm (torch fp32 vs fp64 differs by up to
    # 4.6% on that measure).
    assert r["sgd_steps"] == 10
    assert r["sgd_loss_rel_max"] <= 5e-3, r["sgd_loss_rel_max"]
    assert r["sgd_update_rel_max"] <= 0.1, r["sgd_update_rel_max"]
    # Low precision over the whole network, against the float64 gradient. Not the
    # issue's per-layer floors: at initialisation with train-mode BatchNorm the
    # gradients are sensitive to the forward's activations, and the error
    # compounds over 17 convolutions (the int8 forward carries almost all of it:
    # with an fp32 forward the int8 backward passes keep ~0.99). Regression floors
    # below the measured values (median cos: bf16 0.96, fp16 0.994, int8 0.76,
    # int8 backward only 0.993; fc.weight: bf16 0.99997, int8 0.9988), far above
    # what a wrong gradient (sign, transpose, missing term) gives.
    lp = r["lowp"]
    floors = {"bf16": 0.9, "fp16": 0.98, "int8": 0.6, "int8-mixed": 0.6, "int8 bwd only": 0.95}
    for p, floor in floors.items():
        assert lp[p]["median"] >= floor, f"{p}: median conv/fc gradient cosine {lp[p]['median']:.4f} < {floor}"
    for p, floor in {"bf16": 0.999, "fp16": 0.999, "int8": 0.99, "int8-mixed": 0.99}.items():
        assert lp[p]["fc"] >= floor, f"{p}: fc.weight gradient cosine {lp[p]['fc']:.5f} < {floor}"
    # Loss (forward only): bf16 keeps 8 significant bits (2^-9 = 2e-3 per
    # rounding; measured 1e-4 to 1e-3), fp16 11 (measured 5e-5), int8 7-bit
    # activations (measured 1e-3 to 1.4e-2).
    for p, tol in {"bf16": 1e-2, "fp16": 1e-3, "int8": 5e-2, "int8-mixed": 5e-2}.items():
        assert lp[p]["loss_rel"] <= tol, f"{p}: loss relative difference {lp[p]['loss_rel']:.2e} > {tol}"
