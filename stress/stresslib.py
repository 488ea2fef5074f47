"""What the stress scripts share: the checkout they test, the MNIST 10k subset,
a description of the machine, /proc readings, and records written atomically
(JSON + Markdown) under benchmarks/results/stress/."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The scripts test this checkout's edgetrain, not whichever one the venv's .pth
# names: the checkout goes first on sys.path (and on the children's PYTHONPATH).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "stress"
# as tests/conftest.py: <repo>/../shared/data/mnist10k, or $EDGETRAIN_MNIST10K
MNIST10K = Path(os.environ.get("EDGETRAIN_MNIST10K",
                               REPO.parent / "shared" / "data" / "mnist10k"))
SHARED_NOTE = ("The machine was shared with other workers (a background accuracy run at "
               "nice 10 and other developers' builds and tests), so wall-clock times "
               "fluctuate with their load; rules compare medians for that reason.")


def child_env():
    """Environment of child processes: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def data_dir(path=None):
    d = Path(path) if path else MNIST10K
    if not (d / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"MNIST 10k subset not found at {d} (expected "
                         "<repo>/../shared/data/mnist10k, $EDGETRAIN_MNIST10K or --data-dir)")
    return d


def proc_status_kib(field, pid="self"):
    """A `VmRSS:`-style field of /proc/PID/status, in KiB (None where absent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class _Mallinfo2:
    """glibc's mallinfo2() (bytes the heap arenas hold / have handed out), read with
    ctypes; None elsewhere. Tells a leak (in-use bytes grow) from fragmentation
    (the arenas grow, their free bytes with them)."""
    fn = None

    @classmethod
    def read(cls):
        if cls.fn is None:
            try:
                import ctypes

                class MI2(ctypes.Structure):
                    _fields_ = [(n, ctypes.c_size_t) for n in (
                        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                        "fsmblks", "uordblks", "fordblks", "keepcost")]
                f = ctypes.CDLL("libc.so.6").mallinfo2
                f.restype = MI2
                cls.fn = f
            except (OSError, AttributeError):
                cls.fn = False
        if not cls.fn:
            return None
        m = cls.fn()
        # arena: bytes of the sbrk/arena heaps; hblkhd: bytes in mmapped chunks;
        # uordblks: bytes allocated (in use) in the arenas
        return {"arena": m.arena, "mmapped": m.hblkhd, "in_use": m.uordblks}


def mallinfo():
    return _Mallinfo2.read()


def loadavg():
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def machine():
    """What ran the test: CPU, cores, memory, kernel, Python and library versions."""
    import numpy as np

    import edgetrain as et
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", open("/proc/meminfo").read(), re.M)
        mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "edgetrain": et.__version__,
        "edgetrain_path": str(Path(et.__file__).parent),
        "backend": et.get_backend(),
        "backends": et.backends(),
        "nice": os.nice(0),
        "shared": True,
        "note": SHARED_NOTE,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def write_record(name, record, markdown, out_dir=None, extra=None):
    """OUT_DIR/NAME.json and OUT_DIR/NAME.md (and `extra`: {filename: bytes}),
    each written atomically (temporary file, fsync, rename). Returns the paths."""
    from edgetrain.checkpoint import atomic_write
    d = Path(out_dir) if out_dir else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, indent=1) + "\n").encode("utf-8")
    paths = [d / f"{name}.json", d / f"{name}.md"]
    atomic_write(paths[0], lambda f: f.write(data))
    atomic_write(paths[1], lambda f: f.write(markdown.encode("utf-8")))
    for fname, blob in (extra or {}).items():
        atomic_write(d / fname, lambda f, b=blob: f.write(b))
        paths.append(d / fname)
    return paths


def machine_md(m):
    return (f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
            f"Linux {m['kernel']}, Python {m['python']}, NumPy {m['numpy']}, "
            f"edgetrain {m['edgetrain']} (backend {m['backend']}), nice {m['nice']}\n"
            f"- {m['note']}\n")
