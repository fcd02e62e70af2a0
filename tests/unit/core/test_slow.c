/* Slow-link analysis (libfabricx/fx_slow.c): hosts, paths, healthy clusters, edge cases. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "libfabricx/fx_slow.h"

#define MAXL 256

static struct fx_slow_link links[MAXL];
static size_t nl;

/* Deterministic noise in [-amp, amp]. */
static double noise(unsigned *seed, double amp)
{
    return amp * (2.0 * (double)rand_r(seed) / RAND_MAX - 1.0);
}

static void add(int src, int dst, double rate)
{
    cr_assert(nl < MAXL);
    links[nl++] = (struct fx_slow_link){.src = src, .dst = dst, .rate = rate};
}

/* Every ordered pair of n hosts at rate 1 GB/s +- amp, scaled by slow(src, dst). */
static void dense(int n, double amp, unsigned seed, int slow_host, int pa, int pb, unsigned dirs)
{
    nl = 0;
    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++) {
            double r = 1e9 * (1.0 + noise(&seed, amp));

            if (a == b) {
                continue;
            }
            if (a == slow_host || b == slow_host) {
                r *= 0.5;
            }
            if (((dirs & 1) && a == pa && b == pb) || ((dirs & 2) && a == pb && b == pa)) {
                r *= 0.5;
            }
            add(a, b, r);
        }
    }
}

/* A ring of n hosts: i -> i + 1; links into and out of slow_host at half rate. */
static void ring(int n, double amp, unsigned seed, int slow_host)
{
    nl = 0;
    for (int a = 0; a < n; a++) {
        int b    = (a + 1) % n;
        double r = 1e9 * (1.0 + noise(&seed, amp));

        add(a, b, (a == slow_host || b == slow_host) ? r * 0.5 : r);
    }
}

static int analyze(int nhosts, struct fx_slow_finding *f, int max, struct fx_slow_result *res)
{
    return fx_slow_analyze(links, nl, nhosts, NULL, f, max, res);
}

Test(slow, healthy_dense_and_ring_have_no_finding)
{
    struct fx_slow_finding f[8];
    struct fx_slow_result res;

    for (unsigned seed = 1; seed <= 20; seed++) {
        dense(8, 0.08, seed, -1, -1, -1, 0);
        cr_expect_eq(analyze(8, f, 8, &res), 0, "seed %u", seed);
        cr_expect(res.expected > 0.95e9 && res.expected < 1.08e9, "expected %g", res.expected);
        ring(8, 0.08, seed, -1);
        cr_expect_eq(analyze(8, f, 8, &res), 0, "ring seed %u", seed);
    }
}

Test(slow, a_slow_host_is_named_alone_in_every_trial)
{
    struct fx_slow_finding f[8];
    struct fx_slow_result res;

    for (unsigned seed = 1; seed <= 20; seed++) {
        unsigned s = seed * 7919u;
        int n      = seed % 2 ? 8 : 4;
        int h      = rand_r(&s) % n;

        dense(n, 0.08, seed, h, -1, -1, 0);
        cr_assert_eq(analyze(n, f, 8, &res), 1, "dense n %d host %d", n, h);
        cr_expect_eq(f[0].kind, FX_SLOW_HOST);
        cr_expect_eq(f[0].host, h);
        cr_expect_eq(f[0].nlinks, 2 * (n - 1));
        cr_expect_eq(f[0].nslow, 2 * (n - 1));
        cr_expect(f[0].measured > 0.4e9 && f[0].measured < 0.6e9, "measured %g", f[0].measured);

        ring(n, 0.08, seed, h);
        cr_assert_eq(analyze(n, f, 8, &res), 1, "ring n %d host %d", n, h);
        cr_expect_eq(f[0].kind, FX_SLOW_HOST);
        cr_expect_eq(f[0].host, h);
        cr_expect_eq(f[0].nslow, 2);
    }
}

Test(slow, a_slow_path_is_named_and_not_its_hosts)
{
    struct fx_slow_finding f[8];

    for (unsigned seed = 1; seed <= 20; seed++) {
        unsigned s = seed * 104729u;
        int n      = seed % 2 ? 8 : 4;
        int a      = rand_r(&s) % n;
        int b      = (a + 1 + rand_r(&s) % (n - 1)) % n;

        dense(n, 0.08, seed, -1, a, b, 3);
        cr_assert_eq(analyze(n, f, 8, NULL), 1, "n %d path %d-%d", n, a, b);
        cr_expect_eq(f[0].kind, FX_SLOW_PATH);
        cr_expect_eq(f[0].a, a < b ? a : b);
        cr_expect_eq(f[0].b, a < b ? b : a);
        cr_expect_eq(f[0].dirs, 3u);
        cr_expect_eq(f[0].nslow, 2);
        cr_expect_eq(f[0].nlinks, 2);
    }
}

Test(slow, a_path_slow_one_way_says_which_way)
{
    struct fx_slow_finding f[8];

    dense(4, 0.05, 3, -1, 2, 1, 1); /* 2 -> 1 only */
    cr_assert_eq(analyze(4, f, 8, NULL), 1);
    cr_expect_eq(f[0].kind, FX_SLOW_PATH);
    cr_expect_eq(f[0].a, 1);
    cr_expect_eq(f[0].b, 2);
    cr_expect_eq(f[0].dirs, 2u); /* b -> a */
    cr_expect_eq(f[0].nslow, 1);
    cr_expect_eq(f[0].nlinks, 2);
}

Test(slow, a_host_and_a_path_are_both_named_host_first)
{
    struct fx_slow_finding f[8];

    dense(8, 0.05, 11, 5, 0, 1, 3);
    cr_assert_eq(analyze(8, f, 8, NULL), 2);
    cr_expect_eq(f[0].kind, FX_SLOW_HOST);
    cr_expect_eq(f[0].host, 5);
    cr_expect_eq(f[1].kind, FX_SLOW_PATH);
    cr_expect_eq(f[1].a, 0);
    cr_expect_eq(f[1].b, 1);
}

Test(slow, uniformly_slow_links_are_no_finding)
{
    struct fx_slow_finding f[8];

    dense(6, 0.0, 1, -1, -1, -1, 0);
    for (size_t i = 0; i < nl; i++) {
        links[i].rate = 1e8;
    }
    cr_expect_eq(analyze(6, f, 8, NULL), 0);
}

Test(slow, two_hosts_or_two_links_tell_nothing_apart)
{
    struct fx_slow_finding f[8];
    struct fx_slow_result res;

    nl = 0;
    add(0, 1, 1e9);
    add(1, 0, 1e8);
    cr_expect_eq(analyze(2, f, 8, &res), 0);
    cr_expect_eq(res.nlinks, 2);
    cr_expect_eq(res.nhosts, 2);
    nl = 0;
    add(0, 1, 1e9);
    add(2, 0, 1e8);
    cr_expect_eq(analyze(3, f, 8, &res), 0);
}

Test(slow, unmeasured_links_are_ignored)
{
    struct fx_slow_finding f[8];
    struct fx_slow_result res;

    ring(6, 0.02, 5, 2);
    add(0, 3, 0);
    add(3, 0, NAN);
    add(1, 4, -5);
    cr_assert_eq(analyze(6, f, 8, &res), 1);
    cr_expect_eq(res.nlinks, 6);
    cr_expect_eq(f[0].host, 2);
}

Test(slow, the_count_exceeds_max_when_out_is_short)
{
    struct fx_slow_finding f[1];

    dense(8, 0.02, 1, 5, 0, 1, 3);
    cr_expect_eq(analyze(8, f, 1, NULL), 2);
    cr_expect_eq(f[0].kind, FX_SLOW_HOST);
    cr_expect_eq(analyze(8, NULL, 0, NULL), 2);
}

Test(slow, bad_arguments_are_refused)
{
    struct fx_slow_finding f[2];

    nl = 0;
    add(0, 3, 1e9);
    cr_expect_eq(analyze(3, f, 2, NULL), -1, "host index out of range");
    nl = 0;
    add(1, 1, 1e9);
    cr_expect_eq(analyze(3, f, 2, NULL), -1, "link to itself");
    cr_expect_eq(fx_slow_analyze(NULL, 2, 3, NULL, f, 2, NULL), -1);
    cr_expect_eq(fx_slow_analyze(links, 0, 3, NULL, NULL, 2, NULL), -1);
    cr_expect_eq(fx_slow_analyze(links, 0, 3, NULL, f, 2, NULL), 0);
}

Test(slow, median_of_odd_and_even_counts)
{
    double a[] = {3, 1, 2};
    double b[] = {4, 1, 3, 2};

    cr_expect_eq(fx_slow_median(a, 3), 2);
    cr_expect_eq(fx_slow_median(b, 4), 2.5);
    cr_expect_eq(fx_slow_median(NULL, 0), 0);
}
