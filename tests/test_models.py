"""edgetrain.models vs reference models written in plain torch.nn (torchvision's layout).

Tolerances: state_dict keys and shapes must match exactly; eval-mode logits after
loading the torch weights: max |et - torch| / max |torch| <= 1e-4, on every backend.
"""
from __future__ import annotations

import numpy as np
import pytest

import edgetrain as et

torch = pytest.importorskip("torch", reason="torch is the reference for model parity")
from edgetrain.models.torch_reference import TorchLeNet, torch_resnet, torch_state_numpy  # noqa: E402

RTOL_LOGITS = 1e-4


def _shapes(sd):
    return {k: tuple(np.asarray(v).shape) for k, v in sd.items()}


def _check_keys(et_model, torch_model):
    esd = et_model.state_dict()
    tsd = torch_state_numpy(torch_model)
    assert list(esd) == list(tsd), (
        f"missing {sorted(set(tsd) - set(esd))}, unexpected {sorted(set(esd) - set(tsd))}")
    assert _shapes(esd) == _shapes(tsd)
    return esd, tsd


@pytest.mark.parametrize("kw", [{}, {"num_classes": 7, "in_channels": 3}])
def test_lenet_keys(kw):
    _check_keys(et.models.lenet(**kw), TorchLeNet(**kw))
    assert isinstance(et.models.lenet(), et.models.LeNet)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("small_input", [False, True])
def test_resnet_keys(name, small_input):
    kw = dict(num_classes=10, in_channels=3, small_input=small_input)
    m = getattr(et.models, name)(**kw)
    _check_keys(m, torch_resnet(name, **kw))
    assert isinstance(m, et.models.ResNet)
    assert m.state_dict()["conv1.weight"].shape == ((64, 3, 3, 3) if small_input else (64, 3, 7, 7))


def test_resnet_in_channels():
    kw = dict(num_classes=5, in_channels=1, small_input=True)
    _check_keys(et.models.resnet18(**kw), torch_resnet("resnet18", **kw))


def test_resnet_init_statistics():
    """torchvision's init: conv ~ N(0, 2/fan_out), BN 1/0, reproducible under manual_seed."""
    et.manual_seed(0)
    sd = et.models.resnet50(num_classes=10).state_dict()
    w = np.asarray(sd["layer3.0.conv2.weight"])  # (256, 256, 3, 3): fan_out 2304
    assert abs(w.mean()) < 3e-3
    assert abs(w.std() / np.sqrt(2.0 / (256 * 9)) - 1) < 0.01
    w1 = np.asarray(sd["conv1.weight"])           # (64, 3, 7, 7): fan_out 3136
    assert abs(w1.std() / np.sqrt(2.0 / 3136) - 1) < 0.05
    np.testing.assert_array_equal(sd["layer4.2.bn3.weight"], 1)
    np.testing.assert_array_equal(sd["layer4.2.bn3.bias"], 0)
    fc = np.asarray(sd["fc.weight"])               # Linear default: U(-1/sqrt(2048), 1/sqrt(2048))
    assert np.abs(fc).max() <= 1 / np.sqrt(2048) + 1e-7
    et.manual_seed(0)
    sd2 = et.models.resnet50(num_classes=10).state_dict()
    for k in sd:
        np.testing.assert_array_equal(sd[k], sd2[k], err_msg=k)


def _forward_parity(et_model, torch_model, x, backend):
    torch_model.eval()
    et_model.load_state_dict(torch_state_numpy(torch_model))
    et_model.eval()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    with et.backend(backend), et.no_grad():
        got = np.asarray(et_model(et.tensor(x)).numpy())
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= RTOL_LOGITS, f"{backend}: max rel err {err:.3g} > {RTOL_LOGITS}"


def _randomize_bn_stats(torch_model, seed):
    """Non-trivial running statistics so eval-mode BN is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("backend", et.backends())
def test_lenet_forward_matches_torch(backend):
    torch.manual_seed(0)
    tm = TorchLeNet()
    _randomize_bn_stats(tm, 1)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    _forward_parity(et.models.lenet(), tm, x, backend)


@pytest.mark.parametrize("backend", et.backends())
def test_resnet18_small_forward_matches_torch(backend):
    torch.manual_seed(0)
    tm = torch_resnet("resnet18", num_classes=10, small_input=True)
    _randomize_bn_stats(tm, 2)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _forward_parity(et.models.resnet18(num_classes=10, small_input=True), tm, x, backend)


def test_resnet18_imagenet_stem_forward_matches_torch():
    """Default stem (7x7 s2 conv + max-pool) on a 64x64 input, default backend."""
    torch.manual_seed(0)
    tm = torch_resnet("resnet18", num_classes=10)
    _randomize_bn_stats(tm, 3)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    _forward_parity(et.models.resnet18(num_classes=10), tm, x, et.backends()[-1])
