#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int et_threads_respect_limit(void)
{
#ifdef _OPENMP
    const int limit = omp_get_thread_limit();
    const int want = omp_get_max_threads();
    if (limit > 0 && want > limit) {
        omp_set_num_threads(limit);
        return limit;
    }
    return want;
#else
    return 1;   /* built without OpenMP (the TSan drivers): no teams to size */
#endif
}
