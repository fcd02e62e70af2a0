/*
 * Per-peer link statistics and rank 0's slow-link monitor (fx_links.h).
 *
 * Report (control plane, little-endian): u32 count (<= FX_LINK_REPORT_MAX), then per link
 * i32 sending rank, u32 samples the rate is the median of (capped at FX_LINK_SAMPLES), u64
 * smoothed receive rate in bytes per second, 48 B address text of the sender.
 */
#include "fx_links.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx_log.h"
#include "fx_slow.h"

#define RATE_MIN_BYTES     (64u << 10) /* a busy stretch shorter in bytes is latency, not rate */
#define RATE_MIN_NS        10000000    /* ... unless it lasted this long */
#define WIN_MIN_BYTES      (2u << 20)  /* a window's sample needs this much, over this long */
#define WIN_MIN_NS         20000000
#define REPORT_MIN_SAMPLES 2    /* rates are reported from the second sample on */
#define JUDGE_MIN_SAMPLES  3    /* ... and judged from the third (two checks in a row) */
#define RATE_KEEP_MS       5000 /* ... and while their last sample is this recent */
#define REPORT_AGE_MS      (3 * FX_LINK_TICK_MS)
#define LOG_EVERY_MS       10000
#define HOST_STREAK        2   /* evaluations in a row before a host finding is logged */
#define PATH_STREAK        5   /* ... a path finding: one link is weaker evidence than two */
#define MONITOR_MIN_DROP   0.3 /* per-second rates are noisier than fx-doctor's */
#define STRONG_MIN_DROP    0.4 /* a host named on one check: every link under 0.6 x expected, */
#define STRONG_MAD_K       6.0 /* ... and this many spreads below it */
#define STRONG_MIN_LINKS   4   /* ... among at least this many links between hosts */
#define MAX_FINDINGS       8
#define ROUND_SLACK_MS     20 /* jitter of the ranks' report phases (fx_links_eval_due) */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void fx_link_span_end(struct fx_link_dir *d, int64_t now_ns)
{
    int64_t dt = now_ns - d->busy_since;

    if (dt < 0) {
        dt = 0;
    }
    d->blocked_ns += (uint64_t)dt;
    /* a stretch on the coarse clock is timed in whole ticks: no rate is made of it */
    if (!d->coarse && (d->span_bytes >= RATE_MIN_BYTES || dt >= RATE_MIN_NS)) {
        d->win_bytes += d->span_bytes;
        d->win_ns += (uint64_t)dt;
    }
    d->span_bytes = 0;
    d->busy_since = now_ns;
}

/* The messages posted in a stretch timed with the coarse clock add up to enough for a rate: what
 * went before counts as its own stretch (blocked time, no rate), the rest is timed with the fine
 * clock. */
void fx_link_span_refine(struct fx_link_dir *d, struct fx_link_clock *clk)
{
    fx_link_span_end(d, fx_link_clock_get(clk, true));
    d->coarse     = false;
    d->busy_since = fx_link_clock_get(clk, false);
}

void fx_links_stop(struct fx_links *L)
{
    struct fx_link_clock now = {0, 0};

    for (int p = 0; L->dir != NULL && p < L->nranks; p++) {
        for (int k = 0; k < 2; k++) {
            struct fx_link_dir *d = &L->dir[p][k];

            if (d->posted > 0) {
                fx_link_span_end(d, fx_link_clock_get(&now, d->coarse));
                d->posted = 0;
            }
        }
    }
}

fx_status fx_links_init(struct fx_links *L, bool on, int rank, int nranks, const int *host_of,
                        int nhosts)
{
    memset(L, 0, sizeof(*L));
    L->on     = on;
    L->rank   = rank;
    L->nranks = nranks;
    L->dir    = calloc((size_t)nranks, sizeof(*L->dir));
    L->addr   = calloc((size_t)nranks, sizeof(*L->addr));
    if (L->dir == NULL || L->addr == NULL) {
        fx_links_fini(L);
        return FX_ERR_NO_MEMORY;
    }
    if (on && rank == 0) {
        L->host_of    = malloc((size_t)nranks * sizeof(*L->host_of));
        L->reps       = calloc((size_t)nranks * FX_LINK_REPORT_MAX, sizeof(*L->reps));
        L->rep_ms     = calloc((size_t)nranks, sizeof(*L->rep_ms));
        L->rep_sorted = calloc((size_t)nranks, sizeof(*L->rep_sorted));
        if (L->host_of == NULL || L->reps == NULL || L->rep_ms == NULL || L->rep_sorted == NULL) {
            fx_links_fini(L);
            return FX_ERR_NO_MEMORY;
        }
        memcpy(L->host_of, host_of, (size_t)nranks * sizeof(*L->host_of));
        L->nhosts = nhosts;
    }
    return FX_OK;
}

void fx_links_fini(struct fx_links *L)
{
    free(L->dir);
    free(L->addr);
    free(L->host_of);
    free(L->reps);
    free(L->rep_ms);
    free(L->rep_sorted);
    memset(L, 0, sizeof(*L));
}

static double median_of(const double *v, uint32_t n)
{
    double t[FX_LINK_SAMPLES];

    memcpy(t, v, n * sizeof(*t));
    return fx_slow_median(t, n);
}

/* Turns the window into a sample when it holds enough (the wire's counters where the transport
 * has them, else the executor's busy stretches). The rate is the median of the last
 * FX_LINK_SAMPLES samples: a window that a descheduled sender stretched, or that a shaper's
 * burst after an idle spell shortened, does not move it. A window too small for a sample
 * leaves what it held in *short_bytes and *short_ns (0 otherwise) and goes on into the next. */
static void close_window(struct fx_link_dir *d, struct fx_link_clock *now, int64_t now_ms,
                         uint64_t *short_bytes, uint64_t *short_ns)
{
    uint64_t bytes;
    uint64_t ns;

    *short_bytes = 0;
    *short_ns    = 0;
    if (d->posted > 0) {
        /* the stretch counts up to now in this window and goes on from now in the next */
        fx_link_span_end(d, fx_link_clock_get(now, d->coarse));
    }
    bytes = d->win_bytes;
    ns    = d->win_ns;
    if (d->wire) {
        bytes        = d->wire_bytes - d->wire_bytes0;
        ns           = d->wire_ns - d->wire_ns0;
        d->win_bytes = 0;
        d->win_ns    = 0;
    }
    if (bytes < WIN_MIN_BYTES || ns < WIN_MIN_NS) {
        *short_bytes = bytes;
        *short_ns    = ns;
        return;
    }
    d->hist[d->samples % FX_LINK_SAMPLES] = (double)bytes * 1e9 / (double)ns;
    d->samples++;
    d->rate      = median_of(d->hist, d->samples < FX_LINK_SAMPLES ? d->samples : FX_LINK_SAMPLES);
    d->rate_ms   = now_ms;
    d->win_bytes = 0;
    d->win_ns    = 0;
    d->wire_bytes0 = d->wire_bytes;
    d->wire_ns0    = d->wire_ns;
}

size_t fx_links_tick(struct fx_links *L, int64_t now_ms, uint8_t *report, bool *due)
{
    struct fx_link_clock now = {0, 0};
    uint32_t n               = 0;

    *due = false;
    if (!L->on || now_ms < L->next_tick_ms) {
        return 0;
    }
    *due            = true;
    L->next_tick_ms = now_ms + FX_LINK_TICK_MS;
    for (int p = 0; p < L->nranks; p++) {
        uint32_t had = L->dir[p][FX_LINK_RECV].samples;
        uint64_t short_bytes;
        uint64_t short_ns;

        close_window(&L->dir[p][FX_LINK_SEND], &now, now_ms, &short_bytes, &short_ns);
        close_window(&L->dir[p][FX_LINK_RECV], &now, now_ms, &short_bytes, &short_ns);
        const struct fx_link_dir *rd = &L->dir[p][FX_LINK_RECV];

        if (rd->samples != had) {
            fx_trace(FX_SUB_NET, "link from rank %d: sample %u, %.3f Gbit/s (rate %.3f)", p,
                     rd->samples, rd->hist[(rd->samples - 1) % FX_LINK_SAMPLES] * 8e-9,
                     rd->rate * 8e-9);
        } else if (short_bytes > 0 || short_ns > 0) {
            fx_trace(FX_SUB_NET,
                     "link from rank %d: no sample, window of %llu bytes over %.1f ms counted "
                     "(under %u bytes or %d ms)",
                     p, (unsigned long long)short_bytes, (double)short_ns * 1e-6, WIN_MIN_BYTES,
                     WIN_MIN_NS / 1000000);
        }
        if (rd->samples >= REPORT_MIN_SAMPLES && now_ms - rd->rate_ms <= RATE_KEEP_MS &&
            n < FX_LINK_REPORT_MAX) {
            uint8_t *e = report + 4 + n * (16 + FX_LINK_ADDR_LEN);
            uint64_t r = (uint64_t)L->dir[p][FX_LINK_RECV].rate;

            put32(e, (uint32_t)p);
            put32(e + 4, rd->samples < FX_LINK_SAMPLES ? rd->samples : FX_LINK_SAMPLES);
            put32(e + 8, (uint32_t)r);
            put32(e + 12, (uint32_t)(r >> 32));
            memcpy(e + 16, L->addr[p], FX_LINK_ADDR_LEN);
            e[16 + FX_LINK_ADDR_LEN - 1] = '\0';
            n++;
        }
    }
    if (n == 0) {
        return 0;
    }
    fx_trace(FX_SUB_NET, "link rates: %u links reported", n);
    put32(report, n);
    return 4 + n * (16 + FX_LINK_ADDR_LEN);
}

void fx_links_on_report(struct fx_links *L, int src, const uint8_t *report, size_t len,
                        int64_t now_ms)
{
    uint32_t n;
    struct fx_link_rep *reps;

    if (L->reps == NULL || src < 0 || src >= L->nranks || len < 4) {
        return;
    }
    n = get32(report);
    if (n > FX_LINK_REPORT_MAX || len != 4 + n * (16 + FX_LINK_ADDR_LEN)) {
        fx_trace(FX_SUB_BOOT, "ignored a malformed link report from rank %d", src);
        return;
    }
    reps = &L->reps[(size_t)src * FX_LINK_REPORT_MAX];
    memset(reps, 0, FX_LINK_REPORT_MAX * sizeof(*reps));
    for (uint32_t k = 0; k < n; k++) {
        const uint8_t *e = report + 4 + k * (16 + FX_LINK_ADDR_LEN);
        int32_t peer     = (int32_t)get32(e);

        if (peer < 0 || peer >= L->nranks || peer == src) {
            continue;
        }
        reps[k].peer    = peer;
        reps[k].samples = get32(e + 4);
        reps[k].rate    = (double)((uint64_t)get32(e + 8) | (uint64_t)get32(e + 12) << 32);
        reps[k].ms      = now_ms;
        memcpy(reps[k].addr, e + 16, FX_LINK_ADDR_LEN);
        reps[k].addr[FX_LINK_ADDR_LEN - 1] = '\0';
    }
    L->rep_ms[src] = now_ms;
}

static int cmp_ms(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

bool fx_links_eval_due(struct fx_links *L, int64_t now_ms, bool tick)
{
    int64_t first  = 0;
    int64_t latest = 0;
    int64_t wrap;
    bool fresh = false;
    int m      = 0;

    if (L->rep_ms == NULL) {
        return false;
    }
    for (int r = 0; r < L->nranks; r++) {
        fresh |= L->rep_ms[r] > L->eval_ms;
    }
    if (!fresh) {
        return false;
    }
    if (tick && now_ms - L->eval_ms >= FX_LINK_TICK_MS + FX_LINK_TICK_MS / 2) {
        return true;
    }
    if (now_ms - L->eval_ms < FX_LINK_TICK_MS / 2) {
        return false;
    }
    /* The other ranks' last reports (those of the last two ticks): the round is in when the
     * spell from the latest of them to the next one expected (the earliest plus a tick) is the
     * longest between reports, i.e. the report that closes the round on the ranks' phases
     * has just come. */
    for (int r = 1; r < L->nranks; r++) {
        int64_t t = L->rep_ms[r];

        if (t != 0 && now_ms - t < 2 * FX_LINK_TICK_MS) {
            L->rep_sorted[m++] = t;
            first              = first == 0 || t < first ? t : first;
            latest             = t > latest ? t : latest;
        }
    }
    wrap = first + FX_LINK_TICK_MS - latest + ROUND_SLACK_MS;
    if (m == 0 || latest <= L->eval_ms || wrap < 0) {
        return false;
    }
    if (m > 1 && wrap * (m - 1) < latest - first) {
        return false; /* shorter than the mean spell between reports, so than the longest */
    }
    qsort(L->rep_sorted, (size_t)m, sizeof(*L->rep_sorted), cmp_ms);
    for (int i = 1; i < m; i++) {
        if (L->rep_sorted[i] - L->rep_sorted[i - 1] > wrap) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------ rank 0's verdicts */

/*
 * A finding is logged once it held in `need` evaluations in a row (HOST_STREAK for a host, whose
 * links two receivers measure, PATH_STREAK for a path, often one link; 1 for a host whose every
 * link is far below the rest), one second apart, so that a window's noise names nothing, then at
 * most every LOG_EVERY_MS while it holds. The table tracks the findings of the last evaluation;
 * `seen` marks those of the current one.
 */
static bool log_due(struct fx_links *L, int kind, int a, int b, uint32_t need, int64_t now_ms,
                    uint64_t round)
{
    struct fx_link_logged *slot = NULL;
    size_t n                    = sizeof(L->logged) / sizeof(L->logged[0]);

    for (size_t i = 0; i < n; i++) {
        struct fx_link_logged *g = &L->logged[i];

        if (g->round != 0 && g->kind == kind && g->a == a && g->b == b) {
            slot = g;
            break;
        }
        if (slot == NULL && (g->round == 0 || g->round + 1 < round)) {
            slot = g; /* free, or not found in the last evaluation */
        }
    }
    if (slot == NULL) {
        return false; /* more simultaneous findings than tracked: the first ones are logged */
    }
    if (slot->round == 0 || slot->kind != kind || slot->a != a || slot->b != b ||
        slot->round + 1 < round) {
        *slot = (struct fx_link_logged){.kind = kind, .a = a, .b = b};
    }
    slot->streak = slot->round + 1 == round ? slot->streak + 1 : 1;
    slot->round  = round;
    if (slot->streak < need || (slot->ms != 0 && now_ms - slot->ms < LOG_EVERY_MS)) {
        return false;
    }
    slot->ms = now_ms;
    return true;
}

/* "ranks 2,3" of host h, and an address of it seen in a report ("" none). */
static void describe_host(const struct fx_links *L, int h, int64_t since, char *ranks, size_t rlen,
                          const char **addr)
{
    size_t off = 0;
    int shown  = 0;

    ranks[0] = '\0';
    *addr    = "";
    for (int r = 0; r < L->nranks; r++) {
        if (L->host_of[r] != h) {
            continue;
        }
        if (shown++ < 8 && off < rlen) {
            off += (size_t)snprintf(ranks + off, rlen - off, "%s%d", shown > 1 ? "," : "", r);
        } else if (shown == 9 && off < rlen) {
            off += (size_t)snprintf(ranks + off, rlen - off, ",...");
        }
    }
    for (size_t i = 0; i < (size_t)L->nranks * FX_LINK_REPORT_MAX && (*addr)[0] == '\0'; i++) {
        const struct fx_link_rep *rep = &L->reps[i];

        if (rep->ms >= since && rep->ms != 0 && L->host_of[rep->peer] == h) {
            *addr = rep->addr;
        }
    }
}

static const char *host_name(const struct fx_links *L, const struct fx_boot *boot, int h)
{
    for (int r = 0; r < L->nranks; r++) {
        if (L->host_of[r] == h) {
            return boot->table[r].host;
        }
    }
    return "?";
}

static void log_finding(struct fx_links *L, const struct fx_boot *boot,
                        const struct fx_slow_finding *f, const struct fx_slow_result *res,
                        int64_t since, bool strong)
{
    char ranks_a[64];
    char ranks_b[64];
    const char *addr_a;
    const char *addr_b;
    double gb = 8e-9;

    if (f->kind == FX_SLOW_HOST) {
        describe_host(L, f->host, since, ranks_a, sizeof(ranks_a), &addr_a);
        fx_info(FX_SUB_NET,
                "slow link: host %s (rank%s %s%s%s): %d of its %d measured links are slow, "
                "%.2f Gbit/s against %.2f expected; median of the communicator's %d links "
                "%.2f Gbit/s%s",
                host_name(L, boot, f->host), strchr(ranks_a, ',') ? "s" : "", ranks_a,
                addr_a[0] ? ", " : "", addr_a, f->nslow, f->nlinks, f->measured * gb,
                res->expected * gb, res->nlinks, res->median * gb,
                strong ? " (every link far below the rest: named on one check)" : "");
        return;
    }
    describe_host(L, f->a, since, ranks_a, sizeof(ranks_a), &addr_a);
    describe_host(L, f->b, since, ranks_b, sizeof(ranks_b), &addr_b);
    fx_info(FX_SUB_NET,
            "slow link: path %s (rank%s %s%s%s) %s %s (rank%s %s%s%s): %.2f Gbit/s against "
            "%.2f expected; both hosts are fine on their other links; median of the "
            "communicator's %d links %.2f Gbit/s",
            host_name(L, boot, f->a), strchr(ranks_a, ',') ? "s" : "", ranks_a,
            addr_a[0] ? ", " : "", addr_a,
            f->dirs == 3   ? "<->"
            : f->dirs == 1 ? "->"
                           : "<-",
            host_name(L, boot, f->b), strchr(ranks_b, ',') ? "s" : "", ranks_b,
            addr_b[0] ? ", " : "", addr_b, f->measured * gb, res->expected * gb, res->nlinks,
            res->median * gb);
}

/* The links between distinct hosts reported since `since` whose rates are the median of
 * min_samples samples or more. */
static size_t gather(const struct fx_links *L, int64_t since, uint32_t min_samples,
                     struct fx_slow_link *links)
{
    size_t cap = (size_t)L->nranks * FX_LINK_REPORT_MAX;
    size_t n   = 0;

    for (size_t i = 0; i < cap; i++) {
        const struct fx_link_rep *rep = &L->reps[i];
        int dst                       = (int)(i / FX_LINK_REPORT_MAX);

        if (rep->ms == 0 || rep->ms < since || rep->samples < min_samples ||
            L->host_of[rep->peer] == L->host_of[dst]) {
            continue;
        }
        links[n++] = (struct fx_slow_link){
            .src = L->host_of[rep->peer], .dst = L->host_of[dst], .rate = rep->rate};
    }
    return n;
}

/* The hosts whose every link (two or more) is far below the rest, over the links of two samples
 * or more: the findings of strong_res that may be logged on one check. Returns their count. */
static int strong_hosts(const struct fx_links *L, int64_t since, struct fx_slow_link *links,
                        struct fx_slow_finding *out, struct fx_slow_result *strong_res)
{
    struct fx_slow_params params = {STRONG_MIN_DROP, STRONG_MAD_K};
    size_t n                     = gather(L, since, REPORT_MIN_SAMPLES, links);
    int nf = fx_slow_analyze(links, n, L->nhosts, &params, out, MAX_FINDINGS, strong_res);
    int m  = 0;

    if (strong_res->nlinks < STRONG_MIN_LINKS) {
        return 0;
    }
    for (int k = 0; k < nf && k < MAX_FINDINGS; k++) {
        if (out[k].kind == FX_SLOW_HOST && out[k].nlinks >= 2 && out[k].nslow == out[k].nlinks) {
            out[m++] = out[k];
        }
    }
    return m;
}

int fx_links_evaluate(struct fx_links *L, const struct fx_boot *boot, int64_t now_ms)
{
    size_t cap    = (size_t)L->nranks * FX_LINK_REPORT_MAX;
    int64_t since = now_ms - REPORT_AGE_MS;
    struct fx_slow_finding found[MAX_FINDINGS];
    struct fx_slow_finding strong[MAX_FINDINGS];
    struct fx_slow_result res;
    struct fx_slow_result strong_res;
    struct fx_slow_params params = {MONITOR_MIN_DROP, 4.0};
    struct fx_slow_link *links;
    size_t n;
    int nf;
    int ns;
    int nextra = 0; /* hosts far below that the check above did not find */

    if (L->reps == NULL) {
        return 0;
    }
    links = malloc(cap * sizeof(*links));
    if (links == NULL) {
        return 0; /* the monitor is best effort; the next tick tries again */
    }
    n  = gather(L, since, JUDGE_MIN_SAMPLES, links);
    nf = fx_slow_analyze(links, n, L->nhosts, &params, found, MAX_FINDINGS, &res);
    ns = strong_hosts(L, since, links, strong, &strong_res);
    L->rounds++;
    L->eval_ms = now_ms;
    fx_trace(FX_SUB_NET,
             "slow-link check %llu: %zu links between hosts, %d findings; %d links of two "
             "samples or more, %d hosts far below",
             (unsigned long long)L->rounds, n, nf, strong_res.nlinks, ns);
    free(links);
    for (int k = 0; k < nf && k < MAX_FINDINGS; k++) {
        const struct fx_slow_finding *f = &found[k];
        bool is_strong                  = false;

        for (int j = 0; j < ns && f->kind == FX_SLOW_HOST; j++) {
            is_strong |= strong[j].host == f->host;
        }
        if (log_due(L, f->kind, f->kind == FX_SLOW_HOST ? f->host : f->a,
                    f->kind == FX_SLOW_HOST ? -1 : f->b,
                    is_strong                 ? 1
                    : f->kind == FX_SLOW_HOST ? HOST_STREAK
                                              : PATH_STREAK,
                    now_ms, L->rounds)) {
            log_finding(L, boot, f, &res, since, is_strong);
        }
    }
    for (int j = 0; j < ns; j++) { /* far below on links too young for the check above */
        bool found_above = false;

        for (int k = 0; k < nf && k < MAX_FINDINGS; k++) {
            found_above |= found[k].kind == FX_SLOW_HOST && found[k].host == strong[j].host;
        }
        if (found_above) {
            continue;
        }
        nextra++;
        if (log_due(L, FX_SLOW_HOST, strong[j].host, -1, 1, now_ms, L->rounds)) {
            log_finding(L, boot, &strong[j], &strong_res, since, true);
        }
    }
    return (nf < 0 ? 0 : nf) + nextra;
}

/* The part of an open busy stretch up to now. */
static uint64_t open_span(const struct fx_link_dir *d, struct fx_link_clock *now)
{
    int64_t t = d->posted > 0 ? fx_link_clock_get(now, d->coarse) : 0;

    return t > d->busy_since && d->posted > 0 ? (uint64_t)(t - d->busy_since) : 0;
}

void fx_links_snapshot(const struct fx_links *L, int peer, struct fx_link_clock *now,
                       fx_link_stats *out)
{
    const struct fx_link_dir *s = &L->dir[peer][FX_LINK_SEND];
    const struct fx_link_dir *r = &L->dir[peer][FX_LINK_RECV];

    out->peer              = peer;
    out->bytes_sent        = s->bytes;
    out->bytes_received    = r->bytes;
    out->messages_sent     = s->msgs;
    out->messages_received = r->msgs;
    out->send_blocked_ns   = s->blocked_ns + open_span(s, now);
    out->recv_blocked_ns   = r->blocked_ns + open_span(r, now);
    out->wire_busy_ns      = s->wire ? s->wire_ns : 0;
    out->send_gbps         = s->rate * 8e-9;
    out->recv_gbps         = r->rate * 8e-9;
    snprintf(out->address, sizeof(out->address), "%s", L->addr[peer]);
}
