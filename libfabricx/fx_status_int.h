/* Internal error helpers: the per-thread last error of calls without a communicator. */
#ifndef FX_STATUS_INT_H
#define FX_STATUS_INT_H

#include "fabricx.h"

/* Records the text as the calling thread's last error (fx_last_error) and returns status. */
fx_status fx_set_last_error(fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* FX_STATUS_INT_H */
