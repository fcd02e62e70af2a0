/* Unique ids: string round trips, damaged strings, layout, torchrun-style ids. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fabricx.h"
#include "fx_uid.h"

Test(unique_id, string_round_trips, .timeout = 10)
{
    fx_unique_id id;
    fx_unique_id back;
    char s[FX_UNIQUE_ID_STRLEN];

    setenv("FX_SOCKET_IFNAME", "lo", 1);
    cr_assert_eq(fx_get_unique_id(&id), FX_OK, "%s", fx_last_error());
    cr_assert_eq(fx_unique_id_to_string(&id, s, sizeof(s)), FX_OK);
    cr_expect_eq(strlen(s), FX_UNIQUE_ID_STRLEN - 1);
    cr_expect_eq(strncmp(s, "fx1-", 4), 0);
    cr_assert_eq(fx_unique_id_from_string(s, &back), FX_OK, "%s", fx_last_error());
    cr_expect_eq(memcmp(&id, &back, sizeof(id)), 0);
}

Test(unique_id, two_ids_have_different_secrets_and_ports, .timeout = 10)
{
    fx_unique_id a;
    fx_unique_id b;
    struct fx_uid ua;
    struct fx_uid ub;
    char err[200];

    setenv("FX_SOCKET_IFNAME", "lo", 1);
    cr_assert_eq(fx_get_unique_id(&a), FX_OK);
    cr_assert_eq(fx_get_unique_id(&b), FX_OK);
    cr_assert_eq(fx_uid_unpack(&a, &ua, err, sizeof(err)), FX_OK, "%s", err);
    cr_assert_eq(fx_uid_unpack(&b, &ub, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect_neq(memcmp(ua.secret, ub.secret, sizeof(ua.secret)), 0);
    cr_expect_neq(ua.port, ub.port);
    cr_expect_eq(ua.addrs[0].ss_family, AF_INET);
}

Test(unique_id, damaged_strings_are_rejected, .timeout = 10)
{
    fx_unique_id id;
    fx_unique_id out;
    char s[FX_UNIQUE_ID_STRLEN];

    setenv("FX_SOCKET_IFNAME", "lo", 1);
    cr_assert_eq(fx_get_unique_id(&id), FX_OK);
    cr_assert_eq(fx_unique_id_to_string(&id, s, sizeof(s)), FX_OK);
    for (size_t i = 4; i < FX_UNIQUE_ID_STRLEN - 1; i += 7) {
        char bad[FX_UNIQUE_ID_STRLEN];

        memcpy(bad, s, sizeof(bad));
        bad[i] = bad[i] == '0' ? '1' : '0';
        cr_expect_eq(fx_unique_id_from_string(bad, &out), FX_ERR_INVALID_ARG, "flip at %zu", i);
    }
    cr_expect_eq(fx_unique_id_from_string("", &out), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_unique_id_from_string("fx1-zz", &out), FX_ERR_INVALID_ARG);
    s[10] = 'g';
    cr_expect_eq(fx_unique_id_from_string(s, &out), FX_ERR_INVALID_ARG);
    cr_expect(strstr(fx_last_error(), "non-hex") != NULL, "%s", fx_last_error());
    cr_expect_eq(fx_unique_id_from_string(NULL, &out), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_unique_id_to_string(&id, s, 10), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_get_unique_id(NULL), FX_ERR_INVALID_ARG);
}

Test(unique_id, unpack_rejects_foreign_bytes, .timeout = 10)
{
    fx_unique_id id;
    struct fx_uid uid;
    char err[200];

    memset(&id, 0x5a, sizeof(id));
    cr_expect_eq(fx_uid_unpack(&id, &uid, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect(strstr(err, "magic") != NULL, "%s", err);
}

Test(unique_id, master_rendezvous_uses_port_plus_one_and_secret, .timeout = 10)
{
    struct fx_uid a;
    struct fx_uid b;
    char err[200];

    unsetenv("FX_JOB_SECRET_FILE");
    setenv("FX_JOB_SECRET", "correct horse", 1);
    cr_assert_eq(fx_uid_from_master("127.0.0.1", "29500", &a, err, sizeof(err)), FX_OK, "%s", err);
    cr_expect_eq(a.port, 29501);
    cr_expect_eq(a.flags & FX_UID_FLAG_UNAUTH, 0);
    setenv("FX_JOB_SECRET", "battery staple", 1);
    cr_assert_eq(fx_uid_from_master("127.0.0.1", "29500", &b, err, sizeof(err)), FX_OK);
    cr_expect_neq(memcmp(a.secret, b.secret, sizeof(a.secret)), 0);
    unsetenv("FX_JOB_SECRET");
    cr_assert_eq(fx_uid_from_master("127.0.0.1", "29500", &b, err, sizeof(err)), FX_OK);
    cr_expect_neq(b.flags & FX_UID_FLAG_UNAUTH, 0);
    cr_expect_eq(fx_uid_from_master("127.0.0.1", "65535", &b, err, sizeof(err)),
                 FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_uid_from_master("127.0.0.1", "x", &b, err, sizeof(err)), FX_ERR_INVALID_ARG);
    cr_expect_eq(fx_uid_from_master("no-such-host.invalid", "1", &b, err, sizeof(err)),
                 FX_ERR_INVALID_ARG);
}

Test(unique_id, secret_file_is_read, .timeout = 10)
{
    char path[] = "/tmp/fx-secret-XXXXXX";
    int fd      = mkstemp(path);
    struct fx_uid a;
    struct fx_uid b;
    char err[200];

    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "correct horse\n", 14), 14);
    close(fd);
    unsetenv("FX_JOB_SECRET");
    setenv("FX_JOB_SECRET_FILE", path, 1);
    cr_assert_eq(fx_uid_from_master("127.0.0.1", "100", &a, err, sizeof(err)), FX_OK, "%s", err);
    unsetenv("FX_JOB_SECRET_FILE");
    setenv("FX_JOB_SECRET", "correct horse", 1);
    cr_assert_eq(fx_uid_from_master("127.0.0.1", "100", &b, err, sizeof(err)), FX_OK);
    cr_expect_eq(memcmp(a.secret, b.secret, sizeof(a.secret)), 0, "file and text agree");
    setenv("FX_JOB_SECRET_FILE", "/nonexistent/secret", 1);
    unsetenv("FX_JOB_SECRET");
    cr_expect_eq(fx_uid_from_master("127.0.0.1", "100", &b, err, sizeof(err)), FX_ERR_INVALID_ARG);
    unlink(path);
}
