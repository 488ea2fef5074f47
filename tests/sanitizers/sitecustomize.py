"""Start-up hook of every Python process that `make test-asan` / `make test-tsan`
runs (the Makefile puts tests/sanitizers/ on PYTHONPATH, so Python imports this
module at start-up, in pytest and in every subprocess a test starts: the CLI
runs, the notebook kernels, `python -c ...`).

Why: the sanitized extension is built into its own tree (build/san/asan/ or
build/san/tsan/) so that it never replaces the in-place edgetrain/_C*.so that
`make test` and everyone else's runs import. With $EDGETRAIN_C_SO set, a
finder placed first on sys.meta_path makes `import edgetrain._C` load that
file; every other module (edgetrain's Python code included) still comes from
the checkout. The build's module name is the same (PyInit__C), so an
ExtensionFileLoader can load it from any path.

If the variable names a file that does not exist, start-up fails loudly
rather than silently testing the unsanitized build.
"""
import importlib.machinery
import importlib.util
import os
import sys

_SO = os.environ.get("EDGETRAIN_C_SO")


class _SanitizedExtension:
    """Meta-path finder for the one module edgetrain._C."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "edgetrain._C":
            return None
        loader = importlib.machinery.ExtensionFileLoader(name, _SO)
        return importlib.util.spec_from_file_location(name, _SO, loader=loader)


if _SO:
    if not os.path.isfile(_SO):
        sys.stderr.write(f"sitecustomize: EDGETRAIN_C_SO={_SO} is not a file "
                         "(build it with `make test-asan` / `make test-tsan`)\n")
        raise SystemExit(2)
    sys.meta_path.insert(0, _SanitizedExtension)
