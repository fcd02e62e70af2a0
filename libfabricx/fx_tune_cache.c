/* The per-host cache of the cost model's parameters (fx_tune_cache.h). */
#include "fx_tune_cache.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER "libfabricx tune cache v1\n"

struct entry {
    uint64_t key;
    int64_t stamp;
    double v[3];
};

uint64_t fx_tune_hash(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

bool fx_tune_cache_path(const char *dir, const char *host, char *out, size_t outlen)
{
    const char *xdg  = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char name[96];
    size_t n = 0;
    int len;

    out[0] = '\0';
    for (const char *h = host; *h != '\0' && n + 1 < sizeof(name); h++) {
        char ch   = *h;
        bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';

        name[n++] = keep ? ch : '_';
    }
    name[n] = '\0';
    if (strcmp(dir, "none") == 0) {
        return false;
    }
    if (dir[0] != '\0') {
        len = snprintf(out, outlen, "%s/tune-%s.txt", dir, name);
    } else if (xdg != NULL && xdg[0] == '/') {
        len = snprintf(out, outlen, "%s/libfabricx/tune-%s.txt", xdg, name);
    } else if (home != NULL && home[0] == '/') {
        len = snprintf(out, outlen, "%s/.cache/libfabricx/tune-%s.txt", home, name);
    } else {
        return false;
    }
    if (len < 0 || (size_t)len >= outlen) {
        out[0] = '\0';
        return false;
    }
    return true;
}

/* Parses one entry line; false for anything else. */
static bool parse_line(const char *line, struct entry *e)
{
    char tail;

    if (sscanf(line, "%16" SCNx64 " %" SCNd64 " %lg %lg %lg %c", &e->key, &e->stamp, &e->v[0],
               &e->v[1], &e->v[2], &tail) != 5) {
        return false;
    }
    for (int i = 0; i < 3; i++) {
        if (!(e->v[i] >= 0 && e->v[i] < 1e3)) { /* NaN fails too */
            return false;
        }
    }
    return true;
}

static bool fresh(const struct entry *e, int64_t now, int64_t max_age_s)
{
    return e->stamp <= now && now - e->stamp <= max_age_s;
}

/* Reads up to max entries of the file (none when it is missing or not ours). */
static size_t read_entries(const char *path, struct entry *out, size_t max)
{
    FILE *f = fopen(path, "r");
    char line[256];
    size_t n = 0;

    if (f == NULL) {
        return 0;
    }
    if (fgets(line, sizeof(line), f) != NULL && strcmp(line, HEADER) == 0) {
        while (n < max && fgets(line, sizeof(line), f) != NULL) {
            n += parse_line(line, &out[n]);
        }
    }
    fclose(f);
    return n;
}

bool fx_tune_cache_lookup(const char *path, uint64_t key, int64_t now, int64_t max_age_s,
                          double v[3])
{
    struct entry e[FX_TUNE_CACHE_MAX_ENTRIES];
    size_t n = read_entries(path, e, FX_TUNE_CACHE_MAX_ENTRIES);

    for (size_t i = n; i-- > 0;) { /* the newest line of a key wins */
        if (e[i].key == key && fresh(&e[i], now, max_age_s)) {
            memcpy(v, e[i].v, sizeof(e[i].v));
            return true;
        }
    }
    return false;
}

/* mkdir -p of path's directory, 0700 for what it creates. */
static int make_dirs(const char *path)
{
    char dir[4096];
    char *slash;

    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir) ||
        (slash = strrchr(dir, '/')) == NULL) {
        errno = ENAMETOOLONG;
        return -1;
    }
    *slash = '\0';
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
                return -1;
            }
            *p = '/';
        }
    }
    return mkdir(dir, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

fx_status fx_tune_cache_store(const char *path, uint64_t key, int64_t now, int64_t max_age_s,
                              const double v[3], char *err, size_t errlen)
{
    struct entry e[FX_TUNE_CACHE_MAX_ENTRIES + 1];
    size_t n    = read_entries(path, e, FX_TUNE_CACHE_MAX_ENTRIES);
    size_t kept = 0;
    size_t first;
    char tmp[4200];
    FILE *f;
    bool bad;
    int fd;

    for (size_t i = 0; i < n; i++) { /* file order is oldest first */
        if (e[i].key != key && fresh(&e[i], now, max_age_s)) {
            e[kept++] = e[i];
        }
    }
    e[kept].key   = key;
    e[kept].stamp = now;
    memcpy(e[kept].v, v, sizeof(e[kept].v));
    kept++;
    first = kept > FX_TUNE_CACHE_MAX_ENTRIES ? kept - FX_TUNE_CACHE_MAX_ENTRIES : 0;
    if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp)) {
        snprintf(err, errlen, "tune cache %s: path too long", path);
        return FX_ERR_SYSTEM;
    }
    if (make_dirs(path) != 0 || (fd = mkstemp(tmp)) < 0) {
        snprintf(err, errlen, "tune cache %s: %s", path, strerror(errno));
        return FX_ERR_SYSTEM;
    }
    if ((f = fdopen(fd, "w")) == NULL) {
        snprintf(err, errlen, "tune cache %s: %s", path, strerror(errno));
        close(fd);
        unlink(tmp);
        return FX_ERR_SYSTEM;
    }
    fputs(HEADER, f);
    for (size_t i = first; i < kept; i++) {
        fprintf(f, "%016" PRIx64 " %" PRId64 " %.9e %.9e %.9e\n", e[i].key, e[i].stamp, e[i].v[0],
                e[i].v[1], e[i].v[2]);
    }
    bad = ferror(f) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err, errlen, "tune cache %s: %s", path, strerror(errno));
        unlink(tmp);
        return FX_ERR_SYSTEM;
    }
    return FX_OK;
}
