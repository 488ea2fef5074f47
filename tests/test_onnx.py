"""edgetrain.onnx.export vs onnxruntime.

The exported graph, run by onnxruntime (CPUExecutionProvider, 2 threads), must
give edgetrain's fp32 eval-mode logits: max |onnx - edgetrain| <= 1e-4 (ATOL),
at a batch size other than the example's (the batch axis is dynamic). BatchNorm
layers get real running statistics first (one train-mode forward with
momentum 1) and a random affine, so BatchNormalization is really tested.
"""
from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import edgetrain as et
from edgetrain import nn

ATOL = 1e-4


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx", reason="exporting needs the optional 'onnx' package")


@pytest.fixture(scope="module")
def ort(onnx):                  # every test that runs a graph also exports one
    return pytest.importorskip("onnxruntime",
                               reason="onnxruntime runs the exported graphs (test dependency)")


def _run_ort(ort, path, x, input_name="input"):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: x})[0]


def _eval_logits(model, x):
    """edgetrain's fp32 eval-mode forward; the model's training flag is kept."""
    was = model.training
    model.eval()
    try:
        with et.no_grad(), et.precision("fp32"):
            return model(et.tensor(x)).numpy().copy()
    finally:
        model.train(was)


def _calibrate_bn(model, x, rng):
    """Non-trivial BatchNorm state: a random affine, then running stats = the
    statistics of one batch (a train-mode forward with momentum 1); the model is
    left in train mode (export must use eval semantics anyway).

    The last BN of each residual branch gets 5x smaller gammas, as trained
    ResNets have (torchvision's zero_init_residual starts them at 0): with unit
    gammas a random ResNet-50's residual stream grows through its 16 blocks
    until fp32 rounding alone moves the logits by ~1e-4 (measured against a
    float64 torch forward: 3.5e-4 for edgetrain, 1.6e-4 for onnxruntime), which
    would hide what this test looks for."""
    branch_ends = {id(b.bn3 if isinstance(b, et.models.Bottleneck) else b.bn2)
                   for b in model.modules()
                   if isinstance(b, (et.models.BasicBlock, et.models.Bottleneck))}
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
        if m.weight is not None:     # before the forward, so the statistics see it
            k = 0.2 if id(m) in branch_ends else 1.0
            m.weight._data[...] = k * rng.uniform(0.5, 1.5, m.num_features)
            m.bias._data[...] = k * rng.normal(0.0, 0.2, m.num_features)
    model.train()
    with et.no_grad():
        model(et.tensor(x))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    for m in bns:   # the statistics really moved away from the (0, 1) init; the
        # mean relative to the batch's spread: a first BN (MobileNetV2's features.0.1)
        # sees the zero-mean random input through one conv, a batch mean ~1e-3
        assert np.abs(m.running_mean._data).max() > 1e-3 * np.sqrt(m.running_var._data).max()
        assert np.abs(m.running_var._data - 1).max() > 1e-3


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


# name -> (model factory, example shape); the checked batch is 3, the example's 2
MODELS = {
    "lenet": (lambda: et.models.lenet(), (2, 1, 28, 28)),
    "resnet18": (lambda: et.models.resnet18(num_classes=10, in_channels=1, small_input=True),
                 (2, 1, 28, 28)),
    "resnet50": (lambda: et.models.resnet50(num_classes=10), (2, 3, 32, 32)),
    # the CLI's build_model("mobilenet_v2", 10): full width, 1 channel, stride-1 stem
    "mobilenet_v2": (lambda: et.models.mobilenet_v2(num_classes=10, in_channels=1,
                                                    small_input=True), (2, 1, 28, 28)),
    "mlp": (_mlp, (2, 3, 4)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_export_matches_onnxruntime(name, tmp_path, onnx, ort):
    et.manual_seed(0)
    rng = np.random.default_rng(0)
    factory, shape = MODELS[name]
    model = factory()
    _calibrate_bn(model, rng.standard_normal((8,) + shape[1:]).astype(np.float32), rng)
    assert model.training
    path = tmp_path / f"{name}.onnx"

    proto = et.onnx.export(model, et.randn(*shape), path)

    assert model.training and all(m.training for m in model.modules())   # flags restored
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    assert loaded == proto
    in_dims = loaded.graph.input[0].type.tensor_type.shape.dim
    out_dims = loaded.graph.output[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
    assert [d.dim_value for d in in_dims[1:]] == list(shape[1:])
    x = rng.standard_normal((3,) + shape[1:]).astype(np.float32)   # not the example's batch
    got = _run_ort(ort, path, x)
    want = _eval_logits(model, x)
    assert got.shape == want.shape == (3, want.shape[1])
    diff = float(np.abs(got - want).max())
    print(f"{name}: max |onnxruntime - edgetrain| = {diff:.3g} (max |logit| "
          f"{np.abs(want).max():.3g})")
    assert diff <= ATOL, f"{name}: max abs logit diff {diff} > {ATOL}"


def test_int8_model_exports_fp32_weights(tmp_path, ort):
    et.manual_seed(1)
    rng = np.random.default_rng(1)
    model = et.models.lenet()
    _calibrate_bn(model, rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    want = _eval_logits(model, x)
    model.set_precision("int8")
    model.eval()
    with et.no_grad():
        int8_before = model(et.tensor(x)).numpy().copy()
    # the int8 forward really differs, so matching fp32 below means fp32 weights
    assert np.abs(int8_before - want).max() > 10 * ATOL

    path = tmp_path / "lenet_int8.onnx"
    et.onnx.export(model, x[:2], path)
    got = _run_ort(ort, path, x)
    diff = float(np.abs(got - want).max())
    print(f"lenet int8 policy: max |onnxruntime - fp32 edgetrain| = {diff:.3g}")
    assert diff <= ATOL
    with et.no_grad():                       # the model's int8 policy is restored
        np.testing.assert_array_equal(model(et.tensor(x)).numpy(), int8_before)


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2


# Layers beyond the models': ceil-mode pooling whose last window sticks out of
# the padded input (written as explicit end padding) or starts in the right
# padding (dropped, as PyTorch does), AvgPool divisors, "same" padding with an
# even kernel, groups, dilation, non-global adaptive pooling, Flatten/Unflatten
# reshapes, Linear on a 3-D input, Softmax / LogSoftmax, affine-free BN.
# name -> (model factory, input H = W); inputs (N, 2, H, W)
LAYER_CASES = {
    "maxpool-ceil": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), 6),
    "maxpool-ceil-drop": (lambda: nn.MaxPool2d(2, 2, 1, ceil_mode=True), 5),
    "maxpool-ceil-dilation": (lambda: nn.MaxPool2d(2, 2, 0, dilation=2, ceil_mode=True), 6),
    "avgpool-ceil-countpad": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), 6),
    "avgpool-ceil-nocountpad": (
        lambda: nn.AvgPool2d(3, 3, 1, ceil_mode=True, count_include_pad=False), 6),
    "avgpool-ceil-nopad": (lambda: nn.AvgPool2d(3, 2, 0, ceil_mode=True), 6),
    "avgpool-floor": (lambda: nn.AvgPool2d(3, 2, 1), 6),
    "conv-mix": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 4, padding="same"), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.Conv2d(6, 6, 3, 1, "valid"),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5), nn.Softmax(dim=1)), 6),
    "reshapes": (lambda: nn.Sequential(
        nn.Flatten(2), nn.Linear(36, 7), nn.LogSoftmax(dim=-1), nn.Identity(),
        nn.Unflatten(2, (7, 1)), nn.Flatten()), 6),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layers_match_onnxruntime(case, tmp_path, ort):
    et.manual_seed(2)
    rng = np.random.default_rng(2)
    factory, hw = LAYER_CASES[case]
    model = factory()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        _calibrate_bn(model, rng.standard_normal((4, 2, hw, hw)).astype(np.float32), rng)
    path = tmp_path / f"{case}.onnx"
    et.onnx.export(model, rng.standard_normal((1, 2, hw, hw)).astype(np.float32), path)
    x = rng.standard_normal((3, 2, hw, hw)).astype(np.float32)
    got, want = _run_ort(ort, path, x), _eval_logits(model, x)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= ATOL


def test_names_and_static_batch(tmp_path, onnx, ort):
    model = _mlp()
    path = tmp_path / "mlp.onnx"
    et.onnx.export(model, np.zeros((4, 3, 4), np.float32), str(path), input_names=["x"],
                   output_names=("scores",), dynamic_batch=False, opset_version=13)
    m = onnx.load(str(path))
    assert m.opset_import[0].version == 13
    assert [i.name for i in m.graph.input] == ["x"]
    assert [o.name for o in m.graph.output] == ["scores"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    x = np.random.default_rng(3).standard_normal((4, 3, 4)).astype(np.float32)
    assert np.abs(_run_ort(ort, path, x, "x") - _eval_logits(model, x)).max() <= ATOL


def test_model_that_merges_the_batch(tmp_path, ort):
    model = nn.Sequential(nn.Flatten(0, 1))             # (N, 3, 4) -> (N * 3, 4)
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"output shape \(6, 4\) has no batch axis 0"):
        et.onnx.export(model, x, tmp_path / "m.onnx")
    et.onnx.export(model, x, tmp_path / "m.onnx", dynamic_batch=False)
    np.testing.assert_array_equal(_run_ort(ort, tmp_path / "m.onnx", x), x.reshape(6, 4))


# -- errors: clear exceptions, and no file (or the old file untouched) -----------------
def _assert_fails(tmp_path, exc, match, model, example):
    path = tmp_path / "out.onnx"
    with pytest.raises(exc, match=match):
        et.onnx.export(model, example, path)
    assert not path.exists()
    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous")
    with pytest.raises(exc, match=match):
        et.onnx.export(model, example, old)
    assert old.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]   # no temp files left
    assert all(m.training for m in model.modules())     # flags restored after a failure


def test_unsupported_module_is_named(tmp_path, onnx):
    model = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Linear(4, 4), _Scale())))
    _assert_fails(tmp_path, NotImplementedError, r"module 'body\.1' \(_Scale\)", model,
                  np.zeros((2, 4), np.float32))


def test_subclass_with_own_forward_is_unsupported(tmp_path, onnx):
    class Twice(nn.Sequential):
        def forward(self, x):
            return super().forward(super().forward(x))
    _assert_fails(tmp_path, et.errors.UnsupportedError, r"the model itself \(Twice\)",
                  Twice(nn.Linear(4, 4)), np.zeros((2, 4), np.float32))


def test_batchnorm_without_running_stats_is_unsupported(tmp_path, onnx):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    _assert_fails(tmp_path, NotImplementedError, r"'1' \(BatchNorm1d\).*track_running_stats",
                  model, np.zeros((2, 4), np.float32))


def test_register_converter_and_checker_runs_before_writing(tmp_path, ort):
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    class Broken(Scale):
        pass

    @et.onnx.register_converter(Scale)
    def _scale(ctx, m, x, path):
        two = ctx.const(np.asarray(2, np.float32), path, "two")
        return ctx.op("Mul", [x, two], m(x.tensor), path)

    @et.onnx.register_converter(Broken)
    def _broken(ctx, m, x, path):        # not an ONNX op: onnx.checker must refuse it
        return ctx.op("NoSuchOp", [x], m(x.tensor), path)

    try:
        model = nn.Sequential(nn.Linear(4, 3), Scale())
        x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
        et.onnx.export(model, x, tmp_path / "scale.onnx")
        got = _run_ort(ort, tmp_path / "scale.onnx", x)
        assert np.abs(got - _eval_logits(model, x)).max() <= ATOL
        (tmp_path / "scale.onnx").unlink()
        _assert_fails(tmp_path, Exception, "NoSuchOp", nn.Sequential(Broken()), x)
    finally:
        et.onnx._CONVERTERS.pop(Scale, None)
        et.onnx._CONVERTERS.pop(Broken, None)


def _re_shape(shape):
    return r"\(" + r", ".join(map(str, shape)) + r"\)"


@pytest.mark.parametrize("shape", [(2, 1, 20, 20), (2, 3, 28, 28), (1, 28, 28, 1)])
def test_bad_example_shape(shape, tmp_path, onnx):
    _assert_fails(tmp_path, ValueError, r"example input of shape " + _re_shape(shape),
                  et.models.lenet(), et.zeros(*shape))


def test_unbatched_example(tmp_path, onnx):
    _assert_fails(tmp_path, ValueError, r"must be batched.*got shape \(4,\)", _mlp(),
                  np.zeros(4, np.float32))


def test_bad_arguments(tmp_path, onnx):
    x = np.zeros((2, 3, 4), np.float32)
    for kw, exc in (({"opset_version": 11}, ValueError), ({"input_names": ("a", "b")}, ValueError),
                    ({"output_names": ("input",)}, ValueError)):
        with pytest.raises(exc):
            et.onnx.export(_mlp(), x, tmp_path / "m.onnx", **kw)
    with pytest.raises(TypeError, match="edgetrain.nn.Module"):
        et.onnx.export(lambda t: t, x, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="example input"):
        et.onnx.export(_mlp(), [[1.0]], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)      # makes `import onnx` fail
    with pytest.raises(ImportError, match=r"needs the 'onnx' package \(pip install onnx\)"):
        et.onnx.export(_mlp(), np.zeros((2, 3, 4), np.float32), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_import_edgetrain_does_not_import_onnx():
    code = "import sys, edgetrain; assert 'onnx' not in sys.modules; edgetrain.onnx.export"
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
