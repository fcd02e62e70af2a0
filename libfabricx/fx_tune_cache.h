/*
 * The per-host cache of the cost model's measured parameters (fx_tune.h, docs/collectives.md).
 *
 * A text file per host, `tune-<host>.txt` in FX_TUNE_CACHE's directory (default
 * $XDG_CACHE_HOME/libfabricx, else $HOME/.cache/libfabricx): a header line, then one line per job
 * shape, "<key> <unix time> <latency s> <s per byte of link> <s per byte of reduction>". The key
 * hashes what the measurement depends on: every rank's host and transports in ring order, the
 * settings that change the transports' speed and the reduction kernel set. An entry older than a
 * day is measured again. Lines that do not parse are ignored, so a damaged file costs a
 * measurement, never a wrong model. Writers replace the file whole (a temporary file renamed
 * over it), so readers never see half of one; two jobs writing at once may lose one's entry.
 */
#ifndef FX_TUNE_CACHE_H
#define FX_TUNE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

#define FX_TUNE_CACHE_MAX_AGE_S   (24 * 3600)
#define FX_TUNE_CACHE_MAX_ENTRIES 64

/* FNV-1a: folds len bytes into h (start from FX_TUNE_HASH_INIT). */
#define FX_TUNE_HASH_INIT 0xcbf29ce484222325ull
uint64_t fx_tune_hash(uint64_t h, const void *data, size_t len);

/*
 * The cache file for host: dir (FX_TUNE_CACHE; "" for the default) joined with
 * "tune-<host>.txt", the host's characters outside [A-Za-z0-9._-] replaced by '_'. False when
 * caching is off (dir "none") or no directory is known (no HOME); out is then "".
 */
bool fx_tune_cache_path(const char *dir, const char *host, char *out, size_t outlen);

/* True with v[0..3) set when path holds key, stamped within max_age_s before now (and not
 * after it: a clock that went back does not keep an entry forever). */
bool fx_tune_cache_lookup(const char *path, uint64_t key, int64_t now, int64_t max_age_s,
                          double v[3]);

/*
 * Stores key -> v stamped now, replacing the key's old entry, dropping entries older than
 * max_age_s and, beyond FX_TUNE_CACHE_MAX_ENTRIES, the oldest. Creates the directory (0700) when
 * missing. FX_OK, or FX_ERR_SYSTEM with err naming the file and the cause.
 */
fx_status fx_tune_cache_store(const char *path, uint64_t key, int64_t now, int64_t max_age_s,
                              const double v[3], char *err, size_t errlen);

#endif /* FX_TUNE_CACHE_H */
