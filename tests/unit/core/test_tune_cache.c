/* The per-host cache of the cost model's parameters: paths, round trips, ageing, damage. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libfabricx/fx_tune_cache.h"

#define NOW 1800000000LL
#define DAY (24 * 3600)

static char dir[64];
static char path[128];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/fx-tune-cache-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/sub/tune-h.txt", dir);
}

static void remove_dir(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

static void write_file(const char *text)
{
    char sub[96];
    FILE *f;

    snprintf(sub, sizeof(sub), "%s/sub", dir);
    mkdir(sub, 0700);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void store(uint64_t key, int64_t now, double a, double b, double g)
{
    double v[3]   = {a, b, g};
    char err[256] = "";

    cr_assert_eq(fx_tune_cache_store(path, key, now, DAY, v, err, sizeof(err)), FX_OK, "%s", err);
}

static int lines(void)
{
    FILE *f = fopen(path, "r");
    char line[256];
    int n = 0;

    cr_assert_not_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        n++;
    }
    fclose(f);
    return n;
}

TestSuite(tune_cache, .init = make_dir, .fini = remove_dir);

Test(tune_cache, path_follows_the_setting_xdg_and_home)
{
    char out[256];

    cr_expect(fx_tune_cache_path("/x/y", "node-1", out, sizeof(out)));
    cr_expect_str_eq(out, "/x/y/tune-node-1.txt");
    cr_expect(fx_tune_cache_path("/x", "a b/c:d", out, sizeof(out)));
    cr_expect_str_eq(out, "/x/tune-a_b_c_d.txt", "unsafe host characters are replaced");
    cr_expect(!fx_tune_cache_path("none", "h", out, sizeof(out)));
    cr_expect_str_eq(out, "");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    cr_expect(fx_tune_cache_path("", "h", out, sizeof(out)));
    cr_expect_str_eq(out, "/xdg/libfabricx/tune-h.txt");
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    cr_expect(fx_tune_cache_path("", "h", out, sizeof(out)));
    cr_expect_str_eq(out, "/home/u/.cache/libfabricx/tune-h.txt");
    unsetenv("HOME");
    cr_expect(!fx_tune_cache_path("", "h", out, sizeof(out)), "no HOME: no cache");
    cr_expect(!fx_tune_cache_path("/a/very/long/directory", "h", out, 10), "does not fit");
}

Test(tune_cache, stores_and_finds_each_key_and_creates_the_directory)
{
    double v[3] = {0};

    cr_expect(!fx_tune_cache_lookup(path, 1, NOW, DAY, v), "no file yet");
    store(0x1234, NOW, 2e-6, 1e-10, 2e-11);
    store(0xfeedbeefcafe0001ull, NOW, 3e-6, 4e-10, 5e-11);
    cr_assert(fx_tune_cache_lookup(path, 0x1234, NOW + 5, DAY, v));
    cr_expect(v[0] == 2e-6 && v[1] == 1e-10 && v[2] == 2e-11, "%g %g %g", v[0], v[1], v[2]);
    cr_assert(fx_tune_cache_lookup(path, 0xfeedbeefcafe0001ull, NOW, DAY, v));
    cr_expect(v[0] == 3e-6 && v[1] == 4e-10 && v[2] == 5e-11);
    cr_expect(!fx_tune_cache_lookup(path, 0x1235, NOW, DAY, v), "another key");
    /* A key stored again replaces its entry. */
    store(0x1234, NOW + 10, 7e-6, 1e-10, 2e-11);
    cr_expect_eq(lines(), 3);
    cr_assert(fx_tune_cache_lookup(path, 0x1234, NOW + 10, DAY, v));
    cr_expect(v[0] == 7e-6);
}

Test(tune_cache, old_and_future_entries_are_measured_again)
{
    double v[3];

    store(5, NOW, 1e-6, 1e-10, 1e-11);
    cr_expect(fx_tune_cache_lookup(path, 5, NOW + DAY, DAY, v), "a day old: still good");
    cr_expect(!fx_tune_cache_lookup(path, 5, NOW + DAY + 1, DAY, v), "older: measured again");
    cr_expect(!fx_tune_cache_lookup(path, 5, NOW - 60, DAY, v), "stamped in the future");
    /* Storing another key drops the expired one. */
    store(6, NOW + 2 * DAY, 1e-6, 1e-10, 1e-11);
    cr_expect_eq(lines(), 2, "header and the new entry only");
}

Test(tune_cache, keeps_at_most_the_newest_entries)
{
    double v[3];

    for (int i = 0; i < FX_TUNE_CACHE_MAX_ENTRIES + 5; i++) {
        store((uint64_t)i + 100, NOW + i, 1e-6, 1e-10, 1e-11);
    }
    cr_expect_eq(lines(), 1 + FX_TUNE_CACHE_MAX_ENTRIES);
    cr_expect(!fx_tune_cache_lookup(path, 100, NOW + 100, DAY, v), "the oldest went first");
    cr_expect(fx_tune_cache_lookup(path, 104 + FX_TUNE_CACHE_MAX_ENTRIES, NOW + 100, DAY, v));
}

Test(tune_cache, damaged_lines_and_foreign_files_are_ignored)
{
    double v[3];

    write_file("libfabricx tune cache v1\n"
               "0000000000000007 1800000000 1e-6 1e-10\n"         /* a value short */
               "0000000000000008 1800000000 nan 1e-10 1e-11\n"    /* not a number */
               "0000000000000009 1800000000 -1 1e-10 1e-11\n"     /* negative */
               "000000000000000a 1800000000 1e-6 1e-10 1e-11 x\n" /* trailing junk */
               "zzzz\n"
               "000000000000000b 1800000000 1e-6 1e-10 1e-11\n");
    cr_expect(!fx_tune_cache_lookup(path, 7, NOW, DAY, v));
    cr_expect(!fx_tune_cache_lookup(path, 8, NOW, DAY, v));
    cr_expect(!fx_tune_cache_lookup(path, 9, NOW, DAY, v));
    cr_expect(!fx_tune_cache_lookup(path, 10, NOW, DAY, v));
    cr_expect(fx_tune_cache_lookup(path, 11, NOW, DAY, v), "the good line still counts");
    store(12, NOW, 1e-6, 1e-10, 1e-11);
    cr_expect_eq(lines(), 3, "rewritten without the damaged lines");
    write_file("some other file\n000000000000000b 1800000000 1e-6 1e-10 1e-11\n");
    cr_expect(!fx_tune_cache_lookup(path, 11, NOW, DAY, v), "not a cache file");
}

Test(tune_cache, an_unwritable_place_gives_an_error_naming_it)
{
    double v[3]   = {1e-6, 1e-10, 1e-11};
    char err[256] = "";
    char bad[160];

    write_file("x");
    snprintf(bad, sizeof(bad), "%s/tune-h.txt/below/tune.txt", path); /* under a plain file */
    cr_expect_eq(fx_tune_cache_store(bad, 1, NOW, DAY, v, err, sizeof(err)), FX_ERR_SYSTEM);
    cr_expect(strstr(err, bad) != NULL, "the error names the file: %s", err);
}
