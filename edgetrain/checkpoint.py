"""Checkpoints: `et.save(obj, path)` / `et.load(path)`, like torch.save / torch.load
for what a training run needs to keep -- model and optimizer state_dicts, RNG
state, metrics, options -- without pickle, so loading a file from someone else
can never run code.

    et.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "epoch": 3}, "run/checkpoint.et")
    ck = et.load("run/checkpoint.et")
    model.load_state_dict(ck["model"])

What can be stored: nested dict (any stored-able keys: str, int, float, bool,
None, tuples of those), list, tuple, str, bytes, int (any size: PCG64 states are
128-bit), float (nan/inf too), bool, None, numpy arrays of bool / int / uint /
float16-64 / complex dtypes (any shape, any strides: stored C-contiguous,
little-endian), numpy scalars, and edgetrain Tensors (stored as their data,
loaded back as numpy arrays, which load_state_dict accepts). Anything else
(objects, sets, object arrays) raises TypeError naming where it is in `obj`.
Dicts come back as plain dicts (an OrderedDict's order is kept), tuples as
tuples.

File layout (version 1), all integers little-endian:

    offset  size   field
    0       8      magic b"\\x89ETCKPT\\n"  (the high byte and newline catch
                   text-mode transfers, as PNG's signature does)
    8       4      uint32 format version (1)
    12      4      uint32 flags (0; reserved)
    16      8      uint64 M = manifest length in bytes
    24      8      uint64 D = data length in bytes
    32      M      manifest: UTF-8 JSON {"tree": <encoded obj>, "arrays":
                   [{"dtype": "<f4", "shape": [..], "offset": o, "nbytes": n}, ..]}
    32+M    D      raw array bytes, each array at a 64-byte aligned data offset
    32+M+D  32     SHA-256 of every byte before it (header, manifest and data)

The checksum is last, and written last: a file cut short anywhere (a crash
mid-write, a full disk, a partial copy) fails the length check, and any flipped
bit fails the SHA-256, so a damaged file is never taken for a checkpoint.
`save` to a path is atomic besides: it writes a temporary file in the same
directory, fsyncs it, renames it over `path` and fsyncs the directory, so
`path` holds either the old checkpoint or the new one, whole.

Errors: `load` raises `edgetrain.CheckpointError` (an EdgetrainError and a
ValueError) naming the file and what is wrong -- not a checkpoint (bad magic),
an unsupported version, truncated, checksum mismatch, a malformed manifest --
and FileNotFoundError / other OSErrors as open() does. A valid checksum proves
nothing about who wrote the file, so the manifest is checked against what
`save` writes (array dtypes "<f4"-style bool/int/uint/float/complex strings,
shapes and offsets plain non-negative ints fitting the data, no NaN/Infinity
in the JSON, at most numpy's 64 dims) before numpy sees any of it; fuzzed by
fuzz/fuzz_checkpoint.py. `save` raises TypeError
for what it cannot store and OSError (no space, read-only, ...) as the file
system reports it, after removing its temporary file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
import tempfile

import numpy as np

from .errors import CheckpointError

__all__ = ["save", "load", "CheckpointError", "MAGIC", "VERSION"]

MAGIC = b"\x89ETCKPT\n"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")       # magic, version, flags, manifest len, data len
_DIGEST = 32                             # SHA-256
_ALIGN = 64                              # array data alignment (bytes, from data start)
_DTYPE_KINDS = "biufc"                   # bool, int, uint, float, complex: no object/void/str


# -- encoding -------------------------------------------------------------------
class _Encoder:
    """obj -> JSON-able tree + a list of arrays. Every dict becomes
    {"dict": [[key, value], ...]} and every special value another one-key
    object, so a JSON object in the tree is always a tag (never user data)."""

    def __init__(self):
        self.arrays = []          # contiguous little-endian ndarrays, in data order

    def _array(self, a, where):
        a = np.asarray(a)
        if a.dtype.kind not in _DTYPE_KINDS:
            raise TypeError(f"save: cannot store a numpy array of dtype {a.dtype} at {where} "
                            "(only bool, integer, float and complex arrays)")
        # (not ascontiguousarray: it turns 0-d arrays into 1-d ones)
        a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)
        self.arrays.append(a)
        return len(self.arrays) - 1

    def encode(self, obj, where="obj"):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, bool):
            return int(obj)
        if isinstance(obj, np.generic) and obj.dtype.kind in _DTYPE_KINDS:
            # before float: np.float64 IS a float, and would come back as one
            return {"scalar": self._array(np.asarray(obj), where)}
        if isinstance(obj, float):
            if math.isfinite(obj):
                return float(obj)
            return {"float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, np.ndarray):
            return {"array": self._array(obj, where)}
        if isinstance(obj, np.generic):
            return {"scalar": self._array(np.asarray(obj), where)}
        if isinstance(obj, (bytes, bytearray)):
            return {"bytes": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, dict):
            return {"dict": [[self.encode(k, f"{where} (a key)"), self.encode(v, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if hasattr(obj, "_data") and isinstance(getattr(obj, "_data"), np.ndarray):
            return {"array": self._array(obj._data, where)}       # edgetrain Tensor / Parameter
        raise TypeError(f"save: cannot store an object of type {type(obj).__name__} at {where} "
                        "(dicts, lists, tuples, str, bytes, numbers, None, numpy arrays and "
                        "edgetrain Tensors only)")


def _pad(n):
    return (-n) % _ALIGN


def _serialize(obj):
    """obj -> (header + manifest bytes, [array byte buffers with padding in between])."""
    enc = _Encoder()
    tree = enc.encode(obj)
    metas, chunks, offset = [], [], 0
    for a in enc.arrays:
        pad = _pad(offset)
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        metas.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                      "nbytes": int(a.nbytes)})
        chunks.append(memoryview(a.reshape(-1).view(np.uint8)))
        offset += a.nbytes
    manifest = json.dumps({"tree": tree, "arrays": metas}, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    head = _HEADER.pack(MAGIC, VERSION, 0, len(manifest), offset) + manifest
    return head, chunks


def _write_all(f, head, chunks):
    h = hashlib.sha256()
    for part in (head, *chunks):
        h.update(part)
        f.write(part)
    f.write(h.digest())


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:            # e.g. platforms without directory fds: best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Create or replace the file `path` atomically: `write(fileobj)` fills a
    temporary file in the same directory, which is fsynced, renamed over `path`
    (os.replace: atomic on POSIX) and the directory fsynced, so a crash, a kill
    or a full disk at any point leaves `path` either as it was or whole. On an
    error the temporary file is removed and the error re-raised."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        # mkstemp makes 0600 files; give the result the usual 0666 & ~umask.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def save(obj, f):
    """Store `obj` in `f` (a path, written atomically; or a writable binary file object).

    See the module docstring for what can be stored and the file format."""
    head, chunks = _serialize(obj)   # TypeError here leaves no file behind
    if hasattr(f, "write"):
        _write_all(f, head, chunks)
    else:
        atomic_write(f, lambda fh: _write_all(fh, head, chunks))


# -- decoding -------------------------------------------------------------------
def _decode_tree(node, arrays, name):
    def bad(msg):
        return CheckpointError(f"load: {name}: malformed manifest: {msg}")

    def dec(x):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict) and len(x) == 1:
            (tag, v), = x.items()
            if tag == "dict" and isinstance(v, list):
                out = {}
                for kv in v:
                    if not (isinstance(kv, list) and len(kv) == 2):
                        raise bad("a dict entry is not a [key, value] pair")
                    k = dec(kv[0])
                    try:
                        out[k] = dec(kv[1])
                    except TypeError:   # an unhashable key (a list)
                        raise bad(f"unhashable dict key {k!r}") from None
                return out
            if tag == "tuple" and isinstance(v, list):
                return tuple(dec(e) for e in v)
            if tag == "float" and v in ("nan", "inf", "-inf"):
                return float(v)
            if tag in ("array", "scalar") and isinstance(v, int) and not isinstance(v, bool):
                if not 0 <= v < len(arrays):
                    raise bad(f"array index {v} out of range (the file has {len(arrays)})")
                a = arrays[v]
                if tag == "scalar":
                    if a.ndim != 0:
                        raise bad(f"scalar {v} has shape {a.shape}")
                    return a[()]
                return a
            if tag == "bytes" and isinstance(v, str):
                try:
                    return base64.b64decode(v.encode("ascii"), validate=True)
                except ValueError:
                    raise bad("invalid base64 bytes") from None
        raise bad(f"unknown node {str(x)[:80]!r}")

    try:
        return dec(node)
    except RecursionError:
        raise bad("nested too deeply") from None


def _parse(buf, name):
    size = len(buf)
    if size == 0:
        raise CheckpointError(f"load: {name}: the file is empty (not a checkpoint, or truncated)")
    if size < len(MAGIC) or bytes(buf[:len(MAGIC)]) != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(bytes(buf)):
            raise CheckpointError(f"load: {name}: truncated ({size} bytes, not even a header)")
        raise CheckpointError(f"load: {name}: not an edgetrain checkpoint (bad magic "
                              f"{bytes(buf[:len(MAGIC)])!r}, expected {MAGIC!r})")
    if size < _HEADER.size:
        raise CheckpointError(f"load: {name}: truncated ({size} bytes, the header alone "
                              f"is {_HEADER.size})")
    _, version, flags, mlen, dlen = _HEADER.unpack_from(buf)
    if version != VERSION:
        raise CheckpointError(f"load: {name}: unsupported checkpoint format version {version} "
                              f"(this edgetrain reads version {VERSION})")
    expected = _HEADER.size + mlen + dlen + _DIGEST
    if size < expected:
        raise CheckpointError(f"load: {name}: truncated: {size} bytes, the header says "
                              f"{expected}")
    if size > expected:
        raise CheckpointError(f"load: {name}: {size - expected} unexpected bytes after the "
                              f"end of the checkpoint ({expected} bytes)")
    digest = hashlib.sha256(buf[:expected - _DIGEST]).digest()
    if digest != bytes(buf[expected - _DIGEST:]):
        raise CheckpointError(f"load: {name}: checksum mismatch: the file is corrupted "
                              "(SHA-256 of its contents differs from the one stored in it)")
    if flags != 0:
        raise CheckpointError(f"load: {name}: unsupported flags {flags:#x}")
    m0 = _HEADER.size
    try:
        # save writes no NaN/Infinity (allow_nan=False): a manifest holding them
        # is not one of ours (and int(inf) would raise OverflowError below)
        manifest = json.loads(bytes(buf[m0:m0 + mlen]).decode("utf-8"),
                              parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"load: {name}: malformed manifest: {e}") from None
    if not (isinstance(manifest, dict) and "tree" in manifest
            and isinstance(manifest.get("arrays"), list)):
        raise CheckpointError(f"load: {name}: malformed manifest: no tree / arrays")
    d0 = m0 + mlen
    arrays = []
    for i, meta in enumerate(manifest["arrays"]):
        dtype, shape, off, nbytes = _array_meta(meta, i, name, dlen)
        a = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=d0 + off)
        # native byte order, writable, owning its memory (not a view of the file buffer)
        arrays.append(a.astype(dtype.newbyteorder("="), copy=True).reshape(shape))
    return _decode_tree(manifest["tree"], arrays, name)


def _reject_constant(c):
    raise ValueError(f"non-finite number {c} (save never writes one)")


# What save writes for an array's dtype: numpy's dtype.str of a bool / int /
# uint / float / complex dtype ("<f4", "|u1", "|b1", ">c16"...), nothing else
# (no object, void, str, datetime, structured or subarray dtypes).
_DTYPE_STR = re.compile(r"[<>|=][biufc][0-9]{1,2}")
# numpy's limit on dimensions (NPY_MAXDIMS: 64 in numpy 2, 32 before)
_MAX_NDIM = 64 if int(np.__version__.split(".")[0]) >= 2 else 32


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _array_meta(meta, i, name, dlen):
    """Checks one manifest array entry against what save writes and the data
    length: -> (dtype, shape, offset, nbytes), else CheckpointError. Strict
    types (a dtype string, int sizes), so nothing numpy does with them later
    (frombuffer, reshape) can fail or allocate more than the file holds."""
    def bad(msg):
        return CheckpointError(f"load: {name}: malformed manifest: array {i}: {msg}")

    if not (isinstance(meta, dict) and {"dtype", "shape", "offset", "nbytes"} <= meta.keys()):
        raise bad(f"expected {{dtype, shape, offset, nbytes}}, got {str(meta)[:80]}")
    ds, shape, off, nbytes = meta["dtype"], meta["shape"], meta["offset"], meta["nbytes"]
    if not (isinstance(ds, str) and _DTYPE_STR.fullmatch(ds)):
        raise bad(f"dtype {str(ds)[:40]!r} is not a bool/int/uint/float/complex dtype")
    try:
        dtype = np.dtype(ds)
    except TypeError:                       # e.g. "<f3": no such type
        raise bad(f"unknown dtype {ds!r}") from None
    if dtype.kind not in _DTYPE_KINDS:
        raise bad(f"dtype {ds!r} is not a bool/int/uint/float/complex dtype")
    if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
        raise bad(f"shape {str(shape)[:80]} is not a list of non-negative ints")
    if len(shape) > _MAX_NDIM:
        raise bad(f"{len(shape)} dimensions; numpy arrays have at most {_MAX_NDIM}")
    if not (_is_int(off) and _is_int(nbytes)):
        raise bad(f"offset {str(off)[:40]} / nbytes {str(nbytes)[:40]} are not ints")
    # numpy refuses shapes whose product of NON-ZERO dims (times the item size)
    # overflows its intp, even with a zero dim
    if math.prod(s or 1 for s in shape) * dtype.itemsize >= 2 ** 63:
        raise bad(f"shape {shape} of {ds} is too large for an array")
    if (nbytes != dtype.itemsize * math.prod(shape) or off < 0 or off + nbytes > dlen):
        raise bad(f"({ds}, shape {tuple(shape)}, {nbytes} bytes at {off}) does not fit "
                  f"the {dlen} data bytes")
    return dtype, tuple(shape), off, nbytes


def load(f):
    """Read an object stored by `save` from `f` (a path or a readable binary file object).

    Arrays come back as writable numpy arrays. Raises CheckpointError naming the
    file if it is not a checkpoint, truncated, corrupted or of an unknown version."""
    if hasattr(f, "read"):
        name = repr(getattr(f, "name", "<file object>"))
        buf = f.read()
    else:
        name = repr(os.fspath(f))
        with open(f, "rb") as fh:
            buf = fh.read()
    return _parse(memoryview(buf) if not isinstance(buf, memoryview) else buf, name)
