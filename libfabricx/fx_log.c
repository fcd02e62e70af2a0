/*
 * The logger. Settings come from FX_DEBUG, FX_DEBUG_SUBSYS and FX_DEBUG_FILE, read once. Lines
 * are written with one write(2) each so that ranks sharing a terminal do not interleave
 * mid-line. A FX_DEBUG_FILE name with %p is opened again in a forked child, under the child's
 * pid: ranks forked from one launcher process each get their own file.
 */
#include "fx_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_once_t log_once     = PTHREAD_ONCE_INIT;
static enum fx_log_level log_level = FX_LOG_WARN;
static unsigned log_mask           = FX_SUB_ALL;
static int log_fd                  = STDERR_FILENO;
static char log_host[64];
static _Thread_local int log_rank = -1;

static const struct {
    const char *name;
    unsigned bit;
} subsys_names[] = {
    {"INIT", FX_SUB_INIT}, {"BOOT", FX_SUB_BOOT}, {"COLL", FX_SUB_COLL}, {"NET", FX_SUB_NET},
    {"TOPO", FX_SUB_TOPO}, {"MEM", FX_SUB_MEM},   {"ENV", FX_SUB_ENV},   {"ALL", FX_SUB_ALL},
};

static unsigned parse_subsys(const char *s)
{
    unsigned mask = 0;
    char buf[256];
    char *save  = NULL;
    bool negate = false;

    snprintf(buf, sizeof(buf), "%s", s);
    if (buf[0] == '^') {
        negate = true;
        buf[0] = ',';
    }
    for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        for (size_t i = 0; i < sizeof(subsys_names) / sizeof(subsys_names[0]); i++) {
            if (strcasecmp(tok, subsys_names[i].name) == 0) {
                mask |= subsys_names[i].bit;
            }
        }
    }
    return negate ? (FX_SUB_ALL & ~mask) : mask;
}

/* Expands %h (host) and %p (pid) in FX_DEBUG_FILE. */
static void expand_path(const char *pattern, char *out, size_t len)
{
    size_t o = 0;

    for (const char *p = pattern; *p != '\0' && o + 1 < len; p++) {
        if (p[0] == '%' && p[1] == 'h') {
            o += (size_t)snprintf(out + o, len - o, "%s", log_host);
            p++;
        } else if (p[0] == '%' && p[1] == 'p') {
            o += (size_t)snprintf(out + o, len - o, "%d", (int)getpid());
            p++;
        } else {
            out[o++] = *p;
        }
        if (o >= len) {
            o = len - 1;
        }
    }
    out[o] = '\0';
}

static char log_pattern[512]; /* FX_DEBUG_FILE when it holds %p, else empty */

static int open_log(const char *pattern)
{
    char path[512];

    expand_path(pattern, path, sizeof(path));
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* pthread_atfork child handler: the child writes to a file named with its own pid. */
static void reopen_in_child(void)
{
    int fd = open_log(log_pattern);

    if (fd >= 0) {
        if (log_fd != STDERR_FILENO) {
            close(log_fd);
        }
        log_fd = fd;
    }
}

static void log_setup(void)
{
    const char *level  = getenv("FX_DEBUG");
    const char *subsys = getenv("FX_DEBUG_SUBSYS");
    const char *file   = getenv("FX_DEBUG_FILE");

    if (gethostname(log_host, sizeof(log_host)) != 0) {
        snprintf(log_host, sizeof(log_host), "unknown");
    }
    log_host[sizeof(log_host) - 1] = '\0';
    if (level != NULL) {
        if (strcasecmp(level, "NONE") == 0) {
            log_level = FX_LOG_NONE;
        } else if (strcasecmp(level, "INFO") == 0) {
            log_level = FX_LOG_INFO;
        } else if (strcasecmp(level, "TRACE") == 0) {
            log_level = FX_LOG_TRACE;
        } else {
            log_level = FX_LOG_WARN;
        }
    }
    if (subsys != NULL && subsys[0] != '\0') {
        log_mask = parse_subsys(subsys);
    }
    if (file != NULL && file[0] != '\0') {
        int fd = open_log(file);

        if (fd >= 0) {
            log_fd = fd;
            if (strstr(file, "%p") != NULL && strlen(file) < sizeof(log_pattern)) {
                snprintf(log_pattern, sizeof(log_pattern), "%s", file);
                pthread_atfork(NULL, NULL, reopen_in_child);
            }
        }
    }
}

bool fx_log_enabled(enum fx_log_level level, unsigned subsys)
{
    pthread_once(&log_once, log_setup);
    return level <= log_level && (subsys & log_mask) != 0;
}

static const char *subsys_name(unsigned subsys)
{
    for (size_t i = 0; i < sizeof(subsys_names) / sizeof(subsys_names[0]); i++) {
        if (subsys_names[i].bit == subsys) {
            return subsys_names[i].name;
        }
    }
    return "ALL";
}

void fx_log_write(enum fx_log_level level, unsigned subsys, const char *file, int line,
                  const char *fmt, ...)
{
    static const char *const level_names[] = {"NONE", "WARN", "INFO", "TRACE"};
    int saved_errno                        = errno;
    char buf[1024];
    size_t n;
    va_list ap;
    const char *base = strrchr(file, '/');

    n = (size_t)snprintf(buf, sizeof(buf), "%s:%d:%ld rank %d [%s] %s ", log_host, (int)getpid(),
                         (long)syscall(SYS_gettid), log_rank, subsys_name(subsys),
                         level_names[level]);
    va_start(ap, fmt);
    if (n < sizeof(buf)) {
        n += (size_t)vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
    }
    va_end(ap);
    if (level == FX_LOG_TRACE && n < sizeof(buf)) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, " (%s:%d)", base ? base + 1 : file, line);
    }
    if (n >= sizeof(buf) - 1) {
        n = sizeof(buf) - 2;
    }
    buf[n++] = '\n';
    if (write(log_fd, buf, n) < 0) {
        /* Nowhere left to report it. */
    }
    errno = saved_errno;
}

void fx_log_set_rank(int rank)
{
    log_rank = rank;
}

int fx_log_get_rank(void)
{
    return log_rank;
}

_Noreturn void fx_log_assert_fail(const char *expr, const char *file, int line)
{
    fx_log_write(FX_LOG_WARN, FX_SUB_ALL, file, line, "assertion failed: %s at %s:%d", expr, file,
                 line);
    abort();
}
