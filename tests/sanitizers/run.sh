#!/usr/bin/env bash
# The sanitized test runs of issue 6, called by the Makefile once it has built
# what they need (`make test-asan`, `make test-tsan`; the Makefile's comment
# says why the sanitized extension lives in build/san/ and not in place).
#
#   run.sh asan   AddressSanitizer + UndefinedBehaviorSanitizer:
#                 1. 1,000,000 queue jobs under LeakSanitizer
#                    (csrc/tests/queue_leak.c), and unsanitized for RSS
#                 2. the threaded queue stress (csrc/tests/queue_stress.c)
#                 3. the whole pytest suite with the ASan+UBSan build of
#                    edgetrain._C, libasan preloaded into the (uninstrumented)
#                    python; two tests deselected, reasons below
#   run.sh tsan   ThreadSanitizer:
#                 1. csrc/tests/queue_stress.c
#                 2. the queue and threading tests (test_queue.py,
#                    test_profiler.py) and the op tests whose every product
#                    goes through the queue (test_backends.py,
#                    test_conv_linear_ops.py) with the TSan build of _C
#
# Each part first shows that its sanitizer is live and fails the run: a
# planted bug (csrc/tests/planted_bugs.c, queue_leak --plant-leak,
# queue_stress --plant-race) must be reported, in the same kind of process and
# with the same options as the real run, or the run fails. Any sanitizer
# report fails the run: the runtimes stop the process at the first report
# (halt_on_error, -fno-sanitize-recover=undefined) and write it under
# build/san/logs-*/; after each step any file there fails the run too, which
# also catches a report in a subprocess whose failure a test expected anyway
# (the CLI tests of user errors exit non-zero on purpose).
#
# Environment (the Makefile passes them): PY, SAN_DIR (build/san), SAN_CC
# (gcc: the compiler that built the sanitized code; its runtimes are
# preloaded), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode=${1:?usage: run.sh asan|tsan}
PY=${PY:-.venv/bin/python}
SAN_DIR=${SAN_DIR:-build/san}
SAN_CC=${SAN_CC:-gcc}
ROOT=$PWD
SAN=$ROOT/$SAN_DIR
LOGS=$SAN/logs-$mode
rm -rf "$LOGS"
mkdir -p "$LOGS"
T_START=$SECONDS

say() { printf '\n== %s: %s\n' "$mode" "$*"; }
die() { printf '%s: FAILED: %s\n' "$mode" "$*" >&2; exit 1; }

# Not a finding: the tests of out-of-memory errors (test_errors.py) ask for
# blocks of 2^49+ bytes on purpose; with allocator_may_return_null=1 ASan
# returns NULL, as glibc does (the MemoryError those tests check), and notes
# this line in its log.
BENIGN='^==[0-9]+==WARNING: AddressSanitizer failed to allocate 0x[0-9a-f]+ bytes$'

# Fails (printing them) if the sanitizers wrote any report.
check_logs() {
    local f found=0
    for f in $(find "$LOGS" -type f | sort); do
        if grep -Evq "$BENIGN" "$f"; then
            printf '\n----- %s\n' "$f" >&2
            cat "$f" >&2
            found=1
        else
            rm -f "$f"
        fi
    done
    [ "$found" = 0 ] || die "sanitizer report(s) above (from $1)"
}

# Runs "$@", which must FAIL with a report matching $pattern (the planted
# bug): proof that the sanitizer is live and that its report fails a run.
expect_report() {
    local pattern=$1; shift
    local out=$SAN/expect-$mode.out
    # (the group's 2>/dev/null: no "Aborted" line from bash for the planted abort)
    if { "$@" >"$out" 2>&1; } 2>/dev/null; then
        cat "$out" >&2
        die "'$*' exited 0: its planted bug was not reported"
    fi
    # shellcheck disable=SC2046
    grep -q -- "$pattern" "$out" $(find "$LOGS" -type f) ||
        { cat "$out" "$LOGS"/* >&2 2>/dev/null; die "'$*' failed without a '$pattern' report"; }
    echo "planted bug reported, as it must be: $pattern"
    rm -f "$LOGS"/*   # the planted report is not a finding
}

# Runs a step and prints its wall time; fails the run if it failed or if a
# sanitizer wrote a report (printing them: the runtimes write to $LOGS only).
step() {
    local name=$1; shift
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    echo "($name: $(( SECONDS - t0 )) s)"
    check_logs "$name"
    [ "$rc" -eq 0 ] || die "$name exited with status $rc"
}

ext_so() {   # the sanitized build of edgetrain._C under $SAN/$1
    local so
    so=$(ls "$SAN/$1"/edgetrain/_C*.so 2>/dev/null | head -n 1)
    [ -n "$so" ] || die "no $SAN_DIR/$1/edgetrain/_C*.so (make test-$mode builds it)"
    echo "$so"
}

runtime() {   # the compiler's sanitizer runtime $1 (libasan.so, libtsan.so)
    local lib
    lib=$("$SAN_CC" -print-file-name="$1")
    [ -e "$lib" ] || die "no $1 for $SAN_CC (Debian: libasan8 / libtsan2)"
    echo "$lib"
}

# Python side: tests/sanitizers/sitecustomize.py loads $EDGETRAIN_C_SO as
# edgetrain._C, in pytest and in every Python subprocess of the tests.
python_env() {   # $1: the sanitizer runtime to preload
    export PYTHONPATH=$ROOT/tests/sanitizers${PYTHONPATH:+:$PYTHONPATH}
    # libstdc++ right after the runtime: it must be loaded before the runtime
    # initialises its C++ interceptors (__cxa_throw), or the first C++
    # exception (matplotlib, torch, onnxruntime) is a CHECK failure; python
    # itself does not link libstdc++.
    export LD_PRELOAD=$1:$("$SAN_CC" -print-file-name=libstdc++.so.6)
    "$PY" -c "import os, edgetrain._C as C; f = os.path.realpath(C.__file__); \
want = os.path.realpath(os.environ['EDGETRAIN_C_SO']); \
assert f == want, f'edgetrain._C loaded from {f}, not {want}'; print('edgetrain._C:', f)"
}

run_pytest() {
    # shellcheck disable=SC2086
    step pytest "$PY" -m pytest -q -p no:cacheprovider "$@" ${PYTEST_ARGS:-}
}

case $mode in
asan)
    so=$(ext_so asan)
    syms=$(nm -D --undefined-only "$so")
    grep -q __asan_report_store <<<"$syms" || die "$so is not built with -fsanitize=address"
    grep -q __ubsan_handle <<<"$syms" || die "$so is not built with -fsanitize=undefined"
    libasan=$(runtime libasan.so)
    # halt_on_error (ASan's default) stops at the first report; abort_on_error
    # makes that a SIGABRT, so Python's faulthandler prints the test's stack.
    # allocator_may_return_null: a huge allocation returns NULL (MemoryError)
    # as glibc's malloc does, instead of being a report.
    common="abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
    common+=":detect_stack_use_after_return=1:log_path=$LOGS/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$LOGS/ubsan"

    say "1,000,000 queue jobs under LeakSanitizer (csrc/tests/queue_leak.c)"
    export ASAN_OPTIONS="$common:detect_leaks=1"
    expect_report "LeakSanitizer: detected memory leaks" "$SAN/queue_leak" --plant-leak
    step queue_leak "$SAN/queue_leak" --jobs 1000000
    # unsanitized: RSS without ASan's quarantine; fails on > 1 MiB growth
    step queue_leak_plain "$SAN/queue_leak_plain" --jobs 1000000 --max-rss-growth-mib 1

    say "queue stress, ASan + UBSan (csrc/tests/queue_stress.c)"
    step queue_stress_asan "$SAN/queue_stress_asan"

    say "pytest, the whole suite, with the ASan + UBSan build"
    # detect_leaks=0 in Python: CPython, NumPy and torch keep allocations until
    # exit by design (interned objects, module state, caches never freed at
    # shutdown), so LeakSanitizer would report them in every run. The C core's
    # own leak checks are queue_leak above and test_queue.py's 100k-job RSS test.
    export ASAN_OPTIONS="$common:detect_leaks=0"
    export EDGETRAIN_C_SO=$so
    python_env "$libasan"
    planted="import ctypes; lib = ctypes.CDLL('$SAN/planted_asan.so')"
    expect_report "heap-buffer-overflow" "$PY" -c "$planted; lib.et_planted_heap_overflow(0)"
    expect_report "signed integer overflow" "$PY" -c "$planted; lib.et_planted_signed_overflow(1)"
    deselect=(
        # Its 1e-3 tolerance holds only for the production build's rounding:
        # with ASan, GCC does not vectorize the ref gemm's `omp simd` dot
        # products (its checks sit in the loop), so they sum in another order
        # (fc1's output differs by 1e-6), and the 20-step LeNet trajectory
        # turns that into ~1% through max-pool ties, as the test's docstring
        # measures for torch at 1 vs 2 threads. No sanitizer report; [blas]
        # and [onednn] run the same training under ASan.
        --deselect "tests/test_training_parity.py::test_lenet_mnist_training_matches_torch[ref]"
        # Time: 2,225 s alone under ASan (the ref gemm runs scalar there, ~20x
        # slower), against 13-15 min for the whole rest of the suite (shared
        # 2-core machine). ResNet-18's ref conv/gemm shapes still run under
        # ASan in test_models.py (forward), and the same 20-step training runs
        # here on [blas] and [onednn].
        --deselect "tests/test_training_parity.py::test_resnet18_small_training_matches_torch[ref]"
    )
    run_pytest "${deselect[@]}"
    ;;
tsan)
    so=$(ext_so tsan)
    syms=$(nm -D --undefined-only "$so")
    grep -q __tsan_read <<<"$syms" || die "$so is not built with -fsanitize=thread"
    libtsan=$(runtime libtsan.so)
    # halt_on_error: exit at the first report (exit code 66).
    common="halt_on_error=1:second_deadlock_stack=1:log_path=$LOGS/tsan"

    say "queue stress under ThreadSanitizer (csrc/tests/queue_stress.c)"
    export TSAN_OPTIONS=$common
    expect_report "ThreadSanitizer: data race" "$SAN/queue_stress_tsan" --plant-race
    step queue_stress_tsan "$SAN/queue_stress_tsan" --scale 3

    say "pytest: queue, profiler and op tests with the TSan build"
    # ignore_noninstrumented_modules: python, numpy, torch, OpenBLAS and
    # oneDNN are not instrumented, and their thread pools (OpenMP, OpenBLAS's
    # spin-waits) synchronise in ways TSan cannot see, so the memset / memcpy /
    # malloc they call would look racy; with this option only calls from
    # instrumented code (edgetrain's) are checked. No suppressions otherwise.
    export TSAN_OPTIONS="$common:ignore_noninstrumented_modules=1"
    export EDGETRAIN_C_SO=$so
    python_env "$libtsan"
    expect_report "ThreadSanitizer: data race" "$PY" -c "
import ctypes, threading
lib = ctypes.CDLL('$SAN/planted_tsan.so')
ts = [threading.Thread(target=lib.et_planted_race, args=(100000,)) for _ in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]"
    run_pytest tests/test_queue.py tests/test_profiler.py tests/test_backends.py \
        tests/test_conv_linear_ops.py
    ;;
*)
    die "unknown mode '$mode' (asan or tsan)"
    ;;
esac
echo "$mode: clean ($(( SECONDS - T_START )) s)"
