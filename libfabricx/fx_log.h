/*
 * Logging: one line per message, "host:pid:tid rank R [SUBSYS] LEVEL message", to stderr or to
 * FX_DEBUG_FILE. The level (FX_DEBUG) and subsystem mask (FX_DEBUG_SUBSYS) are read once, at
 * the first message. The macros test the level before formatting and keep errno.
 * Usable from every layer (core, transports, tools through the library).
 */
#ifndef FX_LOG_H
#define FX_LOG_H

#include <stdbool.h>

enum fx_log_level {
    FX_LOG_NONE  = 0,
    FX_LOG_WARN  = 1,
    FX_LOG_INFO  = 2,
    FX_LOG_TRACE = 3,
};

enum fx_log_subsys {
    FX_SUB_INIT = 1u << 0,
    FX_SUB_BOOT = 1u << 1,
    FX_SUB_COLL = 1u << 2,
    FX_SUB_NET  = 1u << 3,
    FX_SUB_TOPO = 1u << 4,
    FX_SUB_MEM  = 1u << 5,
    FX_SUB_ENV  = 1u << 6,
    FX_SUB_ALL  = 0x7fu,
};

/* Parses FX_DEBUG / FX_DEBUG_SUBSYS / FX_DEBUG_FILE on first use; true if the message passes. */
bool fx_log_enabled(enum fx_log_level level, unsigned subsys);

void fx_log_write(enum fx_log_level level, unsigned subsys, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sets the rank shown in this thread's log lines (-1: none). */
void fx_log_set_rank(int rank);
int fx_log_get_rank(void);

#define fx_log_(level, subsys, ...)                                                                \
    do {                                                                                           \
        if (fx_log_enabled((level), (subsys))) {                                                   \
            fx_log_write((level), (subsys), __FILE__, __LINE__, __VA_ARGS__);                      \
        }                                                                                          \
    } while (0)

#define fx_warn(subsys, ...)  fx_log_(FX_LOG_WARN, (subsys), __VA_ARGS__)
#define fx_info(subsys, ...)  fx_log_(FX_LOG_INFO, (subsys), __VA_ARGS__)
#define fx_trace(subsys, ...) fx_log_(FX_LOG_TRACE, (subsys), __VA_ARGS__)

/* Internal invariants only, never user input: logs and aborts. */
#define FX_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fx_log_assert_fail(#cond, __FILE__, __LINE__);                                         \
        }                                                                                          \
    } while (0)

_Noreturn void fx_log_assert_fail(const char *expr, const char *file, int line);

#endif /* FX_LOG_H */
