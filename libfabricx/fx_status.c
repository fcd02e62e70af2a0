/* fx_strerror and friends, generated from FX_STATUS_MAP in fabricx.h. */
#include "fabricx.h"

#include <stdarg.h>
#include <stdio.h>

#include "fx_config_build.h"
#include "fx_status_int.h"

FX_API const char *fx_strerror(fx_status s)
{
    switch (s) {
#define FX_STATUS_CASE_(name, value, text)                                                         \
    case FX_##name:                                                                                \
        return text;
        FX_STATUS_MAP(FX_STATUS_CASE_)
#undef FX_STATUS_CASE_
    }
    return "unknown status";
}

FX_API int fx_get_version(void)
{
    return FX_VERSION_CODE;
}

static _Thread_local char last_error[512];

fx_status fx_set_last_error(fx_status status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

FX_API const char *fx_last_error(void)
{
    return last_error;
}
