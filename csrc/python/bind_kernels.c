/* bind_kernels.c - placeholder until this part lands; registers nothing. */
#include "common.h"

int et_py_init_kernels(PyObject *m)
{
    (void)m;
    return 0;
}
