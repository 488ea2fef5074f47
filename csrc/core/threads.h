/* OpenMP thread count of the threads that run edgetrain's kernels. */
#ifndef ET_CORE_THREADS_H
#define ET_CORE_THREADS_H

/* Lower the calling thread's OpenMP thread count to OMP_THREAD_LIMIT when the
 * count asked for (OMP_NUM_THREADS, or one per core) is above it.
 *
 * Why: libgomp caps every team at the thread limit, but omp_get_max_threads()
 * still answers the larger count. oneDNN 2.6 (Debian's) sizes its work split
 * from omp_get_max_threads() and then runs in the smaller team, so parts of the
 * output are never computed: with OMP_THREAD_LIMIT=1 on 2 cores a 64x300x50
 * f32 matmul came back with errors of 1e24 (tests/test_errors.py checks it).
 * The count is a per-thread setting, so the main thread (module init) and the
 * queue worker (at its start) each call this. Returns the count in force. */
int et_threads_respect_limit(void);

#endif
