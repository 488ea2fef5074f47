/* bind_quant.c - placeholder until the quantizers land (low-precision issue);
 * registers nothing. */
#include "common.h"

int et_py_init_quant(PyObject *m)
{
    (void)m;
    return 0;
}
