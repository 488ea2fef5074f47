"""Reader for the IDX file format (MNIST, Fashion-MNIST, EMNIST, ...).

Layout (all integers big-endian), from Yann LeCun's MNIST page:

    bytes 0-1   0x00 0x00                       magic
    byte  2     type code (0x08 u8, 0x09 s8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64)
    byte  3     ndim
    4*ndim      dims, uint32 each
    payload     prod(dims) items of the type, big-endian, C order

Files may be gzip-compressed (detected by the gzip magic 0x1f 0x8b, whatever the
name). Any deviation -- empty file, bad magic, unknown type code, truncated
header or payload, trailing bytes, corrupt gzip stream -- raises ValueError
naming the file and what is wrong; a missing file raises FileNotFoundError.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["read_idx", "IDX_DTYPES"]

# type code -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"read_idx: {path!r}: corrupt or truncated gzip stream ({e})") from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Returns a new, writable, C-contiguous array in native byte order with the
    file's dtype (uint8, int8, int16, int32, float32 or float64) and shape.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    n = len(data)
    if n == 0:
        raise ValueError(f"read_idx: {path!r}: file is empty (expected an IDX header)")
    if n < 4:
        raise ValueError(f"read_idx: {path!r}: truncated header: {n} byte(s), need at least 4")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"read_idx: {path!r}: bad magic number 0x{data[0]:02x}{data[1]:02x}{data[2]:02x}{data[3]:02x} "
            f"(an IDX file starts with 0x0000 followed by a type code and ndim)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {d.name}" for c, d in IDX_DTYPES.items())
        raise ValueError(f"read_idx: {path!r}: unknown IDX type code 0x{code:02X} (known: {known})")
    header = 4 + 4 * ndim
    if n < header:
        raise ValueError(
            f"read_idx: {path!r}: truncated header: ndim {ndim} needs {header} header bytes, file has {n}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow on garbage dims
    expected = header + count * dtype.itemsize
    if n < expected:
        raise ValueError(
            f"read_idx: {path!r}: truncated payload: dims {dims} of {dtype.name} need "
            f"{expected - header} payload bytes, file has {n - header}")
    if n > expected:
        raise ValueError(
            f"read_idx: {path!r}: {n - expected} trailing byte(s) after the payload "
            f"(dims {dims} of {dtype.name} need {expected} bytes in all, file has {n})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies: writable, native byte order, independent of `data`.
    return arr.astype(dtype.newbyteorder("="), copy=True)
