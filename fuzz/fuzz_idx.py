"""Fuzz target: the IDX reader, edgetrain.data.read_idx (edgetrain/data/idx.py).

    python fuzz/fuzz_idx.py --seconds 600          # standalone run, record on stdout
    python fuzz/fuzz_idx.py --replay crashes/F.idx  # one input again

Inputs (label = how the input was made, counted per label in the record):
  valid            a well-formed file: random type code (all six), ndim 0-4,
                   small dims, random payload bytes (any bytes are valid items)
  bitflip / byteset / truncate / insert / delete / append / splice
                   byte-level mutations of a valid file
  code / ndim / dim / huge-dims / zero-dim
                   header fields set to extreme values (type codes 0-255, ndim
                   up to 255, dims 0 / 2^31 / 2^32-1 / random, dims whose
                   product declares 2^40 or more items over a tiny payload)
  random / random-header
                   random bytes, or 00 00 + random type / ndim + random bytes
  gz+<m>           mutation <m>, then gzip-compressed (a valid stream of a bad file)
  gzbytes+<m>      a gzip-compressed valid file, then byte-mutated (a corrupt stream)
  gz-bomb          a valid stream that inflates far beyond what its header
                   declares (~1.5 GiB of zeros in ~1.5 MB)
  gz-bomb-declared 384 MiB of zeros under a header declaring 2^32-1 items
  gz-concat        two gzip members back to back

Clean outcome: ValueError whose message names "read_idx" (the documented
contract: every malformed file raises ValueError naming the file). A
successful read must return a C-contiguous, writable, native-order array of
an IDX dtype whose size matches its shape.
"""
from __future__ import annotations

import gzip
import os
import struct
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import harness  # noqa: E402

CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]
ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]
INTERESTING_DIMS = [0, 1, 2, 255, 256, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 20,
                    0x7FFF_FFFF, 10 ** 9]
BOMB_BYTES = 3 << 29      # 1.5 GiB of zeros after the header


def valid_idx(rng) -> bytes:
    code = rng.choice(CODES)
    ndim = rng.choice([0, 1, 1, 2, 3, 3, 4])
    dims = [rng.choice([0, 1, 2, 3, 5, 7, 28]) if rng.random() < 0.8 else rng.randrange(64)
            for _ in range(ndim)]
    n = 1
    for d in dims:
        n *= d
    while n * ITEMSIZE[code] > 1 << 16:       # keep files small: many executions
        dims[dims.index(max(dims))] //= 2
        n = 1
        for d in dims:
            n *= d
    head = bytes([0, 0, code, ndim]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + rng.randbytes(n * ITEMSIZE[code])


def _mutate_bytes(rng, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    m = rng.choice(["bitflip", "byteset", "truncate", "insert", "delete", "append", "splice"])
    if m == "bitflip" and b:
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            i = rng.randrange(min(len(b), 64) if rng.random() < 0.6 else len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif m == "byteset" and b:
        for _ in range(rng.choice([1, 2, 3])):
            i = rng.randrange(min(len(b), 32) if rng.random() < 0.7 else len(b))
            b[i] = rng.choice(INTERESTING_BYTES)
    elif m == "truncate":
        cut = rng.randrange(min(len(b), 40) + 1) if rng.random() < 0.5 else rng.randrange(len(b) + 1)
        del b[cut:]
    elif m == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.choice([1, 2, 4, 17, 300]))
    elif m == "delete" and b:
        i = rng.randrange(len(b))
        del b[i:i + rng.choice([1, 2, 4, 100])]
    elif m == "append":
        b += rng.randbytes(rng.choice([1, 3, 8, 1000]))
    elif m == "splice" and b:
        i, j = sorted(rng.randrange(len(b) + 1) for _ in range(2))
        b[i:i] = b[i:j]
    return bytes(b), m


def _mutate_header(rng, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    ndim = b[3]
    m = rng.choice(["code", "ndim", "dim", "huge-dims", "zero-dim"])
    if m == "code":
        b[2] = rng.randrange(256)
    elif m == "ndim":
        b[3] = rng.choice([0, 1, 5, 32, 33, 64, 65, 128, 255, rng.randrange(256)])
        if rng.random() < 0.5:   # and enough bytes that the header is whole
            b += rng.randbytes(4 * b[3])
    elif m == "dim" and ndim:
        i = rng.randrange(ndim)
        b[4 + 4 * i:8 + 4 * i] = struct.pack(">I", rng.choice(INTERESTING_DIMS + [rng.getrandbits(32)]))
    elif m == "huge-dims":
        # 2^40 items or more declared over a payload of a few bytes: must be refused
        # from the header, never allocated
        nd = rng.choice([1, 2, 3, 4, 8])
        per = [2 ** 40] if nd == 1 else [1 << (40 // nd + 1)] * nd
        per = [min(p, 2 ** 32 - 1) for p in per]
        code = rng.choice(CODES)
        b = bytearray(bytes([0, 0, code, nd]) + b"".join(struct.pack(">I", p) for p in per))
        b += rng.randbytes(rng.choice([0, 1, 64, 4096]))
    elif m == "zero-dim":
        # a zero dim beside huge ones: 0 items, but a shape numpy cannot make
        nd = rng.choice([2, 3, 4, 6])
        per = [rng.choice([0, 2 ** 32 - 1, 2 ** 31, 2 ** 20]) for _ in range(nd)]
        per[rng.randrange(nd)] = 0
        b = bytearray(bytes([0, 0, rng.choice(CODES), nd]) + b"".join(struct.pack(">I", p) for p in per))
    return bytes(b), m


class IdxTarget(harness.Target):
    name = "idx"
    script = os.path.abspath(__file__)
    suffix = ".idx"
    clean = (ValueError,)
    message_prefix = "read_idx"
    mem_limit_mb = 4096
    rss_limit_mb = 256

    def setup(self):
        import numpy as np
        from edgetrain.data import idx
        self.np, self.idx = np, idx
        self._zeros = None

    def _gz_bomb(self, rng, declared: int, zeros=BOMB_BYTES) -> bytes:
        """A u8 file declaring `declared` items, then `zeros` zero bytes: gzip
        members may be concatenated, so one compressed 16 MiB zero member
        repeated inflates ~1000x and costs nothing to make."""
        if self._zeros is None:
            self._zeros = gzip.compress(bytes(1 << 24), compresslevel=9, mtime=0)
        head = bytes([0, 0, 0x08, 1]) + struct.pack(">I", declared)
        return gzip.compress(head, mtime=0) + self._zeros * (zeros >> 24)

    def generate(self, rng):
        r = rng.random()
        base = valid_idx(rng)
        if r < 0.05:
            return base, "valid"
        if r < 0.40:
            return _mutate_bytes(rng, base)
        if r < 0.65:
            return _mutate_header(rng, base)
        if r < 0.70:
            return rng.randbytes(rng.choice([0, 1, 3, 4, 8, 64, 512])), "random"
        if r < 0.75:
            return bytes([0, 0, rng.randrange(256), rng.randrange(256)]) + \
                rng.randbytes(rng.randrange(600)), "random-header"
        if r < 0.87:
            inner, m = (_mutate_header if rng.random() < 0.5 else _mutate_bytes)(rng, base)
            return gzip.compress(inner, compresslevel=1, mtime=0), f"gz+{m}"
        if r < 0.98:
            data, m = _mutate_bytes(rng, gzip.compress(base, compresslevel=1, mtime=0))
            return data, f"gzbytes+{m}"
        if r < 0.998:
            return gzip.compress(base, mtime=0) + gzip.compress(valid_idx(rng), mtime=0), "gz-concat"
        if r < 0.99995:
            # declares 1 item: refused after reading 9 bytes + 1
            return self._gz_bomb(rng, 1), "gz-bomb"
        # declares 2^32-1 items (4 GiB, more than the 384 MiB there): refused
        # after counting the stream, without buffering it (rarer: ~3 s each)
        return self._gz_bomb(rng, 2 ** 32 - 1, 384 << 20), "gz-bomb-declared"

    def execute(self, path):
        np = self.np
        a = self.idx.read_idx(path)
        # what a successful read promises (idx.py): checked, a violation is a finding
        assert isinstance(a, np.ndarray), type(a)
        assert a.dtype in [d.newbyteorder("=") for d in self.idx.IDX_DTYPES.values()], a.dtype
        assert a.dtype.isnative and a.flags.c_contiguous and a.flags.writeable
        assert a.size == int(np.prod(a.shape, dtype=object)), a.shape


TARGET = IdxTarget()

if __name__ == "__main__":
    sys.exit(harness.main(TARGET))
