/* Per-pair transport choice (fx_route.h): shared memory inside a host, the network between. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "fx_route.h"

/* A rank's record: host id from `host`, and the transports it publishes ("tcp", "shm"). */
static struct fx_boot_entry entry(int rank, char host, const char *tp0, const char *tp1)
{
    struct fx_boot_entry e;

    memset(&e, 0, sizeof(e));
    e.rank = rank;
    snprintf(e.host, sizeof(e.host), "host-%c", host);
    memset(e.host_id, host, sizeof(e.host_id));
    if (tp0 != NULL) {
        snprintf(e.addrs[e.naddrs].tp, FX_BOOT_TP_NAME, "%s", tp0);
        e.addrs[e.naddrs++].addr.len = 4;
    }
    if (tp1 != NULL) {
        snprintf(e.addrs[e.naddrs].tp, FX_BOOT_TP_NAME, "%s", tp1);
        e.addrs[e.naddrs++].addr.len = 8;
    }
    return e;
}

/* The choice for (a, b), checked to be the same for (b, a); "" when there is none. */
static const char *choose(const struct fx_boot_entry *a, const struct fx_boot_entry *b, char *why)
{
    const struct fx_transport_ops *ab = fx_route_choose(a, b, why, 256);
    const struct fx_transport_ops *ba = fx_route_choose(b, a, why + 256, 256);

    cr_assert_eq(ab, ba, "the choice depends on which rank asks");
    return ab != NULL ? ab->name : "";
}

Test(route, ranks_of_one_host_use_shared_memory, .timeout = 10)
{
    struct fx_boot_entry a = entry(0, 'a', "tcp", "shm");
    struct fx_boot_entry b = entry(1, 'a', "tcp", "shm");
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "shm");
}

Test(route, ranks_of_two_hosts_use_the_network, .timeout = 10)
{
    struct fx_boot_entry a = entry(0, 'a', "tcp", "shm");
    struct fx_boot_entry b = entry(1, 'b', "tcp", "shm");
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "tcp");
}

Test(route, one_side_without_shared_memory_gives_the_network, .timeout = 10)
{
    /* FX_SHM_DISABLE=1 on one rank only: both still agree on tcp. */
    struct fx_boot_entry a = entry(0, 'a', "tcp", NULL);
    struct fx_boot_entry b = entry(1, 'a', "tcp", "shm");
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "tcp");
}

Test(route, the_order_of_published_addresses_does_not_matter, .timeout = 10)
{
    struct fx_boot_entry a = entry(0, 'a', "shm", "tcp");
    struct fx_boot_entry b = entry(1, 'a', "tcp", "shm");
    struct fx_boot_entry c = entry(2, 'c', "shm", "tcp");
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "shm");
    cr_expect_str_eq(choose(&a, &c, why), "tcp");
}

Test(route, shared_memory_only_across_hosts_is_an_error_naming_both, .timeout = 10)
{
    struct fx_boot_entry a = entry(0, 'a', "shm", NULL);
    struct fx_boot_entry b = entry(3, 'b', "shm", NULL);
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "");
    cr_expect(strstr(why, "rank 0 (host host-a) offers shm") != NULL, "%s", why);
    cr_expect(strstr(why, "rank 3 (host host-b) offers shm") != NULL, "%s", why);
    cr_expect(strstr(why, "only ranks of one host") != NULL, "%s", why);
}

Test(route, unknown_transport_names_are_ignored, .timeout = 10)
{
    /* A rank of another build may publish a transport this build lacks. */
    struct fx_boot_entry a = entry(0, 'a', "psm3", "tcp");
    struct fx_boot_entry b = entry(1, 'b', "psm3", "tcp");
    struct fx_boot_entry c = entry(2, 'b', "psm3", NULL);
    char why[512];

    cr_expect_str_eq(choose(&a, &b, why), "tcp");
    cr_expect_str_eq(choose(&a, &c, why), "");
    cr_expect(strstr(why, "offers psm3,tcp") != NULL, "%s", why);
}

Test(route, address_lookup_by_transport_name, .timeout = 10)
{
    struct fx_boot_entry a = entry(0, 'a', "tcp", "shm");

    cr_expect_eq(fx_route_addr(&a, "tcp"), &a.addrs[0].addr);
    cr_expect_eq(fx_route_addr(&a, "shm"), &a.addrs[1].addr);
    cr_expect_null(fx_route_addr(&a, "ucx"));
}
