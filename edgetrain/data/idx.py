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

Memory: the reader never holds more than the header declares and the file
really contains (raw files: their size is checked against the header before
anything is read; gzip streams are inflated in 1 MiB pieces, never past the
declared payload plus one byte, and counted before being kept when they
declare more than 64 MiB), so a header claiming 2^40 items or a "gzip bomb"
raises ValueError instead of allocating (fuzz/fuzz_idx.py checks this).
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
# numpy's limit on dimensions (NPY_MAXDIMS: 64 in numpy 2, 32 before); more
# raise here, naming the file, instead of inside reshape
_MAX_NDIM = 64 if int(np.__version__.split(".")[0]) >= 2 else 32
_CHUNK = 1 << 20       # gzip streams are inflated 1 MiB at a time (see _Source.read)
_COUNT_FIRST = 64 << 20   # gzip payloads above this are counted before being kept


class _Source:
    """The bytes of an IDX file, raw or gzip, read in order and bounded.

    Why not read()/gzip.decompress() the whole file: a gzip stream inflates up
    to ~1000x, so a small file could ask for gigabytes (a "gzip bomb"), and a
    header may declare up to (2^32-1)^255 items. Everything here is read in
    at most _CHUNK-sized pieces and never past what the header declares plus
    one byte (to detect trailing data), so memory stays within what a
    well-formed file of that header holds and the file really contains.
    """

    def __init__(self, path):
        self.path = path
        self._raw = open(path, "rb")
        self.size = os.fstat(self._raw.fileno()).st_size     # raw: the byte count
        self.gz = self._raw.read(2) == _GZIP_MAGIC
        self._raw.seek(0)
        self._f = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.gz else self._raw

    def close(self):
        if self.gz:
            self._f.close()
        self._raw.close()

    def count(self, n: int) -> int:
        """Reads up to n bytes, keeping none; returns how many there were."""
        got = 0
        while got < n:
            b = self._read_chunk(min(n - got, _CHUNK))
            if not b:
                break
            got += len(b)
        return got

    def rewind(self, offset: int):
        """Back to byte `offset` of the (decompressed) data."""
        self._f.seek(0)
        self.read(offset)

    def _read_chunk(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError
            raise ValueError(f"read_idx: {self.path!r}: corrupt or truncated gzip "
                             f"stream ({e})") from None

    def read_into(self, buf: memoryview) -> int:
        """Fills buf (bytes) from the data, in bounded pieces; returns the count."""
        got, n = 0, len(buf)
        while got < n:
            b = self._read_chunk(min(n - got, _CHUNK))
            if not b:
                break
            buf[got:got + len(b)] = b
            got += len(b)
        return got

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the data), in bounded pieces."""
        parts = []
        while n > 0:
            b = self._read_chunk(min(n, _CHUNK))
            if not b:
                break
            parts.append(b)
            n -= len(b)
        return b"".join(parts)


def _payload_error(path, dims, dtype, header, nbytes, have, what, total=None):
    """Raises the truncated / trailing-data ValueError. `have`: payload bytes
    found (gzip: nbytes + 1 means "more than declared", not counted further)."""
    if have < nbytes:
        raise ValueError(
            f"read_idx: {path!r}: truncated payload: dims {dims} of {dtype.name} need "
            f"{nbytes} payload bytes, {what} {have}")
    if total is not None:
        raise ValueError(
            f"read_idx: {path!r}: {have - nbytes} trailing byte(s) after the payload "
            f"(dims {dims} of {dtype.name} need {header + nbytes} bytes in all, file has "
            f"{total})")
    raise ValueError(
        f"read_idx: {path!r}: trailing data after the payload (dims {dims} of "
        f"{dtype.name} need {header + nbytes} bytes in all)")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Returns a new, writable, C-contiguous array in native byte order with the
    file's dtype (uint8, int8, int16, int32, float32 or float64) and shape.
    """
    path = os.fspath(path)
    src = _Source(path)      # FileNotFoundError / OSError as open() raises them
    try:
        return _read(src, path)
    finally:
        src.close()


def _read(src: _Source, path: str) -> np.ndarray:
    what = "the gzip stream has" if src.gz else "file has"
    data = src.read(4)
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
    data += src.read(4 * ndim)
    n = len(data)
    if n < header:
        raise ValueError(
            f"read_idx: {path!r}: truncated header: ndim {ndim} needs {header} header bytes, "
            f"{what} {n}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if ndim > _MAX_NDIM:
        raise ValueError(f"read_idx: {path!r}: {ndim} dimensions (dims {dims[:8]}...); numpy "
                         f"arrays have at most {_MAX_NDIM}")
    dtype = IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow on garbage dims
    nbytes = count * dtype.itemsize
    if not src.gz and src.size != header + nbytes:
        # raw file: its size is known, so a wrong payload length is refused
        # before reading (a header declaring 2^40 items allocates nothing)
        _payload_error(path, dims, dtype, header, nbytes, src.size - header, what, src.size)
    # numpy refuses shapes whose product of NON-ZERO dims overflows, even with
    # a zero dim (0 items): check the same product here, naming the file
    nz = 1
    for d in dims:
        nz *= d or 1
    if nz * dtype.itemsize >= 2 ** 63:
        raise ValueError(f"read_idx: {path!r}: dims {dims} of {dtype.name} are too large "
                         "for an array on this machine")
    if src.gz and nbytes > _COUNT_FIRST:
        # a large declared payload: count the stream first, keeping nothing, so
        # that a stream shorter (or longer) than its header says is refused
        # without having buffered it (e.g. 2^40 items declared, 1 GiB present)
        have = src.count(nbytes + 1)
        if have != nbytes:
            _payload_error(path, dims, dtype, header, nbytes, have, what)
        src.rewind(header)
    # the items go straight into the array (one copy of the payload in memory):
    # a raw file's size and a large gzip stream's length are known to match by
    # now, so `count` items are there; a small gzip stream is read first
    if src.gz and nbytes <= _COUNT_FIRST:
        payload = src.read(nbytes)       # at most nbytes, in 1 MiB pieces
        if len(payload) < nbytes:
            _payload_error(path, dims, dtype, header, nbytes, len(payload), what)
        arr = np.frombuffer(payload, dtype=dtype, count=count).copy()
    else:
        arr = np.empty(count, dtype=dtype)
        got = src.read_into(memoryview(arr).cast("B")) if nbytes else 0
        if got < nbytes:                 # the file changed under us
            _payload_error(path, dims, dtype, header, nbytes, got, what)
    if src.read(1):
        _payload_error(path, dims, dtype, header, nbytes, nbytes + 1, what)
    # big-endian items -> native order in place: writable, C-contiguous, and
    # independent of the file
    if not dtype.isnative:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return arr.reshape(dims)
