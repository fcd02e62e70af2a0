/* Link statistics and the monitor's timing (libfabricx/fx_links.c): rate samples from wire
 * counters, reports, and when rank 0 judges a round of reports. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "libfabricx/fx_links.h"
#include "libfabricx/fx_slow.h"

#define NR 8

static struct fx_links L;
static int host_of[NR] = {0, 1, 2, 3, 4, 5, 6, 7};

static void setup(void)
{
    cr_assert_eq(fx_links_init(&L, true, 0, NR, host_of, NR), FX_OK);
}

static void teardown(void)
{
    fx_links_fini(&L);
}

static void put(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* A report of rank src with one link (from its left neighbour) at 1 Gbit/s, from 3 samples. */
static void report(int src, int64_t ms)
{
    uint8_t buf[FX_LINK_REPORT_SIZE] = {0};

    put(buf, 1, 4);
    put(buf + 4, (uint64_t)((src + NR - 1) % NR), 4);
    put(buf + 8, 3, 4);
    put(buf + 12, 125000000, 8);
    fx_links_on_report(&L, src, buf, 4 + 16 + FX_LINK_ADDR_LEN, ms);
}

TestSuite(links, .init = setup, .fini = teardown);

static int64_t evals[8];
static int nevals;

static void judge_if_due(int64_t t, bool tick)
{
    if (fx_links_eval_due(&L, t, tick)) {
        cr_assert(nevals < 8);
        evals[nevals++] = t;
        L.eval_ms       = t;
    }
}

Test(links, a_round_is_judged_when_its_last_report_arrives)
{
    cr_expect(!fx_links_eval_due(&L, 1000, false), "nothing reported");
    cr_expect(!fx_links_eval_due(&L, 1000, true), "nothing reported, at rank 0's tick");

    /* Ranks 1..7 report once a second, each on its own phase (x.65 .. x.95); rank 0 ticks at
     * x.30 and judges whenever a round is due. */
    for (int k = 0; k < 5; k++) {
        for (int r = 1; r < NR; r++) {
            report(r, 1000 * k + 600 + 50 * r);
            judge_if_due(1000 * k + 600 + 50 * r, false);
        }
        judge_if_due(1000 * k + 1300, true);
    }
    /* The first round: judged at its first report (no other rank known yet), the rest of it at
     * rank 0's tick. Then once a round, as soon as rank 7, the last of the phases, reported. */
    cr_assert_eq(nevals, 6);
    cr_expect_eq(evals[0], 650);
    cr_expect_eq(evals[1], 1300);
    for (int k = 1; k < 5; k++) {
        cr_expect_eq(evals[k + 1], 1000 * k + 950, "round %d judged at %lld", k,
                     (long long)evals[k + 1]);
    }
}

Test(links, the_round_follows_the_phases_as_they_drift)
{
    int64_t at[6][NR];

    /* Rank 3's tick slips by 100 ms a second, until it reports after rank 7. */
    for (int k = 0; k < 6; k++) {
        for (int r = 1; r < NR; r++) {
            at[k][r] = 1000 * k + 600 + 50 * r + (r == 3 ? 100 * k : 0);
        }
    }
    for (int64_t t = 0; t <= 7000; t++) { /* the reports in time order */
        for (int k = 0; k < 6; k++) {
            for (int r = 1; r < NR; r++) {
                if (at[k][r] == t) {
                    report(r, t);
                    judge_if_due(t, false);
                }
            }
        }
    }
    /* In the last round rank 3 reports at 6.25 s, after rank 7 (5.95 s): judged then. */
    cr_assert_geq(nevals, 2);
    cr_expect_eq(evals[nevals - 1], 6250, "last round judged at %lld",
                 (long long)evals[nevals - 1]);
    cr_expect_eq(evals[nevals - 2], 5150, "round before judged at %lld",
                 (long long)evals[nevals - 2]);
}

Test(links, rounds_are_half_a_tick_apart_at_least)
{
    report(1, 1000);
    report(2, 1000);
    cr_expect(fx_links_eval_due(&L, 1000, false));
    L.eval_ms = 1000;
    /* A rank whose tick drifted reports twice within a short spell: one round, not two. */
    report(1, 1200);
    report(2, 1300);
    cr_expect(!fx_links_eval_due(&L, 1300, false));
    cr_expect(fx_links_eval_due(&L, 1500, false));
}

Test(links, a_rank_that_stopped_reporting_delays_the_round_only_for_a_while)
{
    for (int r = 1; r < NR; r++) {
        report(r, 1000);
    }
    L.eval_ms = 1000;
    /* Rank 5 stops reporting (its links have no fresh rate). */
    for (int r = 1; r < NR; r++) {
        if (r != 5) {
            report(r, 2000);
        }
    }
    cr_expect(!fx_links_eval_due(&L, 2000, false), "rank 5 reported 1 s ago");
    cr_expect(fx_links_eval_due(&L, 2500, true), "rank 0's tick 1.5 ticks on");
    cr_expect(fx_links_eval_due(&L, 3000, false), "rank 5's report is 2 s old");
}

Test(links, malformed_reports_change_nothing)
{
    uint8_t buf[FX_LINK_REPORT_SIZE] = {0};

    buf[0] = FX_LINK_REPORT_MAX + 1;
    fx_links_on_report(&L, 1, buf, sizeof(buf), 1000);
    buf[0] = 2;
    fx_links_on_report(&L, 1, buf, 4 + 16 + FX_LINK_ADDR_LEN, 1000); /* length for one */
    fx_links_on_report(&L, NR, buf, 4, 1000);
    fx_links_on_report(&L, -1, buf, 4, 1000);
    cr_expect(!fx_links_eval_due(&L, 1000, false));
    cr_expect(!fx_links_eval_due(&L, 2000, true));
}

Test(links, wire_counters_give_a_sample_per_tick_and_a_report_from_the_second)
{
    uint8_t rep[FX_LINK_REPORT_SIZE];
    bool due;
    uint64_t bytes = 1000; /* traffic before the first reading does not count */
    uint64_t ns    = 5000;

    fx_link_wire(&L, 2, FX_LINK_RECV, bytes, ns);
    struct fx_link_clock clk = {0, 0};

    fx_link_posted(&L.dir[2][FX_LINK_RECV], 0, &clk); /* a receive stays posted throughout */
    for (int t = 1; t <= 4; t++) {
        size_t len;

        bytes += 25u << 20; /* 25 MiB over 0.5 s of arrival: 52.4 MB/s */
        ns += 500000000;
        fx_link_wire(&L, 2, FX_LINK_RECV, bytes, ns);
        len = fx_links_tick(&L, 1000 * t, rep, &due);
        cr_expect(due);
        cr_expect_eq(L.dir[2][FX_LINK_RECV].samples, (uint32_t)t);
        cr_expect_eq(len, t < 2 ? 0 : 4 + 16 + FX_LINK_ADDR_LEN, "tick %d: %zu", t, len);
        cr_expect_float_eq(L.dir[2][FX_LINK_RECV].rate, (double)(25u << 20) * 2, 1.0);
        if (len > 0) { /* the sample count goes with the rate */
            cr_expect_eq(rep[0] | rep[1] << 8, 1);
            cr_expect_eq(rep[4], 2);
            cr_expect_eq(rep[8] | rep[9] << 8 | rep[10] << 16, (uint32_t)t);
        }
    }
    /* Under 2 MiB of counted arrival: no sample, and the window goes on into the next. */
    bytes += 1u << 20;
    ns += 20000000;
    fx_link_wire(&L, 2, FX_LINK_RECV, bytes, ns);
    fx_links_tick(&L, 5000, rep, &due);
    cr_expect_eq(L.dir[2][FX_LINK_RECV].samples, 4u);
    bytes += 1u << 20;
    ns += 20000000;
    fx_link_wire(&L, 2, FX_LINK_RECV, bytes, ns);
    fx_links_tick(&L, 6000, rep, &due);
    cr_expect_eq(L.dir[2][FX_LINK_RECV].samples, 5u);
    cr_expect_float_eq(L.dir[2][FX_LINK_RECV].hist[4], (double)(2u << 20) * 1e9 / 40e6, 1.0);
    /* Not due before a tick has passed. */
    cr_expect_eq(fx_links_tick(&L, 6500, rep, &due), 0);
    cr_expect(!due);
}

/* The busy-stretch clocks: a clock already read in the round is used as it is, so preset
 * readings stand for the clocks here. */
Test(links, a_stretch_of_small_messages_reads_only_the_coarse_clock)
{
    struct fx_link_dir *d   = &L.dir[3][FX_LINK_SEND];
    struct fx_link_clock c1 = {0, 4000000};
    struct fx_link_clock c2 = {0, 8000000};

    fx_link_posted(d, 8, &c1);
    fx_link_posted(d, 4096, &c1);
    cr_expect_eq(c1.fine, 0, "the fine clock was read for small messages");
    fx_link_completed(d, 8, &c2);
    fx_link_completed(d, 4096, &c2);
    cr_expect_eq(c2.fine, 0, "the fine clock was read for small messages");
    cr_expect_eq(d->blocked_ns, 4000000);
    cr_expect_eq(d->bytes, 4104);
    cr_expect_eq(d->msgs, 2);
    cr_expect_eq(d->win_bytes, 0, "a 4 KiB stretch of 4 ms is latency, not rate");
}

Test(links, a_large_message_times_the_rest_of_its_stretch_with_the_fine_clock)
{
    struct fx_link_dir *d   = &L.dir[2][FX_LINK_RECV];
    struct fx_link_clock c1 = {0, 1000};
    struct fx_link_clock c2 = {2000500, 2000000};
    struct fx_link_clock c3 = {12000500, 12000000};

    fx_link_posted(d, 8, &c1);
    fx_link_posted(d, 1 << 20, &c2);
    fx_link_completed(d, 8, &c3);
    fx_link_completed(d, 1 << 20, &c3);
    /* coarse from 1000 to 2000000, then fine from 2000500 to 12000500 */
    cr_expect_eq(d->blocked_ns, 1999000 + 10000000);
    cr_expect_eq(d->win_bytes, (1u << 20) + 8);
    cr_expect_eq(d->win_ns, 10000000);
}

Test(links, a_stretch_that_starts_large_stays_on_the_fine_clock)
{
    struct fx_link_dir *d   = &L.dir[5][FX_LINK_SEND];
    struct fx_link_clock c1 = {1000, 0};
    struct fx_link_clock c2 = {3001000, 0};

    fx_link_posted(d, 256 << 10, &c1);
    fx_link_posted(d, 8, &c1);
    fx_link_completed(d, 256 << 10, &c2);
    fx_link_completed(d, 8, &c2);
    cr_expect_eq(c1.coarse, 0, "the coarse clock was read for a large message's stretch");
    cr_expect_eq(c2.coarse, 0, "the coarse clock was read for a large message's stretch");
    cr_expect_eq(d->blocked_ns, 3000000);
    cr_expect_eq(d->win_bytes, (256u << 10) + 8);
    cr_expect_eq(d->win_ns, 3000000);

    fx_link_stats st;
    struct fx_link_clock now = {0, 0};

    fx_link_posted(d, 8, &c2);
    fx_links_snapshot(&L, 5, &now, &st);
    cr_expect_eq(now.fine, 0, "an open stretch of small messages is read on the coarse clock");
    cr_expect_neq(now.coarse, 0);
}

/* Many small messages in one stretch carry enough bytes for a rate: from the post that brings
 * the stretch to FX_LINK_FINE_BYTES on, it is timed with the fine clock, and only that part
 * feeds the rate window. The coarse clock lags the fine one here by 3 ms and 999 us: a rate
 * taken from the coarse readings would be off by a quarter. */
Test(links, small_messages_adding_up_to_a_rate_are_timed_with_the_fine_clock)
{
    struct fx_link_dir *d   = &L.dir[4][FX_LINK_SEND];
    struct fx_link_clock c1 = {1003000, 1000000};
    struct fx_link_clock c2 = {4999000, 4000000};

    for (int i = 0; i < 8; i++) {
        fx_link_posted(d, 8 << 10, &c1);
    }
    for (int i = 0; i < 8; i++) {
        fx_link_completed(d, 8 << 10, &c2);
    }
    cr_expect_eq(d->win_bytes, 64u << 10);
    cr_expect_eq(d->win_ns, 4999000 - 1003000, "the rate's time came from the coarse clock");
    cr_expect_eq(d->blocked_ns, 4999000 - 1003000);
}

/* A stretch timed with the coarse clock counts whole ticks or nothing: it adds to the blocked
 * time but never to a rate, however long it seemed. */
Test(links, a_stretch_on_the_coarse_clock_feeds_no_rate)
{
    struct fx_link_dir *d   = &L.dir[6][FX_LINK_RECV];
    struct fx_link_clock c1 = {0, 4000000};
    struct fx_link_clock c2 = {0, 16000000};

    fx_link_posted(d, 8, &c1);
    fx_link_completed(d, 8, &c2);
    cr_expect_eq(d->blocked_ns, 12000000);
    cr_expect_eq(d->win_ns, 0, "12 ms of coarse ticks became a rate's time");
    cr_expect_eq(d->win_bytes, 0);
}

/* A stretch still open at the tick counts up to the tick in the window the tick closes: a link
 * kept busy without a pause gets a sample every tick, not one every other tick. */
Test(links, a_stretch_open_at_the_tick_counts_in_the_window_it_closes)
{
    struct fx_link_dir *d   = &L.dir[1][FX_LINK_SEND];
    struct fx_link_clock c0 = {0, 0};
    int64_t t0              = fx_link_clock_get(&c0, false);
    struct fx_link_clock c1 = {t0 - 50000000, 0};
    struct fx_link_clock c2 = {t0 - 10000000, 0};
    uint8_t rep[FX_LINK_REPORT_SIZE];
    bool due;

    for (int i = 0; i < 3; i++) {
        fx_link_posted(d, 1 << 20, &c1);
    }
    fx_link_completed(d, 1 << 20, &c2);
    fx_link_completed(d, 1 << 20, &c2);
    cr_expect_eq(d->win_bytes, 0, "the stretch is still open");
    fx_links_tick(&L, 1000, rep, &due);
    cr_assert(due);
    cr_expect_eq(d->samples, 1, "2 MiB over 50 ms up to the tick gave no sample");
    cr_expect(d->rate > 0 && d->rate <= (2u << 20) * 1e9 / 50e6, "rate %f", d->rate);
    cr_expect_eq(d->posted, 1);
    cr_expect_eq(d->win_bytes, 0, "the sample's bytes stayed in the window");
}

Test(links, stopping_ends_the_open_stretches)
{
    struct fx_link_dir *s   = &L.dir[1][FX_LINK_SEND];
    struct fx_link_dir *r   = &L.dir[4][FX_LINK_RECV];
    struct fx_link_clock c1 = {0, 0};
    struct timespec pause   = {0, 5000000};
    fx_link_stats a;
    fx_link_stats b;
    struct fx_link_clock now = {0, 0};

    fx_link_posted(s, 8, &c1);
    fx_link_posted(r, 1 << 20, &c1);
    fx_link_posted(r, 1 << 20, &c1);
    nanosleep(&pause, NULL);
    fx_links_stop(&L);
    cr_expect_eq(s->posted, 0);
    cr_expect_eq(r->posted, 0);
    cr_expect_geq(r->blocked_ns, 5000000, "the stretch's time so far counts: %llu ns",
                  (unsigned long long)r->blocked_ns);
    fx_links_snapshot(&L, 4, &now, &a);
    nanosleep(&pause, NULL);
    now = (struct fx_link_clock){0, 0};
    fx_links_snapshot(&L, 4, &now, &b);
    cr_expect_eq(a.recv_blocked_ns, b.recv_blocked_ns, "blocked time grows after the stop");
    fx_links_snapshot(&L, 1, &now, &b);
    fx_link_completed(r, 1 << 20, &now); /* a late completion changes no count of posts */
    cr_expect_eq(r->posted, 0);
}

Test(links, an_idle_receive_moves_its_base_so_the_first_second_of_traffic_makes_a_sample)
{
    struct fx_link_dir *d   = &L.dir[2][FX_LINK_RECV];
    struct fx_link_clock c1 = {1200000000, 1200000000};
    struct fx_link_clock c2 = {1300000000, 1300000000};
    struct fx_link_clock c3 = {3100000000, 3100000000};
    uint8_t rep[FX_LINK_REPORT_SIZE];
    bool due;

    /* Set-up traffic (1 MiB, slowly) between the first two readings, then an idle tick: each
     * reading of an idle link is the base. */
    fx_link_wire(&L, 2, FX_LINK_RECV, 0, 0);
    fx_links_tick(&L, 1000, rep, &due);
    fx_link_posted(d, 1u << 20, &c1);
    fx_link_completed(d, 1u << 20, &c2);
    fx_link_wire(&L, 2, FX_LINK_RECV, 1u << 20, 90000000);
    fx_links_tick(&L, 2000, rep, &due);
    cr_expect_eq(d->samples, 0u, "under 2 MiB");
    fx_link_wire(&L, 2, FX_LINK_RECV, 1u << 20, 90000000);
    fx_links_tick(&L, 3000, rep, &due);
    cr_expect_eq(d->samples, 0u);
    /* Traffic starts after the tick at 3 s: 12 MiB over 0.25 s of arrival by the next one. */
    fx_link_posted(d, 12u << 20, &c3);
    fx_link_wire(&L, 2, FX_LINK_RECV, 13u << 20, 340000000);
    fx_links_tick(&L, 4000, rep, &due);
    cr_expect_eq(d->samples, 1u, "a sample from the first second of traffic");
    cr_expect_float_eq(d->rate, (double)(12u << 20) * 4, 1.0, "the set-up traffic not in it");
    /* Still posted, nothing completed yet: not idle, the windows go on. */
    fx_link_wire(&L, 2, FX_LINK_RECV, 25u << 20, 590000000);
    fx_links_tick(&L, 5000, rep, &due);
    cr_expect_eq(d->samples, 2u);
    cr_expect_float_eq(d->rate, (double)(12u << 20) * 4, 1.0);
}

/* ---------------------------------------------------------------- rank 0's verdicts */

static struct fx_boot_entry table[NR];
static struct fx_boot boot = {.rank = 0, .nranks = NR, .table = table};

/* Rank src reports its link from its left neighbour: rate in Gbit/s, the median of `samples`.
 */
static void report_rate(int src, double gbps, uint32_t samples, int64_t ms)
{
    uint8_t buf[FX_LINK_REPORT_SIZE] = {0};

    put(buf, 1, 4);
    put(buf + 4, (uint64_t)((src + NR - 1) % NR), 4);
    put(buf + 8, samples, 4);
    put(buf + 12, (uint64_t)(gbps * 125e6), 8);
    fx_links_on_report(&L, src, buf, 4 + 16 + FX_LINK_ADDR_LEN, ms);
}

/* A round of the ring's reports at `ms`: every link at 0.4 Gbit/s but host `slow`'s two (from
 * slow - 1 to slow, from slow to slow + 1) at slow_gbps; each link's rate from `samples`. */
static void ring_round(int slow, double slow_gbps, uint32_t samples, int64_t ms)
{
    for (int r = 0; r < NR; r++) {
        bool touches = r == slow || (r + NR - 1) % NR == slow;

        report_rate(r, touches ? slow_gbps : 0.40 + 0.005 * (r % 3), samples, ms);
    }
}

/* Whether the last evaluation logged host h (log_due's table: logged at `ms`). */
static bool logged_at(int h, int64_t ms)
{
    for (size_t i = 0; i < sizeof(L.logged) / sizeof(L.logged[0]); i++) {
        if (L.logged[i].kind == FX_SLOW_HOST && L.logged[i].a == h && L.logged[i].ms == ms) {
            return true;
        }
    }
    return false;
}

static void name_hosts(void)
{
    for (int r = 0; r < NR; r++) {
        snprintf(table[r].host, sizeof(table[r].host), "h%d", r);
    }
}

Test(links, a_host_far_below_on_every_link_is_named_on_one_check_from_two_samples)
{
    name_hosts();
    ring_round(3, 0.13, 2, 1000);
    cr_expect_eq(fx_links_evaluate(&L, &boot, 1000), 1);
    cr_expect(logged_at(3, 1000), "host 3 at a third of the rate, named on the first check");
    for (int h = 0; h < NR; h++) {
        cr_expect(h == 3 || !logged_at(h, 1000), "host %d named", h);
    }
}

Test(links, a_host_moderately_below_needs_two_checks_of_three_samples)
{
    name_hosts();
    /* 0.26 against 0.40: slow (under 0.7 x expected) but not far below (0.6 x). */
    ring_round(5, 0.26, 2, 1000);
    cr_expect_eq(fx_links_evaluate(&L, &boot, 1000), 0, "two samples: not judged");
    ring_round(5, 0.26, 3, 2000);
    cr_expect_eq(fx_links_evaluate(&L, &boot, 2000), 1);
    cr_expect(!logged_at(5, 2000), "one check of three samples");
    ring_round(5, 0.26, 4, 3000);
    cr_expect_eq(fx_links_evaluate(&L, &boot, 3000), 1);
    cr_expect(logged_at(5, 3000), "second check in a row");
}

Test(links, one_link_far_below_is_no_host_finding_on_one_check)
{
    name_hosts();
    /* Only host 2's link from host 1 is far below; its link to host 3 is fine. */
    for (int r = 0; r < NR; r++) {
        report_rate(r, r == 2 ? 0.10 : 0.40, 2, 1000);
    }
    cr_expect_eq(fx_links_evaluate(&L, &boot, 1000), 0, "two samples: no path judged");
    for (int h = 0; h < NR; h++) {
        cr_expect(!logged_at(h, 1000), "host %d named", h);
    }
}

Test(links, a_healthy_ring_names_nothing)
{
    name_hosts();
    for (int k = 1; k <= 4; k++) {
        for (int r = 0; r < NR; r++) {
            report_rate(r, 0.38 + 0.01 * ((r + k) % 5), (uint32_t)k + 1, 1000 * k);
        }
        cr_expect_eq(fx_links_evaluate(&L, &boot, 1000 * k), 0, "check %d", k);
    }
}

Test(links, too_few_links_are_not_judged_on_one_check)
{
    name_hosts();
    /* Three links reported, two of them host 3's, far below: fewer than four links. */
    report_rate(3, 0.10, 2, 1000);
    report_rate(4, 0.10, 2, 1000);
    report_rate(6, 0.40, 2, 1000);
    cr_expect_eq(fx_links_evaluate(&L, &boot, 1000), 0);
    cr_expect(!logged_at(3, 1000));
}
