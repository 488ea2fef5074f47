/* status.c - thread-local error messages; see status.h. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char et_errmsg[ET_ERRMSG_MAX];

et_status et_error(et_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(et_errmsg, sizeof et_errmsg, fmt, ap);
    va_end(ap);
    return st;
}

const char *et_error_message(void) { return et_errmsg; }

void et_error_set_message(const char *msg)
{
    if (!msg) msg = "";
    snprintf(et_errmsg, sizeof et_errmsg, "%s", msg);
}

void et_error_clear(void) { et_errmsg[0] = '\0'; }

const char *et_status_name(et_status st)
{
    switch (st) {
    case ET_OK: return "ok";
    case ET_ERR_VALUE: return "value error";
    case ET_ERR_TYPE: return "type error";
    case ET_ERR_UNSUPPORTED: return "unsupported";
    case ET_ERR_NOMEM: return "out of memory";
    case ET_ERR_BACKEND: return "backend error";
    case ET_ERR_CANCELLED: return "cancelled";
    case ET_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}
