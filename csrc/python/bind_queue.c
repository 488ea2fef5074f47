/* bind_queue.c - placeholder until this part lands; registers nothing. */
#include "common.h"

int et_py_init_queue(PyObject *m)
{
    (void)m;
    return 0;
}
