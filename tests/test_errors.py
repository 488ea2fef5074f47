"""Bad input through the public API raises a Python exception with a clear
message (naming the op and the offending shapes/values); never a crash."""
import numpy as np
import pytest

import edgetrain as et
import edgetrain.nn.functional as F


def x4(*shape):
    return et.randn(*shape)


def test_exception_hierarchy():
    assert issubclass(et.ShapeError, ValueError) and issubclass(et.ShapeError, et.EdgetrainError)
    assert issubclass(et.DtypeError, TypeError)
    assert issubclass(et.UnsupportedError, NotImplementedError)
    assert issubclass(et.BackendError, RuntimeError) and issubclass(et.BackendError, et.EdgetrainError)
    assert et.errors.ShapeError is et._C.ShapeError      # C and Python share classes


def test_conv_wrong_ndim_and_channels():
    conv = et.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"conv2d.*4D.*\(3, 8\)"):
        conv(x4(3, 8))
    with pytest.raises(ValueError, match=r"conv2d: input channels 2.*\(1, 2, 8, 8\).*\(4, 3, 3, 3\)"):
        conv(x4(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"padded input size per channel: \(2 x 2\).*Kernel size can't be greater"):
        conv(x4(1, 3, 2, 2))
    with pytest.raises(ValueError, match="zero-sized"):
        conv(x4(1, 3, 0, 5))
    # unbatched (C, H, W) works like torch
    assert conv(x4(3, 5, 5)).shape == (4, 3, 3)


def test_conv_bad_hyperparameters():
    for kw in (dict(stride=0), dict(stride=-1), dict(padding=-1), dict(dilation=0)):
        with pytest.raises(ValueError, match="conv2d"):
            F.conv2d(x4(1, 3, 8, 8), et.randn(4, 3, 3, 3), **kw)
    with pytest.raises(ValueError, match="divisible by groups"):
        et.nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        et.nn.Conv2d(3, 4, 0)
    with pytest.raises(NotImplementedError, match="reflect"):
        et.nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="bias"):
        F.conv2d(x4(1, 3, 8, 8), et.randn(4, 3, 3, 3), et.randn(5))


def test_dtype_errors():
    with pytest.raises(TypeError, match="float32.*int64"):
        et.nn.Conv2d(3, 4, 3)(et.tensor(np.ones((1, 3, 5, 5)), dtype="int64"))
    with pytest.raises(TypeError, match="float64"):
        et.nn.Linear(3, 4)(et.from_numpy(np.ones((2, 3))))
    with pytest.raises(TypeError):
        et.tensor("abc")
    with pytest.raises(TypeError, match="dtype"):
        et.tensor([1.0], dtype="complex512")


def test_linear_shape_mismatch():
    with pytest.raises(ValueError, match=r"linear.*2x5 and 3x4"):
        et.nn.Linear(3, 4)(x4(2, 5))
    with pytest.raises(ValueError, match="matmul"):
        et.randn(2, 3) @ et.randn(4, 2)


def test_non_contiguous_inputs_work():
    a = np.random.default_rng(0).standard_normal((2, 3, 8, 10)).astype(np.float32)
    nc = et.from_numpy(a[:, :, :, ::2])                    # strided view
    assert not nc.is_contiguous()
    conv = et.nn.Conv2d(3, 2, 3)
    ref = conv(et.tensor(np.ascontiguousarray(a[:, :, :, ::2])))
    np.testing.assert_allclose(conv(nc).detach().numpy(), ref.detach().numpy(), rtol=1e-6)
    t = et.from_numpy(a.transpose(0, 1, 3, 2))
    assert et.nn.MaxPool2d(2)(t).shape == (2, 3, 5, 4)
    assert et.nn.BatchNorm2d(3)(t).shape == t.shape
    lin_in = et.from_numpy(np.ones((4, 3), np.float32).T)    # Fortran order
    assert et.nn.Linear(4, 2)(lin_in).shape == (3, 2)


def test_pooling_errors():
    with pytest.raises(ValueError, match="max_pool2d.*pad should be at most half"):
        et.nn.MaxPool2d(2, padding=2)(x4(1, 1, 8, 8))
    with pytest.raises(ValueError, match="max_pool2d.*too small"):
        et.nn.MaxPool2d(5)(x4(1, 1, 3, 3))
    with pytest.raises(ValueError, match="avg_pool2d"):
        et.nn.AvgPool2d(2, stride=0)(x4(1, 1, 4, 4))
    with pytest.raises(ValueError, match="4D"):
        et.nn.AvgPool2d(2)(x4(4, 4))
    with pytest.raises(ValueError, match="output_size"):
        et.nn.AdaptiveAvgPool2d(0)(x4(1, 1, 4, 4))


def test_batchnorm_errors():
    bn = et.nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"BatchNorm2d.*3 channels.*\(2, 4, 5, 5\)"):
        bn(x4(2, 4, 5, 5))
    with pytest.raises(ValueError, match="4D"):
        bn(x4(2, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x4(1, 3, 1, 1))
    bn.eval()
    assert bn(x4(1, 3, 1, 1)).shape == (1, 3, 1, 1)       # eval: fine, like torch


def test_labels_out_of_range_name_value():
    logits = et.randn(3, 5)
    with pytest.raises(ValueError, match=r"Target 7 is out of bounds"):
        F.cross_entropy(logits, et.tensor([0, 7, 1], dtype="int64"))
    with pytest.raises(ValueError, match=r"Target -3"):
        et.nn.CrossEntropyLoss()(logits, et.tensor([0, -3, 1], dtype="int64"))
    with pytest.raises(ValueError, match=r"target of shape \(3,\)"):
        F.cross_entropy(logits, et.tensor([0, 1], dtype="int64"))
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(logits, et.tensor([0.5, 1, 2]))
    with pytest.raises(NotImplementedError, match="label_smoothing"):
        et.nn.CrossEntropyLoss(label_smoothing=0.1)
    with pytest.raises(ValueError, match="reduction"):
        et.nn.CrossEntropyLoss(reduction="avg")


def test_dropout_probability():
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        et.nn.Dropout(1.5)
    with pytest.raises(ValueError, match="-0.1"):
        F.dropout(x4(2, 2), -0.1)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt'.*'ref'"):
        et.set_backend("tensorrt")
    with pytest.raises(ValueError, match="tensorrt"):
        with et.backend("tensorrt"):
            pass
    before = et.get_backend()
    with et.backend("ref"):
        assert et.get_backend() == "ref"
        with pytest.raises(ZeroDivisionError):
            with et.backend(et.backends()[-1]):
                1 / 0
        assert et.get_backend() == "ref"
    assert et.get_backend() == before


def test_load_state_dict_errors_are_clear():
    m = et.nn.Sequential(et.nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r'Missing key\(s\).*"0\.bias"'):
        m.load_state_dict({"0.weight": np.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"size mismatch for 0\.bias"):
        m.load_state_dict({"0.weight": np.zeros((3, 2)), "0.bias": np.zeros(4)})
    with pytest.raises(ValueError, match=r"0\.weight.*not numeric"):
        m.load_state_dict({"0.weight": {"a": 1}, "0.bias": np.zeros(3)})
    with pytest.raises(TypeError, match="dict-like"):
        m.load_state_dict([1, 2])


def test_reshape_and_index_errors():
    t = et.randn(2, 3)
    with pytest.raises(RuntimeError, match="invalid for input of size 6"):
        t.reshape(4, -1)
    with pytest.raises(IndexError):
        t[5]
    with pytest.raises(IndexError, match="Dimension out of range"):
        t.sum(dim=3)
    with pytest.raises(ValueError, match="cat"):
        et.cat([et.randn(2, 3), et.randn(2, 4)], dim=0)


def test_optimizer_errors():
    with pytest.raises(TypeError, match="iterable of Tensors"):
        et.optim.SGD(et.randn(3), lr=0.1)
    with pytest.raises(NotImplementedError, match="amsgrad"):
        et.optim.Adam([et.nn.Parameter(et.randn(2))], amsgrad=True)
