"""edgetrain.data: IDX reader, MNIST loader, DataLoader.

Exact comparisons throughout (integer data, permutations): tolerance 0.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import edgetrain as et
from edgetrain.data import DataLoader, TensorDataset, load_mnist, read_idx

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray, code=None) -> bytes:
    code = TYPE_CODES[arr.dtype.type] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz=False):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


# --- read_idx -----------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype,shape", [
    (np.uint8, (7, 5, 3)), (np.int8, (11,)), (np.int16, (4, 6)), (np.int32, (2, 3, 2, 2)),
    (np.float32, (3, 28, 28)), (np.float64, (5, 1)), (np.uint8, (0, 4)),
])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        arr = (rng.standard_normal(shape) * 1e3).astype(dtype)
    p = write(tmp_path / ("a.idx.gz" if gz else "a.idx"), idx_bytes(arr), gz)
    out = read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.flags.c_contiguous
    out[...] = 0  # writable copy, independent of the file's buffer


def test_read_idx_accepts_str_path_and_ubyte_names(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(arr), gz=True)
    np.testing.assert_array_equal(read_idx(str(p)), arr)


@pytest.mark.parametrize("name,data,gz,match", [
    ("empty.idx", b"", False, "empty"),
    ("short.idx", b"\x00\x00", False, "truncated header"),
    ("magic.idx", b"\x12\x34\x08\x01\x00\x00\x00\x01\x07", False, "bad magic"),
    ("type.idx", b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", False, "unknown IDX type code 0x07"),
    ("hdr.idx", b"\x00\x00\x08\x03\x00\x00\x00\x02", False, "truncated header"),
    ("trunc.idx", idx_bytes(np.zeros((4, 5), np.int16))[:-3], False, "truncated payload"),
    ("trunc.idx.gz", idx_bytes(np.zeros((4, 5), np.int16))[:-3], True, "truncated payload"),
    ("trail.idx", idx_bytes(np.zeros((4, 5), np.int32)) + b"\x00", False, "1 trailing byte"),
    ("garbage.idx", bytes(np.random.default_rng(1).integers(1, 256, 300, dtype=np.uint8)), False, "bad magic"),
    ("huge.idx", b"\x00\x00\x0e\x04" + b"\xff" * 16 + b"\x00" * 8, False, "truncated payload"),
])
def test_read_idx_malformed_raises_value_error(tmp_path, name, data, gz, match):
    p = write(tmp_path / name, data, gz)
    with pytest.raises(ValueError, match=match) as ei:
        read_idx(p)
    assert name in str(ei.value), "message must name the file"


def test_read_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    p = write(tmp_path / "bad.idx.gz", good[:len(good) // 2])
    with pytest.raises(ValueError, match="gzip") as ei:
        read_idx(p)
    assert "bad.idx.gz" in str(ei.value)
    p2 = write(tmp_path / "bad2.idx.gz", good[:10] + b"\xff" * 40)
    with pytest.raises(ValueError, match="bad2.idx.gz"):
        read_idx(p2)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")


# --- load_mnist -----------------------------------------------------------------

def test_load_mnist10k(mnist10k_dir):
    x, y = load_mnist(mnist10k_dir, train=True)
    assert x.shape == (8000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (8000,) and y.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y, minlength=10),
                                  [806, 902, 787, 829, 810, 699, 777, 873, 743, 774])
    xt, yt = load_mnist(mnist10k_dir, train=False)
    assert xt.shape == (2000, 28, 28) and yt.shape == (2000,)
    np.testing.assert_array_equal(np.bincount(yt, minlength=10),
                                  [195, 225, 204, 203, 170, 164, 237, 197, 201, 204])
    assert 0 == x.min() and x.max() == 255
    assert 0.05 < x.mean() / 255 < 0.25  # real digits: mostly background


def _mnist_dir(tmp_path, n_img, n_lbl, sep="-", gz=False):
    d = tmp_path / "m"
    d.mkdir()
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (n_img, 28, 28)).astype(np.uint8)
    lbls = rng.integers(0, 10, n_lbl).astype(np.uint8)
    write(d / f"t10k-images{sep}idx3-ubyte{ext}", idx_bytes(imgs), gz)
    write(d / f"t10k-labels{sep}idx1-ubyte{ext}", idx_bytes(lbls), gz)
    return d, imgs, lbls


@pytest.mark.parametrize("sep,gz", [("-", False), (".", False), (".", True)])
def test_load_mnist_name_variants(tmp_path, sep, gz):
    d, imgs, lbls = _mnist_dir(tmp_path, 6, 6, sep, gz)
    x, y = load_mnist(d, train=False)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, lbls)
    with pytest.raises(FileNotFoundError, match="train"):
        load_mnist(d, train=True)


def test_load_mnist_errors(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_mnist(missing)
    d, _, _ = _mnist_dir(tmp_path, 6, 5)
    with pytest.raises(ValueError, match="6 images .* but 5 labels"):
        load_mnist(d, train=False)


# --- DataLoader -------------------------------------------------------------------

def _np(t):
    return np.asarray(t.numpy())


def test_dataloader_batches_in_order_and_dtypes():
    x = np.arange(10 * 3, dtype=np.float64).reshape(10, 3)
    y = np.arange(10, dtype=np.int64)
    lbl8 = np.arange(10, dtype=np.uint8)
    loader = DataLoader((x, y, lbl8), batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    for i, (bx, by, bl) in enumerate(batches):
        assert isinstance(bx, et.Tensor) and isinstance(by, et.Tensor)
        assert bx.dtype == "float32"          # floating data becomes float32
        assert by.dtype == "int64"            # integers keep numpy's dtype
        assert bl.dtype == "uint8"
        np.testing.assert_array_equal(_np(bx), x[4 * i:4 * i + 4].astype(np.float32))
        np.testing.assert_array_equal(_np(by), y[4 * i:4 * i + 4])
        np.testing.assert_array_equal(_np(bl), lbl8[4 * i:4 * i + 4])


def test_dataloader_drop_last_and_len():
    x = np.zeros((10, 2), np.float32)
    loader = DataLoader([x], batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [b[0].shape[0] for b in loader] == [4, 4]
    assert len(DataLoader([x], batch_size=5)) == 2
    assert len(DataLoader([x], batch_size=11)) == 1
    assert len(DataLoader([x], batch_size=11, drop_last=True)) == 0
    assert list(DataLoader([x], batch_size=11, drop_last=True)) == []


@pytest.mark.parametrize("bs", [0, -1, 2.5, "4", True])
def test_dataloader_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader([np.zeros((4, 1), np.float32)], batch_size=bs)


def test_dataloader_unequal_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader((np.zeros((4, 1), np.float32), np.zeros(5, np.int64)), batch_size=2)


def _epoch_order(loader):
    return np.concatenate([_np(b[1]) for b in loader])


def test_dataloader_seeded_shuffle():
    n = 50
    data = (np.arange(n, dtype=np.float32)[:, None], np.arange(n, dtype=np.int64))
    a = DataLoader(data, batch_size=8, shuffle=True, seed=123)
    b = DataLoader(data, batch_size=8, shuffle=True, seed=123)
    a1, a2 = _epoch_order(a), _epoch_order(a)
    b1, b2 = _epoch_order(b), _epoch_order(b)
    np.testing.assert_array_equal(a1, b1)     # same seed -> same epochs
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)          # a new permutation each epoch
    assert not np.array_equal(a1, np.arange(n))
    np.testing.assert_array_equal(np.sort(a1), np.arange(n))  # a permutation: each sample once
    for bx, by in a:                           # rows stay aligned across arrays
        np.testing.assert_array_equal(_np(bx)[:, 0], _np(by).astype(np.float32))
    c = _epoch_order(DataLoader(data, batch_size=8, shuffle=True, seed=124))
    assert not np.array_equal(a1, c)


def test_dataloader_shuffle_without_seed_follows_manual_seed():
    data = (np.arange(40, dtype=np.float32), np.arange(40, dtype=np.int64))
    et.manual_seed(7)
    o1 = _epoch_order(DataLoader(data, batch_size=16, shuffle=True))
    et.manual_seed(7)
    o2 = _epoch_order(DataLoader(data, batch_size=16, shuffle=True))
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(o1, np.arange(40))


class _Squares:
    """A map-style dataset: (image (2, 2) float64, int label, float weight)."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        if not 0 <= i < 7:
            raise IndexError(i)
        return np.full((2, 2), i, np.float64), i * i, 0.5 * i


def test_dataloader_dataset_object():
    loader = DataLoader(_Squares(), batch_size=3)
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    img, lbl, w = batches[1]
    assert img.shape == (3, 2, 2) and img.dtype == "float32"
    assert lbl.shape == (3,) and lbl.dtype == "int64"
    assert w.dtype == "float32"
    np.testing.assert_array_equal(_np(img)[:, 0, 0], [3, 4, 5])
    np.testing.assert_array_equal(_np(lbl), [9, 16, 25])
    np.testing.assert_allclose(_np(w), [1.5, 2.0, 2.5])
    assert batches[2][0].shape == (1, 2, 2)


def test_dataloader_dict_samples_and_tensor_dataset():
    class D:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": np.array([i, i], np.float32), "y": np.int64(i)}

    (b0, b1) = list(DataLoader(D(), batch_size=2))
    np.testing.assert_array_equal(_np(b1["x"]), [[2, 2], [3, 3]])
    np.testing.assert_array_equal(_np(b0["y"]), [0, 1])

    ds = TensorDataset(np.arange(6, dtype=np.float32).reshape(6, 1), et.tensor(np.arange(6), dtype="int64"))
    assert len(ds) == 6
    x3, y3 = ds[3]
    assert float(x3[0]) == 3.0 and int(y3) == 3
    batches = list(DataLoader(ds, batch_size=4, shuffle=True, seed=0))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    got = np.concatenate([_np(b[1]) for b in batches])
    np.testing.assert_array_equal(np.sort(got), np.arange(6))
