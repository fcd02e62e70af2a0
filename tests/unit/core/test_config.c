/* FX_* configuration: defaults, parsing, errors, and the README's table. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx_config.h"

static void clear_env(void)
{
    for (size_t i = 0; i < fx_config_table_len; i++) {
        unsetenv(fx_config_table[i].name);
    }
}

Test(config, defaults_apply, .init = clear_env, .timeout = 10)
{
    struct fx_config cfg;
    char err[200];

    cr_assert_eq(fx_config_load(&cfg, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect_eq(cfg.timeout_ms, 60000);
    cr_expect_eq(cfg.chunk_bytes, 0);
    cr_expect_eq(cfg.nsocks, 0);
    cr_expect_str_eq(cfg.transport, "");
    cr_expect_str_eq(cfg.kernels, "auto");
    cr_expect_eq(cfg.tcp_zerocopy, false);
    cr_expect_eq(cfg.reg_cache_max, (size_t)1 << 30);
}

Test(config, values_parse, .init = clear_env, .timeout = 10)
{
    struct fx_config cfg;
    char err[200];

    setenv("FX_TIMEOUT_MS", "1500", 1);
    setenv("FX_CHUNK_BYTES", "256K", 1);
    setenv("FX_NSOCKS", "4", 1);
    setenv("FX_TRANSPORT", "tcp", 1);
    setenv("FX_SOCKET_IFNAME", "^docker,lo", 1);
    setenv("FX_TCP_ZEROCOPY", "yes", 1);
    setenv("FX_REG_CACHE_MAX", "256M", 1);
    cr_assert_eq(fx_config_load(&cfg, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect_eq(cfg.timeout_ms, 1500);
    cr_expect_eq(cfg.chunk_bytes, 256 * 1024);
    cr_expect_eq(cfg.nsocks, 4);
    cr_expect_str_eq(cfg.transport, "tcp");
    cr_expect_str_eq(cfg.socket_ifname, "^docker,lo");
    cr_expect_eq(cfg.tcp_zerocopy, true);
    cr_expect_eq(cfg.reg_cache_max, (size_t)256 << 20);
}

static void expect_bad(const char *name, const char *value)
{
    struct fx_config cfg;
    char err[300];

    clear_env();
    setenv(name, value, 1);
    cr_expect_eq(fx_config_load(&cfg, err, sizeof(err)), FX_ERR_INVALID_ARG, "%s=%s", name, value);
    cr_expect(strstr(err, name) != NULL && strstr(err, value) != NULL, "err names it: %s", err);
}

Test(config, bad_values_are_named, .timeout = 10)
{
    expect_bad("FX_TIMEOUT_MS", "abc");
    expect_bad("FX_TIMEOUT_MS", "-5");
    expect_bad("FX_TIMEOUT_MS", "10x");
    expect_bad("FX_NSOCKS", "65");
    expect_bad("FX_CHUNK_BYTES", "12Q");
    expect_bad("FX_CHUNK_BYTES", "4G");
    expect_bad("FX_KERNELS", "avx9");
    expect_bad("FX_TCP_ZEROCOPY", "maybe");
    expect_bad("FX_REG_CACHE_MAX", "lots");
}

Test(config, sizes_parse_with_suffixes, .timeout = 10)
{
    unsigned long long v = 0;

    cr_expect(fx_config_parse_size("100", &v) && v == 100);
    cr_expect(fx_config_parse_size("4K", &v) && v == 4096);
    cr_expect(fx_config_parse_size("4KiB", &v) && v == 4096);
    cr_expect(fx_config_parse_size("2M", &v) && v == 2u << 20);
    cr_expect(fx_config_parse_size("1G", &v) && v == 1u << 30);
    cr_expect(!fx_config_parse_size("", &v));
    cr_expect(!fx_config_parse_size("-1", &v));
    cr_expect(!fx_config_parse_size("K", &v));
    cr_expect(!fx_config_parse_size("99999999999999999999999", &v));
    cr_expect(!fx_config_parse_size("17179869184G", &v));
}

/* Every variable of the table is documented in the README's table, and vice versa. */
Test(config, readme_table_matches, .timeout = 10)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    char path[1024];
    char line[1024];
    FILE *f;
    int readme_rows = 0;

    cr_assert(src != NULL, "LIBFABRICX_TEST_SOURCE_DIR not set (run through meson test)");
    snprintf(path, sizeof(path), "%s/README.md", src);
    f = fopen(path, "r");
    cr_assert(f != NULL, "cannot open %s", path);
    for (size_t i = 0; i < fx_config_table_len; i++) {
        char needle[80];
        bool found = false;

        snprintf(needle, sizeof(needle), "| `%s` |", fx_config_table[i].name);
        rewind(f);
        while (fgets(line, sizeof(line), f) != NULL) {
            found |= strncmp(line, needle, strlen(needle)) == 0;
        }
        cr_expect(found, "README.md has no row for %s", fx_config_table[i].name);
    }
    rewind(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        char name[80];
        char type[16];

        if (sscanf(line, "| `%79[A-Z0-9_]` | %15[a-z] |", name, type) == 2 &&
            strncmp(name, "FX_", 3) == 0 &&
            (strcmp(type, "int") == 0 || strcmp(type, "size") == 0 || strcmp(type, "bool") == 0 ||
             strcmp(type, "string") == 0)) {
            bool known = false;

            readme_rows++;
            for (size_t i = 0; i < fx_config_table_len; i++) {
                known |= strcmp(name, fx_config_table[i].name) == 0;
            }
            cr_expect(known, "README.md documents %s, which the library does not read", name);
        }
    }
    fclose(f);
    cr_expect_eq((size_t)readme_rows, fx_config_table_len);
}

/* The README's status table lists every status with its value. */
Test(config, readme_lists_every_status, .timeout = 10)
{
    const char *src = getenv("LIBFABRICX_TEST_SOURCE_DIR");
    char path[1024];
    char line[1024];
    FILE *f;

    cr_assert(src != NULL);
    snprintf(path, sizeof(path), "%s/README.md", src);
    f = fopen(path, "r");
    cr_assert(f != NULL);
#define CHECK_STATUS_(name, value, text)                                                           \
    do {                                                                                           \
        char needle[160];                                                                          \
        bool found = false;                                                                        \
        snprintf(needle, sizeof(needle), "| `FX_%s` | %d | %s |", #name, value, text);             \
        rewind(f);                                                                                 \
        while (fgets(line, sizeof(line), f) != NULL) {                                             \
            found |= strncmp(line, needle, strlen(needle)) == 0;                                   \
        }                                                                                          \
        cr_expect(found, "README.md lacks the row %s", needle);                                    \
        cr_expect_str_eq(fx_strerror(FX_##name), text);                                            \
    } while (0);
    FX_STATUS_MAP(CHECK_STATUS_)
#undef CHECK_STATUS_
    fclose(f);
}
