"""Fuzz target: the checkpoint reader, et.load (edgetrain/checkpoint.py).

    python fuzz/fuzz_checkpoint.py --seconds 600
    python fuzz/fuzz_checkpoint.py --replay crashes/F.et

Seeds: `et.save` of random objects of everything a checkpoint stores (nested
dicts / lists / tuples, str, bytes, big ints, nan/inf floats, None, bools,
numpy arrays of every stored dtype, 0-d and empty, numpy scalars).

Inputs (label = how the input was made, counted per label in the record):
  valid                  a seed, unchanged
  bitflip / byteset / truncate / insert / delete / append / splice
                         byte-level mutations (the SHA-256 catches these)
  hdr / hdr+sum          header fields (version, flags, manifest and data
                         lengths) set to extreme values, checksum left stale /
                         recomputed
  json+sum               byte mutations of the manifest text, lengths and
                         checksum recomputed (a valid checksum over a corrupt
                         manifest)
  tree+sum               one node of the manifest's tree replaced by a hostile
                         value (wrong tags, out-of-range array indices,
                         Infinity/NaN, huge ints, deep nesting, ...), resealed
  meta+sum               array entries with hostile dtype / shape / offset /
                         nbytes (object/void/str/datetime/structured/subarray
                         dtypes, non-string dtypes, negative / huge / float /
                         non-finite sizes, >64 dims, misaligned offsets, ...)
  manifest+sum           the manifest replaced as a whole (not a dict, no tree,
                         arrays not a list, 100000-deep nesting, huge numbers)
  data+sum               array bytes mutated, resealed: must load
  random / magic+random  random bytes, with or without the magic

Clean outcome: edgetrain.CheckpointError whose message names "load:". A
successful load must round-trip: save(obj) then load gives an equal object
(arrays compared bit for bit, NaN == NaN), else it is a finding.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import struct
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import harness  # noqa: E402

HEADER = struct.Struct("<8sIIQQ")
EXTREME_U32 = [0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]
EXTREME_U64 = [0, 1, 31, 32, 64, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]
DTYPES = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8",
          "<c8", "<c16", ">f4", ">i8"]
HOSTILE_DTYPES = ["|O", "|V8", "|S5", "<U3", "<M8[s]", "<m8[ns]", "<f16", "<c32", "(3,)<f4",
                  "(2147483647,2147483647)<f4", "f", "float64", "int", "bool", "?", "e", "",
                  "x", "<f3", "|b2", 5, None, True, ["<f4"], [["a", "<f4"]],
                  [["a", "<f4", [100000, 100000]]], {"names": ["a"], "formats": ["<f4"]},
                  {"names": ["a"]}, "<f4,<i8", "V0", "S0", "U0", "[('a', '<f4')]", "a" * 300]
HOSTILE_INTS = [-1, -2 ** 63, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64,
                10 ** 30, 10 ** 4000]
HOSTILE_VALUES = [None, True, False, 0, -1, 1.5, 1e308, "", "x" * 1000, [], {}, [[]],
                  {"dict": 5}, {"dict": [[1]]}, {"dict": [[[], 1]]}, {"dict": [[{"dict": []}, 1]]},
                  {"dict": [[{"array": 0}, 1]]}, {"array": -1}, {"array": 10 ** 6},
                  {"array": True}, {"array": 1.0}, {"scalar": 0}, {"scalar": "0"},
                  {"float": "nan"}, {"float": "NaN"}, {"float": 1}, {"float": None},
                  {"bytes": "!!"}, {"bytes": "QQ"}, {"bytes": "QQ=="}, {"bytes": 1},
                  {"tuple": {}}, {"tuple": [[1, 2]]}, {"a": 1, "b": 2}, {"unknown": 1},
                  {"tuple": [{"tuple": [{"tuple": []}]}]}, 2 ** 64, -2 ** 64]


def _seal(manifest: bytes, data: bytes, version=1, flags=0, mlen=None, dlen=None) -> bytes:
    """A checkpoint file around a manifest and data: header + checksum recomputed."""
    head = HEADER.pack(b"\x89ETCKPT\n", version, flags,
                       len(manifest) if mlen is None else mlen,
                       len(data) if dlen is None else dlen)
    body = head + manifest + data
    return body + hashlib.sha256(body).digest()


def _split(blob: bytes):
    _, version, flags, mlen, dlen = HEADER.unpack_from(blob)
    m = blob[32:32 + mlen]
    return version, flags, m, blob[32 + mlen:32 + mlen + dlen]


def _random_array(rng, np):
    dt = np.dtype(rng.choice(DTYPES))
    nd = rng.choice([0, 1, 1, 2, 3, 4])
    shape = tuple(rng.choice([0, 1, 2, 3, 5]) for _ in range(nd))
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.randbytes(n * dt.itemsize)
    a = np.frombuffer(raw, dtype=dt).reshape(shape).copy() if n else np.zeros(shape, dt)
    if rng.random() < 0.2 and a.ndim >= 2:
        a = a.T                          # non-contiguous: stored C-contiguous
    return a


def _random_obj(rng, np, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.45:
        k = rng.randrange(11)
        return [None, True, rng.getrandbits(rng.choice([8, 64, 128, 300])) * rng.choice([1, -1]),
                rng.choice([0.5, -1e300, math.inf, -math.inf, math.nan, 1e-310]),
                "s" * rng.randrange(5) + "é", rng.randbytes(rng.randrange(9)),
                _random_array(rng, np), _random_array(rng, np),
                np.float32(1.5), np.int64(-3), np.bool_(True)][k]
    if r < 0.7:
        d = {}
        for i in range(rng.randrange(5)):
            key = rng.choice([f"k{i}", i, (i, "t"), None, 1.5, True])
            d[key] = _random_obj(rng, np, depth + 1)
        return d
    if r < 0.85:
        return [_random_obj(rng, np, depth + 1) for _ in range(rng.randrange(4))]
    return tuple(_random_obj(rng, np, depth + 1) for _ in range(rng.randrange(4)))


def _mutate_bytes(rng, b: bytearray, hot=64):
    m = rng.choice(["bitflip", "byteset", "truncate", "insert", "delete", "append", "splice"])
    if m == "bitflip" and b:
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(min(len(b), hot) if rng.random() < 0.5 else len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif m == "byteset" and b:
        for _ in range(rng.choice([1, 2, 3])):
            b[rng.randrange(len(b))] = rng.choice([0, 0x22, 0x5B, 0x5D, 0x7B, 0x7D, 0x2D, 0x39,
                                                   0x7F, 0x80, 0xFF])
    elif m == "truncate":
        del b[rng.randrange(len(b) + 1):]
    elif m == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.choice([1, 2, 5, 40]))
    elif m == "delete" and b:
        i = rng.randrange(len(b))
        del b[i:i + rng.choice([1, 2, 10])]
    elif m == "append":
        b += rng.randbytes(rng.choice([1, 8, 32, 100]))
    elif m == "splice" and b:
        i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
        b[i:i] = b[i:j]
    return m


def _nodes(tree, path=()):
    """(path, node) of every node of a decoded JSON value."""
    yield path, tree
    if isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _nodes(v, path + (i,))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _nodes(v, path + (k,))


def _replace(tree, path, value):
    if not path:
        return value
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return tree


def _deep(n, opener="[", closer="]"):
    return opener * n + closer * n


class CheckpointTarget(harness.Target):
    name = "checkpoint"
    script = os.path.abspath(__file__)
    suffix = ".et"
    message_prefix = "load:"
    clean_names = ["edgetrain.CheckpointError"]
    mem_limit_mb = 4096
    rss_limit_mb = 256

    def setup(self):
        import numpy as np
        import edgetrain as et
        self.np, self.et = np, et
        self.clean = (et.CheckpointError,)

    def _seed_file(self, rng) -> bytes:
        buf = io.BytesIO()
        self.et.save(_random_obj(rng, self.np), buf)
        return buf.getvalue()

    def generate(self, rng):
        blob = self._seed_file(rng)
        r = rng.random()
        if r < 0.04:
            return blob, "valid"
        if r < 0.16:
            b = bytearray(blob)
            return bytes(b), _mutate_bytes(rng, b)
        if r < 0.22:
            version, flags, m, d = _split(blob)
            field = rng.randrange(4)
            args = dict(version=version, flags=flags, mlen=len(m), dlen=len(d))
            key = ["version", "flags", "mlen", "dlen"][field]
            args[key] = rng.choice(EXTREME_U32 if field < 2 else EXTREME_U64)
            if rng.random() < 0.5:
                return _seal(m, d, **args), "hdr+sum"
            out = bytearray(_seal(m, d, version, flags))
            HEADER.pack_into(out, 0, b"\x89ETCKPT\n", args["version"], args["flags"],
                             args["mlen"], args["dlen"])
            return bytes(out), "hdr"
        _, _, m, d = _split(blob)
        if r < 0.36:
            b = bytearray(m)
            _mutate_bytes(rng, b, hot=len(b))
            return _seal(bytes(b), d), "json+sum"
        manifest = json.loads(m)
        if r < 0.56:
            nodes = list(_nodes(manifest["tree"]))
            path, _ = rng.choice(nodes)
            v = rng.choice(HOSTILE_VALUES + [math.inf, -math.inf, math.nan, "DEEP"])
            if v == "DEEP":
                text = json.dumps(_replace(manifest["tree"], path, "@@DEEP@@"))
                text = text.replace('"@@DEEP@@"', _deep(rng.choice([100, 990, 5000, 100000])))
                return _seal(('{"tree":' + text + ',"arrays":' + json.dumps(manifest["arrays"])
                              + "}").encode(), d), "tree+sum"
            manifest["tree"] = _replace(manifest["tree"], path, v)
            return _seal(json.dumps(manifest).encode(), d), "tree+sum"
        if r < 0.80:
            metas = manifest["arrays"]
            if not metas:
                metas.append({"dtype": "<f4", "shape": [1], "offset": 0, "nbytes": 4})
            meta = rng.choice(metas)
            k = rng.choice(["dtype", "shape", "offset", "nbytes", "drop", "whole"])
            if k == "dtype":
                meta["dtype"] = rng.choice(HOSTILE_DTYPES + DTYPES)
            elif k == "shape":
                meta["shape"] = rng.choice([
                    [-1], [rng.choice(HOSTILE_INTS)], [0, 2 ** 62, 2 ** 62], [1] * 65, [1] * 64,
                    [1] * 33, [2 ** 63 - 1, 0], [1.5], [math.inf], [math.nan], ["3"], "12", 5,
                    None, [None], [[1]], [True, False], {"a": 1}, [0] * 100, [0, 2 ** 40, 2 ** 40]])
            elif k in ("offset", "nbytes"):
                meta[k] = rng.choice(HOSTILE_INTS + [1, 3, 63, 1.0, 1.5, math.inf, math.nan, "0",
                                                     None, [0], True])
            elif k == "drop":
                meta.pop(rng.choice(list(meta)), None)
            else:
                metas[metas.index(meta)] = rng.choice([None, 1, "x", [], [1, 2], {}])
            return _seal(json.dumps(manifest).encode(), d), "meta+sum"
        if r < 0.86:
            alt = rng.choice([None, 1, "x", [], {}, {"tree": 1}, {"arrays": []},
                              {"tree": None, "arrays": {}}, {"tree": None, "arrays": None},
                              {"tree": None, "arrays": [], "extra": 1}, "DEEP", "NUM", "BADUTF8"])
            if alt == "DEEP":
                text = '{"tree":' + _deep(rng.choice([1000, 100000])) + ',"arrays":[]}'
                return _seal(text.encode(), d), "manifest+sum"
            if alt == "NUM":
                return _seal(('{"tree":' + "9" * rng.choice([4300, 5000, 100000]) +
                              ',"arrays":[]}').encode(), d), "manifest+sum"
            if alt == "BADUTF8":
                return _seal(b'{"tree":"\xff\xfe","arrays":[]}', d), "manifest+sum"
            return _seal(json.dumps(alt).encode(), d), "manifest+sum"
        if r < 0.95:
            b = bytearray(d)
            if b:
                _mutate_bytes(rng, b, hot=len(b))
                if len(b) != len(d):      # keep the length: the arrays still fit
                    b = (b + bytes(len(d)))[:len(d)]
            return _seal(m, bytes(b)), "data+sum"
        if r < 0.975:
            return rng.randbytes(rng.choice([0, 1, 7, 8, 31, 32, 100, 1000])), "random"
        return b"\x89ETCKPT\n" + rng.randbytes(rng.choice([0, 4, 24, 100, 1000])), "magic+random"

    def execute(self, path):
        obj = self.et.load(path)
        # round trip: what load returns, save must store, and load give back
        buf = io.BytesIO()
        self.et.save(obj, buf)
        buf.seek(0)
        again = self.et.load(buf)
        _assert_same(obj, again, self.np)


def _assert_same(a, b, np, where="obj"):
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert a.tobytes() == b.tobytes(), f"{where}: array bytes differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{where}: scalar differs"
    elif isinstance(a, dict):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} keys"
        for (k, v), (k2, v2) in zip(a.items(), b.items()):
            _assert_same(k, k2, np, f"{where} key {k!r}")
            _assert_same(v, v2, np, f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, np, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (a == b) or (math.isnan(a) and math.isnan(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


TARGET = CheckpointTarget()

if __name__ == "__main__":
    sys.exit(harness.main(TARGET))
