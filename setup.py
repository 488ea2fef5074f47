"""Builds edgetrain._C, the C core (csrc/), against NumPy, OpenBLAS and oneDNN.

Every .c file under csrc/ is compiled, except csrc/tests/ (the sanitizer test
drivers); the backends that need a library (blas: OpenBLAS's cblas.h, onednn:
oneapi/dnnl/dnnl.h) are compiled only when its header is present, and say so
through ET_HAVE_BLAS / ET_HAVE_ONEDNN.
`make build` installs both libraries (Debian's libopenblas-dev, libdnnl-dev).
"""
import glob
import os

import numpy
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def have_header(*candidates):
    return any(os.path.exists(p) for p in candidates)


# csrc/tests/ holds the sanitizer drivers (programs with a main(), built by
# `make test-asan` / `make test-tsan`), not part of the extension.
sources = sorted(s for s in glob.glob(os.path.join("csrc", "**", "*.c"), recursive=True)
                 if not s.startswith(os.path.join("csrc", "tests", "")))
define_macros = []
libraries = ["m", "pthread"]
include_dirs = [numpy.get_include(), "csrc"]

if have_header("/usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h",
               "/usr/include/x86_64-linux-gnu/cblas.h", "/usr/include/cblas.h"):
    define_macros.append(("ET_HAVE_BLAS", "1"))
    libraries.append("openblas")
    include_dirs.append("/usr/include/x86_64-linux-gnu/openblas-pthread")
else:
    sources = [s for s in sources if not s.endswith(os.path.join("backends", "blas.c"))]

if have_header("/usr/include/oneapi/dnnl/dnnl.h"):
    define_macros.append(("ET_HAVE_ONEDNN", "1"))
    libraries.append("dnnl")
else:
    sources = [s for s in sources if not s.endswith(os.path.join("backends", "onednn.c"))]

extra_compile_args = ["-O3", "-std=c11", "-fopenmp", "-Wall", "-Wextra",
                      "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                      "-fno-strict-aliasing", "-D_GNU_SOURCE"]
# -march=native: the build runs on the machine that trains (edge devices build
# for themselves); ET_MARCH= (empty) turns it off for a portable build.
march = os.environ.get("ET_MARCH", "native")
if march:
    extra_compile_args.append("-march=" + march)
extra_compile_args += os.environ.get("ET_CFLAGS", "").split()
extra_link_args = ["-fopenmp"] + os.environ.get("ET_LDFLAGS", "").split()

setup(
    ext_modules=[Extension(
        "edgetrain._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        libraries=libraries,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )],
)
