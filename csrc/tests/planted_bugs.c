/* planted_bugs.c - bugs on purpose, for the self-checks of `make test-asan` /
 * `make test-tsan` (tests/sanitizers/run.sh). Built twice as a shared library,
 * with the flags of the sanitized extension, and called through ctypes from
 * the Python process the suite runs in (same preloaded runtime, same
 * *SAN_OPTIONS, same report files): each call must end in a sanitizer report
 * that fails the run, or the run is not testing what it claims. Not part of
 * the extension (setup.py skips csrc/tests/).
 */
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* ASan: writes one byte past a 16-byte heap block (heap-buffer-overflow).
 * The pointer goes through a volatile variable so that the compiler cannot
 * see the block's size: UBSan's object-size check would report it first. */
int et_planted_heap_overflow(int n)
{
    unsigned char *volatile hidden = malloc(16);
    unsigned char *p = hidden;
    if (!p) return -1;
    p[16 + n] = 1;
    int v = p[0];
    free(p);
    return v;
}

/* UBSan: signed integer overflow for x > 0. */
int et_planted_signed_overflow(int x)
{
    volatile int big = INT_MAX;
    return big + x;
}

/* TSan: an unsynchronised counter, for two threads calling this at once
 * (ctypes releases the GIL around the call). Each first waits until the other
 * has arrived, through relaxed atomics, which order nothing: otherwise the
 * first thread could finish before the second starts, and the GIL hand-offs
 * in between would order the two loops (no race to report). */
static int64_t planted_counter;
static atomic_int planted_arrived;

int64_t et_planted_race(int n)
{
    atomic_fetch_add_explicit(&planted_arrived, 1, memory_order_relaxed);
    while (atomic_load_explicit(&planted_arrived, memory_order_relaxed) < 2) {}
    for (int i = 0; i < n; i++) planted_counter++;
    return planted_counter;
}
